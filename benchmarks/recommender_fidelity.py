"""Policy-value fidelity: the same policies in the reference world (truth) and in a twin trained on the world's
logged data, which continues the same customers (``--history``), side by side; and the off-policy estimators
(DM, IPW, SNIPW, DR) computed from the world's logged decisions with their propensities, against the same truth.

    twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/rec/world365
    twinsim train runs/rec/world365 -o runs/rec/model --epochs 4
    python benchmarks/recommender_fidelity.py --world runs/rec/world365 --model runs/rec/model --out runs/rec \\
        [--days 28] [--share 0.25] [--ope-days 28]
    python benchmarks/recommender_fidelity.py --world runs/rec/world365 --out runs/rec --ope-only

Truth: the world of the same seed and customers for ``days`` more, each policy deciding at its offer slots
(``share`` of logins: the logging policy's own rate) from the day after the logged year (runs already under
``OUT/truth`` are reused). Twin: ``twinsim recommend`` with the same policies and share, continuing every customer
of the log. Off-policy: ``simulator/recommend/ope.py`` on the logging policy's decisions of the last ``--ope-days``
days of the logged year (default ``--days``: a learning policy learns over as many days as in the truth runs;
0: the whole logged year). Writes ``OUT/fidelity/report.json`` and ``report.html`` (truth against twin, relative
errors, Kendall's tau, the ``ope`` section) and prints the headline figures as one JSON line; ``--ope-only``
skips the twin (no ``--model``) and writes ``OUT/fidelity/ope.json``.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.artifacts import write_json
from twinsim.simulator.recommend.metrics import measure_run
from twinsim.simulator.recommend.ope import ESTIMATORS, METRICS, against_truth, evaluate
from twinsim.simulator.recommend.report import jsonable, write_report
from twinsim.simulator.recommend.run import RecommendConfig, recommend, run_dirs
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws
from twinsim.simulator.whatif.runs import Run, read_run

POLICIES = ["logged", "random", "popular", "segment-greedy", "epsilon-greedy:epsilon=0.1,by=segment", "thompson",
            "fixed:product=mortgage"]
VALUES = {p: 1.0 for p in laws.PRODUCTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--model", type=Path, help="the twin's model (not needed with --ope-only)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--share", type=float, default=laws.OFFER_SHOW_P)
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    ap.add_argument("--ope-days", type=int, default=None,
                    help="the estimators read the last N days of the logged year (default --days; 0: all of it)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the estimators' intervals")
    ap.add_argument("--ope-only", action="store_true", help="truth and off-policy estimates only, no twin")
    args = ap.parse_args()
    if args.model is None and not args.ope_only:
        ap.error("--model is required (or --ope-only: the truth runs and the off-policy estimates only)")
    logged = json.loads((args.world / "world.json").read_text())
    start = np.datetime64(logged["config"]["start"]) + np.timedelta64(logged["config"]["days"], "D")
    truth = truth_runs(args, logged["config"], str(start))
    ope_days = args.days if args.ope_days is None else args.ope_days
    ope = evaluate(args.world, args.policies, bootstrap=args.bootstrap,
                   start=None if ope_days <= 0 else pd.Timestamp(str(start), tz="UTC") - pd.Timedelta(days=ope_days))
    if args.ope_only:
        values = {name: {m: measure_run(run, VALUES).metrics[m]["value"] for m in METRICS} for name, run in
                  truth.items()}
        section = jsonable(against_truth(ope, values))
        write_json(_mkdir(args.out / "fidelity") / "ope.json", section)
        print(json.dumps({"ope": ope_summary(section)}))
        return
    twin_out = args.out / "twin"
    recommend(args.model, args.policies, RecommendConfig(history=str(args.world), days=args.days, share=args.share),
              twin_out, overwrite=True, workers=2)
    twin = {name: read_run(d) for name, d in run_dirs(twin_out, args.policies).items()}
    report = write_report(twin, args.out / "fidelity", values=VALUES,
                          title="recommender fidelity: twin against the reference world",
                          about={"environment": f"twin {args.model} against the reference world",
                                 "customers": logged["config"]["users"], "days": args.days, "start": str(start),
                                 "share": args.share, "common_random_numbers": True}, truth=truth, ope=ope)
    errors = report["truth"]["errors"]
    summary = {"kendall_tau": {k: v["tau"] for k, v in report["truth"]["kendall_tau"].items()}}
    for key in ("ctr", "purchases_per_show"):
        rel = [abs(errors[n][key]["relative_error"]) for n in errors if errors[n][key]["relative_error"] is not None]
        summary[f"median_relative_error_{key}"] = float(np.median(rel)) if rel else None
        summary[key] = {n: (errors[n][key]["truth"], errors[n][key]["twin"]) for n in errors}
    summary["ope"] = ope_summary(report["ope"])
    summary["long_horizon"] = long_horizon(report)
    print(json.dumps(summary))


def truth_runs(args, config: dict, start: str) -> dict[str, Run]:
    """Each policy in the world of the same seed and customers for ``--days`` more, from the day after the log
    (made where ``OUT/truth`` has no finished run of it), read over those days."""
    world = WorldConfig(users=config["users"], days=config["days"] + args.days, seed=config["seed"],
                        start=date.fromisoformat(config["start"]))
    truth = {}
    for spec, (name, run_dir) in zip(args.policies, run_dirs(args.out / "truth", args.policies).items(),
                                     strict=True):
        if not (run_dir / "world.json").exists():
            generate_reference_world(world, run_dir, overwrite=True, policy=spec, policy_start=config["days"],
                                     share=args.share)
        truth[name] = read_run(run_dir, start=start)
    return truth


def long_horizon(report: dict, min_shows: int = 50) -> dict:
    """What the off-policy estimators cannot give, twin against truth: churn within 30 days of the start (needs
    ``--days`` >= 30) and the fatigue curve (CTR by n-th exposure of the same product; exposures with at least
    ``min_shows`` shows on both sides), per policy, with the median |relative error| of churn and the median
    absolute CTR difference along the curves."""
    truth, twin, errors = report["truth"]["policies"], report["policies"], report["truth"]["errors"]
    out, churn_rel, curve_diff = {"policies": {}}, [], []
    for name in twin:
        row = errors[name].get("churn_30", {})
        curves = [(a["n"], a["ctr"], b["ctr"]) for a, b in zip(truth[name]["fatigue"], twin[name]["fatigue"],
                                                                strict=True)
                  if a["shows"] >= min_shows and b["shows"] >= min_shows]
        diffs = [abs(w - t) for _, t, w in curves]
        out["policies"][name] = {"churn_30": {"truth": row.get("truth"), "twin": row.get("twin"),
                                              "relative_error": row.get("relative_error")},
                                 "fatigue": [{"n": n, "truth": t, "twin": w} for n, t, w in curves],
                                 "fatigue_mean_abs_ctr_difference": float(np.mean(diffs)) if diffs else None}
        if row.get("relative_error") is not None:
            churn_rel.append(abs(row["relative_error"]))
        curve_diff += diffs
    out["median_relative_error_churn_30"] = float(np.median(churn_rel)) if churn_rel else None
    out["median_abs_ctr_difference_fatigue"] = float(np.median(curve_diff)) if curve_diff else None
    return out


def ope_summary(section: dict) -> dict:
    """Per metric: each estimator's and the twin's median |relative error|, the best, whether the twin's is at
    most half the best's; per policy the truth, the estimates and the twin."""
    out = {}
    for metric in METRICS:
        s = section["summary"][metric]
        out[metric] = {**{k: s[k] for k in ("median_abs_relative_error", "best", "best_median", "twin_median",
                                             "twin_over_best", "target_met")},
                       "policies": {n: {"truth": r[metric]["truth"], **{e: r[metric][e]["value"] for e in ESTIMATORS},
                                        "twin": r[metric]["twin"]} for n, r in section["policies"].items()}}
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
