"""``twinsim live`` under load: emission lateness and sustained events/s into a webhook and PostgreSQL, and
the backfill of a year of history into PostgreSQL.

    python benchmarks/live_throughput.py MODEL [--users 1000] [--speed 3600] [--for 120] \\
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--backfill-users 50] [--backfill-days 365]

1. Backfill: ``--backfill-users`` customers' ``--backfill-days`` of history sampled and written to a fresh
   PostgreSQL table (``write_bulk``, idempotent on the event id): seconds and events/s, sampling and writing
   apart.
2. Live: ``--users`` customers (30 days of history, not timed) emitted for ``--for`` wall seconds at
   ``--speed`` into a webhook (a local aiohttp receiver in another process that answers 200 and counts) and
   PostgreSQL at once: emission lateness against the schedule (p50/p99/max), events/s sustained, and each
   sink's acknowledged count and lag p99.
Prints one JSON line; the tables it made are dropped.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

RECEIVER = r"""
import sys
from aiohttp import web
count = 0
async def events(request):
    global count
    count += len(await request.json())
    return web.json_response({"ok": True})
async def stats(request):
    return web.json_response({"received": count})
app = web.Application(client_max_size=64 * 2**20)
app.router.add_post("/events", events)
app.router.add_get("/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver() -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/stats", timeout=1).read()
            return process, base
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("the webhook receiver did not start")


def drop(postgres: str, table: str) -> None:
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def count(postgres: str, table: str) -> int:
    import psycopg

    with psycopg.connect(postgres) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def backfill(args) -> dict:
    """Sampling alone (no sink), then sampling and writing (the same seed: the same events) into a new table."""
    from twinsim.simulator.live.engine import LiveConfig, LiveRun
    from twinsim.simulator.live.sinks import open_sink

    config = LiveConfig(users=args.backfill_users, history_days=args.backfill_days, seed=args.seed,
                        start="2026-12-01")
    began = time.perf_counter()
    LiveRun(args.model, config, []).backfill()
    sampled = time.perf_counter() - began
    table = f"twinsim_bench_{uuid.uuid4().hex[:8]}"
    sink = open_sink(f"{args.postgres}?table={table}")
    try:
        began = time.perf_counter()
        events = LiveRun(args.model, config, [sink]).backfill()
        total = time.perf_counter() - began
        rows = count(args.postgres, table)
    finally:
        sink.close()
        drop(args.postgres, table)
    return {"customers": args.backfill_users, "days": args.backfill_days, "events": events, "rows": rows,
            "sample_s": round(sampled, 2), "sample_and_write_s": round(total, 2),
            "write_events_per_s": round(events / (total - sampled)) if total > 1.5 * sampled else None}


def live(args) -> dict:
    from twinsim.simulator.live.engine import LiveConfig, LiveRun
    from twinsim.simulator.live.sinks import open_sink

    process, base = receiver()
    table = f"twinsim_bench_{uuid.uuid4().hex[:8]}"
    sinks = [open_sink(f"{base}/events?batch=500"), open_sink(f"{args.postgres}?table={table}")]
    try:
        run = LiveRun(args.model, LiveConfig(users=args.users, history_days=30, speed=args.speed, seed=args.seed),
                      [])
        run.backfill()  # the history, not timed and not sent
        run.sinks = sinks
        began = time.perf_counter()
        summary = run.run(for_s=args.for_s)
        wall = time.perf_counter() - began
        import urllib.request

        received = json.loads(urllib.request.urlopen(base + "/stats", timeout=10).read())["received"]
        rows = count(args.postgres, table)
    finally:
        for sink in sinks:
            sink.close()
        process.terminate()
        drop(args.postgres, table)
    return {"customers": args.users, "speed": args.speed, "wall_s": round(wall, 1), "events": summary["emitted"],
            "events_per_s": round(summary["emitted"] / wall, 1), "simulated_until": summary["now"],
            "lateness_p50_ms": _ms(summary["lateness_p50_s"]), "lateness_p99_ms": _ms(summary["lateness_p99_s"]),
            "lateness_max_ms": _ms(summary["lateness_max_s"]), "webhook_received": received, "postgres_rows": rows,
            "sinks": {s["sink"]: {"acknowledged": s["acknowledged"], "failed": s["failed"],
                                  "lag_p99_ms": _ms(s["lag_p99_s"])} for s in summary["sinks"]}}


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=3600.0)
    ap.add_argument("--for", dest="for_s", type=float, default=120.0, help="wall seconds of live emission")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--backfill-users", type=int, default=50)
    ap.add_argument("--backfill-days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = {"backfill": backfill(args)}
    print(json.dumps(result), flush=True)
    result["live"] = live(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
