"""Generation throughput of a trained model: events/s for N users x D days, with a profile.

    python benchmarks/generation_throughput.py runs/model --users 100000 --days 90 [--workers 2] [--profile]

Prints one JSON line; with --profile also the 15 functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import time

import pandas as pd
import torch

from twinsim.models.generate import GenerateConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--start", default="2025-01-01")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (contiguous chunks of users)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    config = GenerateConfig(users=args.users, start=pd.Timestamp(args.start), days=args.days, seed=args.seed,
                            batch_size=args.batch_size)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    _, events, summary = generate(args.model_dir, config, workers=args.workers)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    print(json.dumps({
        "benchmark": "generation_throughput", "model": args.model_dir, "users": args.users, "days": args.days,
        "batch_size": args.batch_size, "workers": args.workers, "events": len(events),
        "seconds_total": round(seconds, 1),
        "seconds_sampling": summary["seconds"], "events_per_second": summary["events_per_second"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
    }))
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())


if __name__ == "__main__":
    main()
