"""A recommender behind HTTP: one JSON POST per decision request (schema: ``docs/recommenders.md``).

:class:`HttpPolicy` is an ordinary policy for the engine (``decide`` is synchronous); inside, one
persistent aiohttp session on an event loop in a background thread sends up to ``concurrency`` requests
at once, each with ``timeout_s``. A request that fails (timeout, HTTP error status, no connection, an
answer that is not the schema, or a product outside the catalogue) takes the ``fallback`` action and is
counted; none is fatal. ``stats()`` reports calls, failures, latency percentiles and throughput.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import threading
import time
import weakref
from collections import Counter
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pandas as pd

from twinsim.scenarios.policy import Actions, Catalogue, DecisionBatch, Outcomes, PolicyError

ISO = "%Y-%m-%dT%H:%M:%S.%fZ"
HEADERS = {"Content-Type": "application/json"}
FEEDBACK_TIMEOUT_S = 10.0  # at least this long for one feedback POST (it carries a whole update's outcomes)


def _check_url(url, option: str) -> str:
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"{option} {url!r}: not an http(s) URL; e.g. http://127.0.0.1:8080/recommend")
    return str(url)


def _utc(times) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(pd.to_datetime(times))
    return times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: timestamps as ISO strings, missing values (NaN, NaT, NA) as None."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            stamps = _utc(frame[column])
            frame[column] = np.where(stamps.isna(), None, stamps.strftime(ISO))
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _plain(value):
    """json.dumps' fallback for numpy scalars and timestamps."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return _utc([value]).strftime(ISO)[0]
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(payload) -> bytes:
    return json.dumps(payload, default=_plain, separators=(",", ":")).encode()


def _user(user_id):
    user_id = user_id.item() if isinstance(user_id, np.generic) else user_id
    return user_id if isinstance(user_id, int) else str(user_id)


