"""Simulation engine throughput and memory, side by side with a naive engine, in one invocation.

    python benchmarks/simulation_throughput.py runs/model --users 10000 100000 1000000 --days 30 \\
        [--history-days 30] [--naive-users 300] [--workers 2] [--profile]

* the engine: ``twinsim simulate`` (cohorts, daily population stepper), one fresh process per population
  size so that each peak RSS is its own; events/s counts every event sampled (warm-up history included);
* the naive engine: one SimPy process per user, each stepping its user alone through the same sampler
  (``models.rollout.Rollout``), on ``--naive-users`` users, and the engine on those same users, for the ratio.

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simpy
import torch

from twinsim.models.model_dir import load_model, read_table
from twinsim.models.rollout import Rollout
from twinsim.models.rowwise import MIN_ROWS
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.population import as_utc, new_population


def engine(model: str, users: int, days: int, history_days: int, start: str, profile: bool, workers: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = SimulateConfig(users=users, start=start, days=days, history_days=history_days, seed=0)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        manifest = simulate(model, config, Path(tmp) / "run", workers=workers)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in (Path(tmp) / "run").rglob("*") if p.is_file())
    sampled = manifest["events"] + manifest["history_events"]
    out = {"benchmark": "simulation_throughput", "engine": "cohorts", "users": users, "days": days,
           "history_days": history_days, "events": manifest["events"], "history_events": manifest["history_events"],
           "seconds": round(seconds, 1), "events_per_second": round(sampled / seconds),
           "workers": workers, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
           "output_mib": round(disk / 2**20, 1), "cohort_size": config.cohort_size,
           "torch_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        out["profile"] = text.getvalue()
    return out


def naive(model_dir: str, users: int, days: int, start: str) -> dict:
    """One SimPy process per user; each event is one sampler step of that user alone."""
    model, schema, _ = load_model(model_dir)
    population = new_population(Path(model_dir), schema, users, 0)
    start_s = as_utc(start).timestamp()
    end_s = start_s + days * 86400.0
    roll = Rollout(model, schema, read_table(model_dir, "context"), 0, users, start_s, idle=MIN_ROWS)
    with torch.no_grad():
        static = model.static(torch.from_numpy(population.static_cat), torch.from_numpy(population.static_num))
    roll.start(np.arange(users), np.arange(users), static, start_s)
    env = simpy.Environment(initial_time=start_s)
    count = [0]

    def customer(row: int):
        rows = np.array([row])
        roll.propose(rows)
        while True:
            t = roll.pending["t_next"][row]
            if t >= end_s:
                return
            yield env.timeout(t - env.now)
            events = roll.commit(rows)
            count[0] += 1
            if roll.is_terminal(events.type)[0]:
                return
            roll.propose(rows)

    for row in range(users):
        env.process(customer(row))
    started = time.perf_counter()
    env.run()
    seconds = time.perf_counter() - started
    return {"benchmark": "simulation_throughput", "engine": "naive (one SimPy process per user)", "users": users,
            "days": days, "events": count[0], "seconds": round(seconds, 1),
            "events_per_second": round(count[0] / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--start", default="2025-06-01", help="inside the default model's training window")
    parser.add_argument("--naive-users", type=int, default=300, help="users for the naive comparison (0: skip)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the engine runs")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: one engine run
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(engine(args.model_dir, args.one, args.days, args.history_days, args.start, args.profile,
                                args.workers)))
        return
    if args.naive_users:
        slow = naive(args.model_dir, args.naive_users, args.days, args.start)
        fast = engine(args.model_dir, args.naive_users, args.days, 0, args.start, False)
        print(json.dumps(slow))
        print(json.dumps({**fast, "speedup_vs_naive": round(fast["events_per_second"] / slow["events_per_second"], 1)}))
    for users in args.users:
        child = subprocess.run([sys.executable, __file__, args.model_dir, "--one", str(users), "--days", str(args.days),
                                "--history-days", str(args.history_days), "--start", args.start,
                                "--workers", str(args.workers), *(["--profile"] if args.profile else [])],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        profile = result.pop("profile", None)
        print(json.dumps(result), flush=True)
        if profile:
            print(profile)


if __name__ == "__main__":
    main()
