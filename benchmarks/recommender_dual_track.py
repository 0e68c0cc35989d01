"""Dual track: the same recommender trained on the real logged data and on twin-generated data, both deployed
in the reference world; their CTRs there should be within 2 % (relative) of each other (issue 23).

    python benchmarks/recommender_dual_track.py --world runs/rec/world365 --model runs/rec/model8 \\
        --out runs/rec/dual [--days 28] [--share 0.25] [--by segment]

The recommender is ``trained-greedy`` (``scenarios/policies/builtin.py``): per segment, the product with the
highest click rate among the offers of its training log, frozen. Real track: trained on ``--world`` (the
logged year). Twin track: trained on ``twinsim generate`` of as many new customers for as many days from the
model alone (``OUT/synthetic``; no real customer's events). Both then choose the offers at the world's logins
for ``--days`` after the logged year (the same customers, seed and decision points). Prints one JSON line:
each track's chosen product per segment and CTR (with a 95 % interval clustered by customer), their relative
difference, and, for scale, the world's own logging policy and random over the same days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

from twinsim.scenarios.policies import load_policy
from twinsim.scenarios.policy import Catalogue
from twinsim.simulator.recommend.metrics import measure_run
from twinsim.simulator.recommend.run import run_dirs
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws
from twinsim.simulator.whatif.runs import read_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--share", type=float, default=laws.OFFER_SHOW_P)
    ap.add_argument("--by", default="segment")
    ap.add_argument("--seed", type=int, default=1, help="the synthetic log's seed")
    args = ap.parse_args()
    logged = json.loads((args.world / "world.json").read_text())["config"]
    synthetic = args.out / "synthetic"
    if not (synthetic / "events.parquet").exists() and not (synthetic / "events").exists():
        subprocess.run([sys.executable, "-m", "twinsim.cli", "generate", str(args.model), "-n", str(logged["users"]),
                        "--start", logged["start"], "--days", str(logged["days"]), "--seed", str(args.seed),
                        "-o", str(synthetic), "--overwrite"], check=True)
    tracks = {"real": f"trained-greedy:log={args.world},by={args.by}",
              "twin": f"trained-greedy:log={synthetic},by={args.by}"}
    specs = [*tracks.values(), "logged", "random"]
    world = WorldConfig(users=logged["users"], days=logged["days"] + args.days, seed=logged["seed"],
                        start=date.fromisoformat(logged["start"]))
    start = str(np.datetime64(logged["start"]) + np.timedelta64(logged["days"], "D"))
    measured = {}
    for spec, (name, run_dir) in zip(specs, run_dirs(args.out / "world", specs).items(), strict=True):
        if not (run_dir / "world.json").exists():
            generate_reference_world(world, run_dir, overwrite=True, policy=spec, policy_start=logged["days"],
                                     share=args.share)
        metrics = measure_run(read_run(run_dir, start=start), {p: 1.0 for p in laws.PRODUCTS}).metrics
        measured[name] = {"spec": spec, "ctr": metrics["ctr"]["value"], "ctr_ci": metrics["ctr"]["ci"],
                          "shows": metrics["shows"], "purchases_per_show": metrics["purchases_per_show"]["value"]}
    real, twin = (measured[n] for n in list(measured)[:2])
    choices = {track: chosen(spec, args.by) for track, spec in tracks.items()}
    print(json.dumps({"days": args.days, "share": args.share, "customers": logged["users"], "choices": choices,
                      "tracks": measured, "ctr_relative_difference": twin["ctr"] / real["ctr"] - 1,
                      "target_met": abs(twin["ctr"] / real["ctr"] - 1) <= 0.02}))


def chosen(spec: str, by: str) -> dict[str, str]:
    """What a trained-greedy policy shows each group it was trained on."""
    policy = load_policy(spec)
    policy.bind(Catalogue(products=list(laws.PRODUCTS)), seed=0)
    rates = (policy.counts[:, 1] + 1.0) / (policy.counts[:, 0] + 2.0)
    return {group: str(policy.products[int(np.argmax(rates[g]))]) for group, g in policy.groups.items() if group}


if __name__ == "__main__":
    main()