class _Runtime:
    """The background thread's event loop and the one session on it (per policy, per process)."""

    def __init__(self, concurrency: int) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="http-policy", daemon=True)
        self.thread.start()
        self.session, self.semaphore = self.run(self._open(concurrency))

    async def _open(self, concurrency: int):
        connector = aiohttp.TCPConnector(limit=concurrency + 1)  # +1: a feedback POST never waits for a slot
        return aiohttp.ClientSession(connector=connector), asyncio.Semaphore(concurrency)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.pid != os.getpid() or self.loop.is_closed():
            return  # a forked child's copy: the loop and its thread belong to the parent
        if self.thread.is_alive():
            self.run(self.session.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()


class HttpPolicy:
    """A policy served over HTTP at ``url``: ``concurrency`` requests in flight at most, each given
    ``timeout_s`` seconds; ``fallback`` (a catalogue product, or None: show nothing) stands in for any
    request that fails; ``feedback_url`` (optional) receives the outcomes as one JSON array per update."""

    def __init__(self, url: str, concurrency: int = 16, timeout_s: float = 1.0, fallback: str | None = None,
                 feedback_url: str | None = None) -> None:
        from twinsim.scenarios.policies import policy_name

        self.url = _check_url(url, "--policy")
        self.feedback_url = None if feedback_url in (None, "") else _check_url(feedback_url, "feedback_url")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int | np.integer) or concurrency < 1:
            raise PolicyError(f"--concurrency {concurrency!r}: the number of requests in flight at once must be an "
                              "integer >= 1, e.g. --concurrency 16")
        try:
            timeout_s = float(timeout_s)
        except (TypeError, ValueError):
            timeout_s = math.nan
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise PolicyError(f"--timeout {timeout_s!r}: seconds a request may take must be a number > 0, "
                              "e.g. --timeout 0.5")
        self.concurrency = int(concurrency)
        self.timeout_s = timeout_s
        self.fallback = None if fallback in (None, "") else str(fallback)
        self.name = policy_name(self.url)
        self.products: list[str] | None = None
        self._runtime: _Runtime | None = None
        self._finalizer = None
        self._lock = threading.Lock()
        self._reset_stats()

    # ----- the policy interface -----

    def bind(self, catalogue: Catalogue, seed: int) -> None:
        """Takes the catalogue (sent with each request) and checks ``fallback`` against it."""
        if self.fallback is not None and self.fallback not in catalogue.products:
            raise PolicyError(f"--fallback {self.fallback!r}: not a product of the catalogue {catalogue.products}; "
                              "name one of them, or leave --fallback out to show nothing when the service fails")
        self.products = list(catalogue.products)

    def decide(self, batch: DecisionBatch) -> Actions:
        """One POST per request, in the batch's order; failures take the fallback (see ``Actions.failure``)."""
        if self.products is None:
            raise PolicyError(f"{self.name}: decide() before bind(catalogue, seed); the engine binds each policy "
                              "to the catalogue before its first decision")
        n = len(batch)
        started = time.perf_counter()
        request_ids = [str(r) for r in batch.request_id]
        payloads = self._payloads(batch, request_ids)
        answers = self._runtime_now().run(self._decide_all(payloads, request_ids)) if n else []
        self._busy_s += time.perf_counter() - started
        product = np.array([a[0] for a in answers], dtype=object)
        propensity = np.array([a[1] for a in answers], dtype=float)
        failure = np.array([a[2] for a in answers], dtype=object)
        latency = np.array([a[3] for a in answers], dtype=float)
        self._latencies.append(latency)
        self._failures.update(f for f in failure if f is not None)
        self._calls += n
        return Actions(product=product, propensity=None if np.isnan(propensity).all() else propensity,
                       failure=failure, latency_ms=latency)

    def feedback(self, outcomes: Outcomes) -> None:
        """POSTs ``outcomes`` as one JSON array to ``feedback_url`` (if set); a failure is counted, never raised."""
        if self.feedback_url is None or len(outcomes) == 0:
            return
        rows = [{"request_id": str(r), "user_id": _user(u), "product": p, "shown_time": t, "clicked": bool(c),
                 "purchased": bool(b), "value": float(v)}
                for r, u, p, t, c, b, v in zip(outcomes.request_id, outcomes.user_id, outcomes.product,
                                               _utc(outcomes.shown_time).strftime(ISO), outcomes.clicked,
                                               outcomes.purchased, outcomes.value, strict=True)]
        failure, _ = self._runtime_now().run(self._post(self.feedback_url, _dumps(rows),
                                                        max(FEEDBACK_TIMEOUT_S, self.timeout_s)))
        self._feedback["posts"] += 1
        if failure is None:
            self._feedback["outcomes"] += len(rows)
        else:
            self._feedback_failures[failure] += 1

    # ----- checks, statistics, lifetime -----

    def check(self) -> None:
        """Raises :class:`PolicyError` naming the URL unless something accepts connections there."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=max(self.timeout_s, 2.0)):
                pass
        except OSError as e:
            raise PolicyError(f"--policy {self.url}: nothing listens at {parts.hostname}:{port} ({e}); start the "
                              "service or fix --policy (e.g. python -m twinsim.scenarios.policies.example_service "
                              "--port 8080, then --policy http://127.0.0.1:8080/recommend)") from e

    def stats(self) -> dict:
        """Calls, answers, fallbacks, failures by kind, latency percentiles (ms), calls per second of time
        spent in ``decide``, the most requests in flight at once, and feedback POSTs."""
        latency = np.concatenate(self._latencies) if self._latencies else np.empty(0)
        p50, p90, p99, top = (np.percentile(latency, [50, 90, 99, 100]) if len(latency) else [math.nan] * 4)
        fallbacks = sum(self._failures.values())
        return {"url": self.url, "concurrency": self.concurrency, "timeout_s": self.timeout_s,
                "calls": self._calls, "answered": self._calls - fallbacks, "fallbacks": fallbacks,
                "failures": dict(self._failures),
                "latency_p50_ms": float(p50), "latency_p90_ms": float(p90), "latency_p99_ms": float(p99),
                "latency_max_ms": float(top),
                "calls_per_s": self._calls / self._busy_s if self._busy_s > 0 else math.nan,
                "max_in_flight": self._max_in_flight,
                "feedback_posts": self._feedback["posts"], "feedback_outcomes": self._feedback["outcomes"],
                "feedback_failures": dict(self._feedback_failures)}

    def reset_stats(self) -> None:
        """Starts the counts of ``stats()`` afresh (the session stays open)."""
        self._reset_stats()

    def close(self) -> None:
        """Closes the session and stops the background loop (a later ``decide`` opens new ones)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()  # runs _Runtime.close once
            self._runtime = self._finalizer = None

    def __enter__(self) -> HttpPolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # a copy for another process: without the loop, thread and lock
        state.update(_runtime=None, _finalizer=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ----- inside -----

    def _reset_stats(self) -> None:
        self._calls = 0
        self._busy_s = 0.0
        self._max_in_flight = 0
        self._in_flight = 0
        self._latencies: list[np.ndarray] = []
        self._failures: Counter = Counter()
        self._feedback = {"posts": 0, "outcomes": 0}
        self._feedback_failures: Counter = Counter()

    def _runtime_now(self) -> _Runtime:
        with self._lock:
            if self._runtime is not None and self._runtime.pid != os.getpid():
                self._runtime = self._finalizer = None  # forked: the parent's loop thread does not exist here
            if self._runtime is None:
                self._runtime = _Runtime(self.concurrency)
                # closes the session at garbage collection or interpreter exit, whichever comes first
                self._finalizer = weakref.finalize(self, _Runtime.close, self._runtime)
            return self._runtime

    def _payloads(self, batch: DecisionBatch, request_ids: list[str]) -> list[bytes]:
        n = len(batch)
        times = _utc(batch.time).strftime(ISO)
        attributes = _records(batch.attributes) if len(batch.attributes.columns) else [{}] * n
        recent: list[list[dict]] = [[] for _ in range(n)]
        if len(batch.recent):
            rows = batch.recent.drop(columns="request")
            for i, event in zip(batch.recent["request"].to_numpy(), _records(rows), strict=True):
                recent[int(i)].append(event)
        return [_dumps({"request_id": request_ids[i], "user_id": _user(batch.user_id[i]), "time": times[i],
                        "attributes": attributes[i], "recent_events": recent[i], "products": self.products})
                for i in range(n)]

    async def _decide_all(self, payloads: list[bytes], request_ids: list[str]) -> list[tuple]:
        return await asyncio.gather(*(self._decide_one(p, r) for p, r in zip(payloads, request_ids, strict=True)))

    async def _decide_one(self, payload: bytes, request_id: str) -> tuple:
        """(product, propensity or NaN, failure or None, latency in ms) of one request."""
        async with self._runtime.semaphore:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            started = time.perf_counter()
            try:
                failure, body = await self._post(self.url, payload, self.timeout_s)
            finally:
                self._in_flight -= 1
            latency = (time.perf_counter() - started) * 1000.0
        if failure is None:
            failure, product, propensity = self._parse(body, request_id)
            if failure is None:
                return product, propensity, None, latency
        return self.fallback, math.nan, failure, latency

    async def _post(self, url: str, payload: bytes, timeout_s: float) -> tuple[str | None, bytes | None]:
        """(failure or None, the answer's body) of one POST."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._runtime.session.post(url, data=payload, headers=HEADERS) as answer:
                    if not 200 <= answer.status < 300:
                        return f"http {answer.status}", None
                    return None, await answer.read()
        except TimeoutError:
            return "timeout", None
        except (aiohttp.ClientError, OSError):
            return "connection", None

    def _parse(self, body: bytes, request_id: str) -> tuple[str | None, str | None, float]:
        """(failure or None, product, propensity or NaN) of an answer's body."""
        try:
            answer = json.loads(body)
        except ValueError:
            return "malformed", None, math.nan
        if not isinstance(answer, dict) or str(answer.get("request_id")) != request_id or "product" not in answer:
            return "malformed", None, math.nan
        product, propensity = answer["product"], answer.get("propensity")
        if product is not None and not isinstance(product, str):
            return "malformed", None, math.nan
        if propensity is not None:
            if isinstance(propensity, bool) or not isinstance(propensity, int | float) or not 0 < propensity <= 1:
                return "malformed", None, math.nan
        product = product or None
        if product is not None and product not in self.products:
            return "unknown product", None, math.nan
        return None, product, math.nan if propensity is None else float(propensity)
