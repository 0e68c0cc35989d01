"""A small local recommender service: the HTTP policy's counterpart in tests, benchmarks and demos.

    python -m twinsim.scenarios.policies.example_service --port 8080 [--error-share 0.05] [--stall-share 0.01]

``POST /recommend`` answers one decision request (schema: ``docs/recommenders.md``) with a simple rule,
deterministic given the request: the product the customer last clicked and has not bought since, else
one chosen by a hash of ``user_id`` (skipping any the customer bought recently). Failures are injected
by request id, so the same requests fail on every run: a share ``error_share`` is answered 503, a share
``stall_share`` is held ``stall_s`` seconds (past a client's timeout) before its answer; ``delay_ms``
delays every answer. ``POST /feedback`` takes a JSON array of outcomes and counts them; ``GET /stats``
reports what was served (requests, answers, errors, stalls, products, max in flight, feedback).

:func:`serve_in_thread` runs any aiohttp app (this one by default) in a background thread on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

STATS = web.AppKey("stats", dict)


def request_share(seed: int, key: str) -> float:
    """A uniform in [0, 1) that is a pure function of (seed, key)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose(request: dict) -> str | None:
    """The service's rule: the last clicked product not bought since, else a product by hash of the user
    (the first, cycling, that the customer did not buy in their recent events); None if there is none."""
    products = list(request["products"])
    bought: set[str] = set()
    for event in reversed(request.get("recent_events") or []):
        product = event.get("product")
        if event.get("event_type") == "offer_purchase":
            bought.add(product)
        elif event.get("event_type") == "offer_click" and product in products and product not in bought:
            return product
    if not products:
        return None
    start = int(request_share(0, str(request["user_id"])) * len(products))
    for k in range(len(products)):
        product = products[(start + k) % len(products)]
        if product not in bought:
            return product
    return None


def make_app(error_share: float = 0.0, stall_share: float = 0.0, stall_s: float = 5.0, delay_ms: float = 0.0,
             seed: int = 0) -> web.Application:
    """The service as an aiohttp app; the shares pick failing requests by a hash of (seed, request_id)."""
    for name, value in (("error_share", error_share), ("stall_share", stall_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: a share of requests in [0, 1], e.g. {name}=0.05")
    if error_share + stall_share > 1.0:
        raise ValueError(f"error_share + stall_share = {error_share + stall_share} > 1; lower one of them")
    if stall_s < 0 or delay_ms < 0:
        raise ValueError(f"stall_s={stall_s}, delay_ms={delay_ms}: durations must be >= 0")
    stats = {"requests": 0, "answered": 0, "errors": 0, "stalls": 0, "bad_requests": 0, "in_flight": 0,
             "max_in_flight": 0, "products": Counter(), "nothing": 0,
             "feedback_posts": 0, "outcomes": 0, "clicked": 0, "purchased": 0}

    async def recommend(request: web.Request) -> web.Response:
        stats["requests"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            try:
                body = await request.json()
                request_id = str(body["request_id"])
                body["products"], body["user_id"]  # noqa: B018 (required fields)
            except (ValueError, KeyError, TypeError) as e:
                stats["bad_requests"] += 1
                return web.json_response({"error": f"bad request: {e}"}, status=400)
            u = request_share(seed, request_id)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000.0)
            if u < error_share:
                stats["errors"] += 1
                return web.json_response({"error": "injected failure"}, status=503)
            if u < error_share + stall_share:
                stats["stalls"] += 1
                await asyncio.sleep(stall_s)
            product = choose(body)
            stats["answered"] += 1
            if product is None:
                stats["nothing"] += 1
            else:
                stats["products"][product] += 1
            return web.json_response({"request_id": request_id, "product": product, "propensity": 1.0})
        finally:
            stats["in_flight"] -= 1

    async def feedback(request: web.Request) -> web.Response:
        try:
            outcomes = await request.json()
            if not isinstance(outcomes, list):
                raise TypeError("a JSON array of outcomes is expected")
            clicked = sum(bool(o["clicked"]) for o in outcomes)
            purchased = sum(bool(o["purchased"]) for o in outcomes)
        except (ValueError, KeyError, TypeError) as e:
            stats["bad_requests"] += 1
            return web.json_response({"error": f"bad feedback: {e}"}, status=400)
        stats["feedback_posts"] += 1
        stats["outcomes"] += len(outcomes)
        stats["clicked"] += clicked
        stats["purchased"] += purchased
        return web.json_response({"received": len(outcomes)})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app[STATS] = stats
    app.router.add_post("/recommend", recommend)
    app.router.add_post("/feedback", feedback)
    app.router.add_get("/stats", get_stats)
    return app


def fetch_stats(base_url: str) -> dict:
    """``GET /stats`` of a running service at ``base_url`` (``http://127.0.0.1:PORT``)."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/stats", timeout=10) as answer:
        return json.load(answer)


@contextmanager
def serve_in_thread(app: web.Application | None = None, host: str = "127.0.0.1", port: int = 0,
                    **options) -> Iterator[str]:
    """Runs ``app`` (default: ``make_app(**options)``) in a background thread, on a free port unless
    ``port`` is given; yields its base URL (``http://127.0.0.1:PORT``) and stops it on exit."""
    app = make_app(**options) if app is None else app
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="example-service", daemon=True)
    thread.start()
    # handler_cancellation: a request whose client gave up (a timeout) stops stalling, so shutdown is quick
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)

    async def start() -> int:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner.addresses[0][1]

    try:
        bound = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
        yield f"http://{host}:{bound}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--error-share", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--stall-share", type=float, default=0.0, help="share of requests held --stall-s seconds")
    parser.add_argument("--stall-s", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay of every answer")
    parser.add_argument("--seed", type=int, default=0, help="which requests fail")
    args = parser.parse_args(argv)
    try:
        app = make_app(args.error_share, args.stall_share, args.stall_s, args.delay_ms, args.seed)
    except ValueError as e:
        message = str(e)
        for name in ("error_share", "stall_share", "stall_s", "delay_ms"):  # the options' names on the command line
            message = message.replace(f"{name}=", f"--{name.replace('_', '-')} ").replace(name, name.replace("_", "-"))
        parser.error(message)
    print(f"recommender at http://{args.host}:{args.port}/recommend (stats: /stats, feedback: /feedback)", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
