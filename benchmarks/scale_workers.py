"""Parallel cohorts side by side: one worker, two worker processes, and Ray with two local workers.

    python benchmarks/scale_workers.py runs/model --users 100000 --days 30 [--history-days 30] [--cohort-size C]

Runs the same simulation three times (``--workers 1``, ``--workers 2``, ``--ray local`` with 2 CPUs) and prints
one JSON line: events/s of each (every event sampled, warm-up included, over the run's wall time: the worker
pool's start and model loads included; starting the Ray instance is not, and is reported as ``ray_init_s``),
the ratios to one worker, and whether the three outputs are bitwise the same. The default cohort size splits
the population into 8 cohorts, so that two workers have cohorts to share.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from twinsim.simulator.engine import SimulateConfig, simulate


def events(run: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run / "events").drop(columns="date")
    frame = frame.astype({c: "object" for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def timed(model: str, config: SimulateConfig, out: Path, **how) -> dict:
    started = time.perf_counter()
    manifest = simulate(model, config, out, **how)
    seconds = time.perf_counter() - started
    sampled = manifest["events"] + manifest["history_events"]
    return {"seconds": round(seconds, 2), "events_per_second": round(sampled / seconds), "events": sampled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--history-days", type=int, default=0)
    parser.add_argument("--cohort-size", type=int, default=None, help="default: a population of 8 cohorts")
    parser.add_argument("--start", default="2025-06-01")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cohort_size = args.cohort_size or max(64, -(-args.users // 8))
    config = SimulateConfig(users=args.users, start=args.start, days=args.days, history_days=args.history_days,
                            seed=args.seed, cohort_size=cohort_size)
    result = {"benchmark": "scale_workers", "users": args.users, "days": args.days,
              "history_days": args.history_days, "cohort_size": cohort_size,
              "cohorts": -(-args.users // cohort_size), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["workers_1"] = timed(args.model, config, tmp / "w1", workers=1)
        result["workers_2"] = timed(args.model, config, tmp / "w2", workers=2)
        try:
            import ray
        except ImportError:
            result["ray_2"] = "not installed: pip install 'twinsim[ray]'"
        else:
            started = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            result["ray_init_s"] = round(time.perf_counter() - started, 2)
            try:
                result["ray_2"] = timed(args.model, config, tmp / "ray", ray="local")
            finally:
                ray.shutdown()
        one = events(tmp / "w1")
        runs = [name for name in ("w2", "ray") if (tmp / name / "events").exists()]
        result["identical"] = all(one.equals(events(tmp / name)) for name in runs)
    base = result["workers_1"]["events_per_second"]
    result["ratio_workers_2"] = round(result["workers_2"]["events_per_second"] / base, 2)
    if isinstance(result.get("ray_2"), dict):
        result["ratio_ray_2"] = round(result["ray_2"]["events_per_second"] / base, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
