"""Reference-world generation throughput: events/s and peak memory for a large world.

    python benchmarks/reference_world_throughput.py --users 100000 --days 365

Writes into a temporary directory (deleted afterwards) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from twinsim.simulator.reference_world import WorldConfig, generate_reference_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = generate_reference_world(WorldConfig(users=args.users, days=args.days, seed=args.seed),
                                            Path(tmp) / "world")
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (Path(tmp) / "world").iterdir())
    events = manifest["counts"]["events"]
    print(json.dumps({
        "benchmark": "reference_world_throughput",
        "users": args.users, "days": args.days, "events": events,
        "seconds": round(seconds, 2), "events_per_second": round(events / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "output_mib": round(size / 2**20, 1),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
