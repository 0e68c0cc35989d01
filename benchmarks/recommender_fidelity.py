"""Policy-value fidelity: the same policies in the reference world (truth) and in a twin trained on the world's
logged data, which continues the same customers (``--history``), side by side.

    twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/rec/world365
    twinsim train runs/rec/world365 -o runs/rec/model --epochs 4
    python benchmarks/recommender_fidelity.py --world runs/rec/world365 --model runs/rec/model --out runs/rec \\
        [--days 28] [--share 0.25]

Truth: the world of the same seed and customers for ``days`` more, each policy deciding at its offer slots
(``share`` of logins: the logging policy's own rate) from the day after the logged year. Twin: ``twinsim
recommend`` with the same policies and share, continuing every customer of the log. Writes
``OUT/fidelity/report.json`` and ``report.html`` (truth against twin, relative errors, Kendall's tau) and prints
the headline figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from twinsim.simulator.recommend.report import write_report
from twinsim.simulator.recommend.run import RecommendConfig, recommend, run_dirs
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws
from twinsim.simulator.whatif.runs import read_run

POLICIES = ["logged", "random", "popular", "segment-greedy", "epsilon-greedy:epsilon=0.1,by=segment", "thompson",
            "fixed:product=mortgage"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--share", type=float, default=laws.OFFER_SHOW_P)
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    args = ap.parse_args()
    logged = json.loads((args.world / "world.json").read_text())["config"]
    config = WorldConfig(users=logged["users"], days=logged["days"] + args.days, seed=logged["seed"],
                         start=__import__("datetime").date.fromisoformat(logged["start"]))
    start = np.datetime64(logged["start"]) + np.timedelta64(logged["days"], "D")
    truth = {}
    for spec, (name, run_dir) in zip(args.policies, run_dirs(args.out / "truth", args.policies).items(),
                                     strict=True):
        if not (run_dir / "world.json").exists():
            generate_reference_world(config, run_dir, overwrite=True, policy=spec, policy_start=logged["days"],
                                     share=args.share)
        truth[name] = read_run(run_dir, start=str(start))
    twin_out = args.out / "twin"
    recommend(args.model, args.policies, RecommendConfig(history=str(args.world), days=args.days, share=args.share),
              twin_out, overwrite=True, workers=2)
    twin = {name: read_run(d) for name, d in run_dirs(twin_out, args.policies).items()}
    report = write_report(twin, args.out / "fidelity", values={p: 1.0 for p in laws.PRODUCTS},
                          title="recommender fidelity: twin against the reference world",
                          about={"environment": f"twin {args.model} against the reference world",
                                 "customers": config.users, "days": args.days, "start": str(start),
                                 "share": args.share, "common_random_numbers": True}, truth=truth)
    errors = report["truth"]["errors"]
    summary = {"kendall_tau": {k: v["tau"] for k, v in report["truth"]["kendall_tau"].items()}}
    for key in ("ctr", "purchases_per_show"):
        rel = [abs(errors[n][key]["relative_error"]) for n in errors if errors[n][key]["relative_error"] is not None]
        summary[f"median_relative_error_{key}"] = float(np.median(rel)) if rel else None
        summary[key] = {n: (errors[n][key]["truth"], errors[n][key]["twin"]) for n in errors}
    print(json.dumps(summary))

if __name__ == "__main__":
    main()
