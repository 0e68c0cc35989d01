"""Live sinks' throughput: sustained records/s into each sink, and the PostgreSQL history backfill.

    python benchmarks/live_sinks_throughput.py --records 100000 --backfill-users 50 --backfill-days 365

For each sink in ``--sinks`` (webhook: a local aiohttp receiver in its own process that parses and counts
each batch; postgres, redis, nats: the servers of ``--postgres``, ``--redis``, ``--nats``), all ``--records``
are submitted at once and the clock runs until ``flush`` returns: records/s with the sink always busy, and
the cost of ``submit`` per record (what the engine pays). Then ``write_bulk`` backfills users x days x
``--per-day`` records into PostgreSQL, and again (the idempotent re-run). Tables, streams and JetStream
streams get unique names and are removed afterwards. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

from twinsim.simulator.live.sinks import event_id, open_sink, timestamp

TYPES = ("card_payment", "login", "offer_click", "transfer")


def make_records(n: int, users: int, days: int = 365, seed: int = 0) -> list[dict]:
    """``n`` records of ``users`` customers spread over ``days`` days, as the engine would hand them."""
    start, wall = datetime(2025, 1, 1, tzinfo=UTC), time.monotonic()
    step = days * 86_400 / max(n, 1)
    return [{"event_id": event_id(seed, f"u{k % users}", k), "user_id": f"u{k % users}",
             "timestamp": timestamp(start + timedelta(seconds=k * step)), "event_type": TYPES[k % 4],
             "amount": round(5 + (k * 7919) % 500 / 3, 2) if k % 4 == 0 else None,
             "product": "card" if k % 4 == 2 else None, "channel": "app", "scheduled_wall": wall} for k in range(n)]


def _receive(port: int) -> None:
    from aiohttp import web

    received = 0

    async def events(request: web.Request) -> web.Response:
        nonlocal received
        received += len(await request.json())
        return web.json_response({"ok": True})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"received": received})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/events", events)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def receiver() -> tuple[multiprocessing.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = multiprocessing.get_context("spawn").Process(target=_receive, args=(port,), daemon=True)
    process.start()
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"http://127.0.0.1:{port}"


def sustained(spec: str, records: list[dict]) -> dict:
    with open_sink(spec) as sink:
        started = time.perf_counter()
        sink.submit(records)
        submitted = time.perf_counter()
        assert sink.flush(None)
        seconds = time.perf_counter() - started
        stats = sink.stats()
    assert stats["acknowledged"] == len(records) and stats["failed"] == 0, stats
    return {"records": len(records), "seconds": round(seconds, 2), "records_per_second": round(len(records) / seconds),
            "submit_us_per_record": round((submitted - started) / len(records) * 1e6, 3), "batch": sink.batch}


async def _delete_stream(url: str, name: str) -> None:
    import nats

    nc = await nats.connect(url, max_reconnect_attempts=1)
    await nc.jetstream().delete_stream(name)
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per sustained run")
    parser.add_argument("--sinks", default="webhook,postgres", help="comma-separated: webhook, postgres, redis, nats")
    parser.add_argument("--backfill-users", type=int, default=50)
    parser.add_argument("--backfill-days", type=int, default=365)
    parser.add_argument("--per-day", type=float, default=16.0, help="events per customer per day in the backfill")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    records = make_records(args.records, users=50)
    tag = uuid.uuid4().hex[:10]
    table = f"twinsim_bench_{tag}"
    result: dict = {"benchmark": "live_sinks_throughput"}
    try:
        if "webhook" in sinks:
            process, url = receiver()
            try:
                result["webhook"] = sustained(f"{url}/events?batch=100", records)
                received = json.loads(urllib.request.urlopen(f"{url}/count", timeout=10).read())["received"]
                assert received == len(records), received
            finally:
                process.terminate()
        if "postgres" in sinks:
            result["postgres"] = sustained(f"{args.postgres}?table={table}_live", records)
        if "redis" in sinks:
            result["redis"] = sustained(f"{args.redis}?stream=twinsim:bench:{tag}", records)
        if "nats" in sinks:
            result["nats"] = sustained(f"{args.nats}?stream=TWINSIM_BENCH_{tag.upper()}&subject=bench.{tag}",
                                       records)
        n = round(args.backfill_users * args.backfill_days * args.per_day)
        history = make_records(n, users=args.backfill_users, days=args.backfill_days, seed=1)
        with open_sink(f"{args.postgres}?table={table}") as sink:
            started = time.perf_counter()
            inserted = sink.write_bulk(history)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            again = sink.write_bulk(history)
            rerun = time.perf_counter() - started
        assert inserted == n and again == 0, (inserted, again)
        result["backfill"] = {"users": args.backfill_users, "days": args.backfill_days, "records": n,
                              "seconds": round(seconds, 2), "records_per_second": round(n / seconds),
                              "rerun_seconds": round(rerun, 2)}
    finally:
        import psycopg

        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP TABLE IF EXISTS {table}_live")
        if "redis" in sinks:
            import redis

            redis.Redis.from_url(args.redis).delete(f"twinsim:bench:{tag}")
        if "nats" in sinks:
            try:
                asyncio.run(_delete_stream(args.nats, f"TWINSIM_BENCH_{tag.upper()}"))
            except Exception:  # noqa: BLE001 - the stream was never made
                pass
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
