"""The control API of a live run: HTTP (aiohttp) on loopback by default, in a background thread; each request
becomes a :meth:`LiveRun.call` applied on the run's own thread at the next tick. ``docs/live.md`` lists the
routes. Bound to anything but loopback it requires a token (``Authorization: Bearer TOKEN``)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from aiohttp import web

from twinsim.models.errors import TwinsimError
from twinsim.simulator.live.engine import CommandError, LiveRun
from twinsim.simulator.live.sinks.metrics import prometheus

RESERVED = {"event_type", "amount", "marks"}  # an impose body's other keys are marks: {"product": "savings"}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``: loopback) of ``--control``."""
    host, _, port = str(text).rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:
        raise TwinsimError(f"--control {text!r}: give HOST:PORT, e.g. --control 127.0.0.1:8750 (or 8750)")
    return host or "127.0.0.1", number


def make_app(run: LiveRun, token: str | None = None) -> web.Application:
    """The routes of the control API over ``run`` (see ``docs/live.md``)."""

    async def call(kind: str, **args):
        loop = asyncio.get_running_loop()
        timeout = 600.0 if kind in ("jump", "add") else 30.0  # (new customers' history is sampled first)
        return await loop.run_in_executor(None, partial(run.call, kind, timeout, **args))

    async def body(request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            value = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CommandError('the body is not JSON; send e.g. {"event_type": "offer_shown", "product": "savings"} '
                               "with Content-Type: application/json") from None
        if not isinstance(value, dict):
            raise CommandError(f"the body must be a JSON object, not {type(value).__name__}")
        return value

    def handler(make):
        async def handle(request: web.Request) -> web.Response:
            if token is not None and not hmac.compare_digest(request.headers.get("Authorization", ""),
                                                             f"Bearer {token}"):
                return web.json_response({"error": "missing or wrong token: send Authorization: Bearer TOKEN "
                                                   "(--control-token or TWINSIM_CONTROL_TOKEN)"}, status=401)
            try:
                status, answer = await make(request)
            except CommandError as e:
                return web.json_response({"error": str(e)}, status=e.status)
            except TimeoutError:
                return web.json_response({"error": "the run did not answer in time (is it stopping?)"}, status=503)
            if isinstance(answer, str):
                return web.Response(text=answer, content_type="text/plain", charset="utf-8")
            return web.json_response(answer, status=status, dumps=lambda v: json.dumps(v, default=str))
        return handle

    async def customers(request):
        return 200, await call("customers")

    async def add(request):
        data = await body(request)
        unknown = sorted(set(data) - {"count", "where"})
        if unknown:
            raise CommandError(f"unknown field(s) {unknown}; e.g. {{\"count\": 5, \"where\": {{\"segment\": "
                               "\"student\"}}")
        return 201, await call("add", count=data.get("count", 1), where=data.get("where"))

    async def customer(request):
        return 200, await call("customer", user_id=request.match_info["user_id"])

    async def impose(request):
        data = await body(request)
        if "event_type" not in data:
            raise CommandError('give "event_type", e.g. {"event_type": "offer_shown", "product": "travel_card"}')
        marks = dict(data.get("marks") or {})
        marks.update({k: v for k, v in data.items() if k not in RESERVED})
        amount = data.get("amount")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float)):
            raise CommandError(f"amount {amount!r} must be a number, e.g. {{\"amount\": 2500.0}}")
        if not all(isinstance(v, str) for v in marks.values()):
            raise CommandError(f"mark values must be strings (got {marks}); e.g. {{\"product\": \"savings\"}}")
        return 201, await call("impose", user_id=request.match_info["user_id"], event_type=str(data["event_type"]),
                               marks=marks, amount=None if amount is None else float(amount))

    def simple(kind: str, fields: tuple[str, ...] = ()):
        async def make(request):
            data = await body(request) if request.method == "POST" else {}
            unknown = sorted(set(data) - set(fields))
            if unknown:
                raise CommandError(f"{request.path}: unknown field(s) {unknown}; it takes {list(fields) or 'none'}")
            return 200, await call(kind, **data)
        return make

    async def metrics(request):
        status = await call("status")
        extra = {"simulated_time_seconds": run.clock.now if run.clock else run.start_s,
                 "speed": status["speed"], "customers": status["customers"], "active_customers": status["active"],
                 "emitted_total": status["emitted"], "history_events_total": status["history"],
                 "imposed_total": status["imposed"],
                 "lateness_p99_seconds": status["lateness_p99_s"] or 0.0,
                 "lateness_max_seconds": status["lateness_max_s"] or 0.0}
        return 200, prometheus(run.sinks, extra)

    app = web.Application()
    app.router.add_get("/customers", handler(customers))
    app.router.add_post("/customers", handler(add))
    app.router.add_get("/customers/{user_id}", handler(customer))
    app.router.add_post("/customers/{user_id}/events", handler(impose))
    for path, kind, fields in (("/pause", "pause", ()), ("/resume", "resume", ()), ("/speed", "speed", ("speed",)),
                               ("/jump", "jump", ("to", "user_id", "event_type")), ("/stop", "stop", ())):
        app.router.add_post(path, handler(simple(kind, fields)))
    app.router.add_get("/clock", handler(simple("clock")))
    app.router.add_get("/status", handler(simple("status")))
    app.router.add_get("/metrics", handler(metrics))
    return app


@contextmanager
def serve(run: LiveRun, host: str = "127.0.0.1", port: int = 8750, token: str | None = None) -> Iterator[str]:
    """The control API of ``run`` on ``host:port`` (0: a free port) in a background thread; yields its base URL."""
    from twinsim.scenarios.policies.example_service import serve_in_thread

    if not is_loopback(host) and not token:
        raise TwinsimError(f"--control {host}:{port} is not loopback: anyone who reaches it could act on the run; "
                           "give a token (--control-token SECRET or TWINSIM_CONTROL_TOKEN), or bind 127.0.0.1")
    served = serve_in_thread(make_app(run, token), host, port)
    try:
        base = served.__enter__()
    except OSError as e:
        raise TwinsimError(f"--control {host}:{port}: cannot listen there ({e.strerror or e}); choose a free port, "
                           "e.g. --control 127.0.0.1:8751") from None
    try:
        yield base
    finally:
        served.__exit__(None, None, None)
