"""What every sink shares: the non-blocking queue, the delivery thread, retries, dead letters and counters.

A sink's :meth:`Sink.submit` only appends to an unbounded in-memory queue (the engine's open model: it
keeps its schedule however slow the target is). One background thread per sink takes up to ``batch``
queued records at a time, renders their payloads and calls the subclass's :meth:`Sink.deliver`; a batch
counts as acknowledged only when ``deliver`` returns (the target confirmed it). A failure is retried up to
``retries`` times with exponential backoff and jitter, unless it is :class:`Permanent`; a batch that runs
out of retries goes to the dead-letter JSONL file and counts as failed. Delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from twinsim.simulator.live.sinks.records import WALL, SinkError, dumps, render

LAG_WINDOW = 10_000  # the lag percentiles are over the last this many acknowledged records
MAX_DELAY_S = 30.0  # the longest wait between two attempts
DEAD_LETTER = "twinsim-dead-letter.jsonl"
INSTALL = "pip install 'twinsim[live]'"
_dead_letter_lock = threading.Lock()  # sinks may share one dead-letter file


class Permanent(Exception):
    """A delivery failure that retrying cannot fix (e.g. HTTP 400): the batch goes to the dead letters now."""


class Transient(Exception):
    """A delivery failure worth retrying that is not an exception of the client library (e.g. HTTP 503)."""


def redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and metrics."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def require(module: str, kind: str):
    """Import an optional library of the ``live`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SinkError(f"the {kind} sink needs the Python package {module.split('.')[0]!r}, which is not "
                        f"installed: {INSTALL}") from None


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """A ``?name=value`` option of a sink spec: ``parse`` turns the text into the value or raises ValueError
    saying what a value must be."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str


def integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise ValueError("a number of seconds > 0")
    return value


def flag(text: str) -> bool:
    if text.lower() not in ("0", "1", "true", "false"):
        raise ValueError("0 or 1")
    return text.lower() in ("1", "true")


def text(value: str) -> str:
    if not value:
        raise ValueError("a non-empty string")
    return value


def batch_option(default: int) -> Option:
    return Option("batch", integer(1), default, "records per delivery at most (fewer when fewer are queued)")


def timeout_option(default: float, what: str) -> Option:
    return Option("timeout", seconds, default, f"seconds {what} may take before it counts as failed")


RETRY_OPTIONS = (
    Option("retries", integer(0), 5, "attempts after the first before a batch goes to the dead letters"),
    Option("backoff", seconds, 0.2, "seconds before the first retry; doubles each retry (with jitter), max 30"),
    Option("dead_letter", text, DEAD_LETTER, "JSONL file of the payloads given up on (payload + error)"),
)


# ------------------------------------------------------------------------------------------------- sinks


class Sink:
    """Base of every sink. Subclasses set ``kind`` and ``OPTIONS``, set their own attributes and then call
    ``super().__init__`` (which starts the delivery thread and waits for :meth:`open` there), and implement
    :meth:`deliver`; optionally :meth:`recover` (after a failed attempt) and :meth:`shutdown`."""

    kind = "sink"
    OPTIONS: tuple[Option, ...] = ()
    EXAMPLE = ""

    def __init__(self, target: str, name: str | None = None, template: Mapping | None = None, *, batch: int = 100,
                 retries: int = 5, backoff: float = 0.2, dead_letter: str | Path = DEAD_LETTER,
                 open_timeout: float = 30.0) -> None:
        self.target, self.name, self.template = target, name or self.kind, template
        self.batch, self.retries, self.backoff = batch, retries, backoff
        self.dead_letter = Path(dead_letter).absolute()
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._emitted = self._acknowledged = self._retried = self._failed = self._in_flight = 0
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self._lag_sum, self._lag_count, self._last_error = 0.0, 0, None
        self._closing = False
        self._abandon = threading.Event()  # set by close() when flushing ran out of time: stop retrying
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"twinsim-sink-{self.name}", daemon=True)
        self._thread.start()
        if not self._opened.wait(open_timeout):
            with self._cond:  # should open still succeed, the thread finds nothing to do and disconnects
                self._closing = True
                self._abandon.set()
                self._cond.notify_all()
            last = f" (last error: {self._last_error})" if self._last_error else ""
            raise SinkError(f"--sink {self.target}: the {self.kind} target did not answer within {open_timeout:g} s"
                            f"{last}; is it running and reachable? e.g. --sink {self.EXAMPLE}")
        if self._open_error is not None:
            error = self._open_error
            if isinstance(error, SinkError):
                raise error
            raise SinkError(f"--sink {self.target}: cannot open the {self.kind} target ({describe(error)}); is it "
                            f"running and reachable, and the spec right? e.g. --sink {self.EXAMPLE}") from error

    # ------------------------------------------------------------------------------ what subclasses write

    def open(self) -> None:
        """Connect to the target (on the delivery thread, before the first batch); raise if it cannot work."""

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        """Send one batch; return only when the target confirmed all of it. Raise :class:`Permanent` for a
        failure no retry can fix, any other exception for one worth retrying."""
        raise NotImplementedError

    def recover(self, error: Exception) -> None:
        """After a failed attempt, before the backoff: e.g. drop a broken connection (the next
        :meth:`deliver` reconnects)."""

    def shutdown(self) -> None:
        """Release connections (on the delivery thread, after the last batch)."""

    # ------------------------------------------------------------------------------------ the engine's API

    def submit(self, records: Iterable[dict]) -> None:
        """Queue ``records`` for delivery; never blocks. The records must not be changed afterwards."""
        with self._cond:
            if self._closing:
                raise SinkError(f"sink {self.name!r} is closed; open a new one to submit more")
            before = len(self._queue)
            self._queue.extend(records)
            self._emitted += len(self._queue) - before
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted is acknowledged or dead-lettered; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._settled() or not self._thread.is_alive(), timeout) \
                and self._settled()

    def close(self, timeout: float | None = 60.0) -> bool:
        """Flush (up to ``timeout`` s), then stop the delivery thread. Records still undelivered when the
        time runs out go to the dead letters. Returns whether everything was delivered or dead-lettered."""
        if self._thread.ident == threading.get_ident():
            raise SinkError(f"sink {self.name!r}: close() was called from its own delivery thread")
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            if not flushed:
                self._abandon.set()
            self._cond.notify_all()
        self._thread.join(timeout=30)
        return flushed and self._settled()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict:
        """Counters (records): emitted (submitted), acknowledged, retried (re-sent after a failed attempt),
        failed (dead-lettered), pending (queued), in_flight; lag (acknowledgement minus ``scheduled_wall``,
        seconds) p50/p99/max over the last :data:`LAG_WINDOW` records, and its sum/count since the start."""
        with self._cond:
            lags = np.fromiter(self._lags, float, len(self._lags))
            stats = {"sink": self.name, "kind": self.kind, "target": self.target, "emitted": self._emitted,
                     "acknowledged": self._acknowledged, "retried": self._retried, "failed": self._failed,
                     "pending": len(self._queue), "in_flight": self._in_flight,
                     "lag_sum_s": self._lag_sum, "lag_count": self._lag_count, "last_error": self._last_error}
        p50, p99 = np.percentile(lags, [50, 99]) if len(lags) else (None, None)
        stats.update(lag_p50_s=None if p50 is None else float(p50), lag_p99_s=None if p99 is None else float(p99),
                     lag_max_s=float(lags.max()) if len(lags) else None)
        return stats

    # ------------------------------------------------------------------------------------------ internals

    def _settled(self) -> bool:
        return self._acknowledged + self._failed == self._emitted

    def _run(self) -> None:
        try:
            self.open()
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor
            self._open_error = exc
            self._opened.set()
            try:
                self.shutdown()
            except Exception:  # noqa: BLE001 - whatever open left half-made
                pass
            return
        self._opened.set()
        try:
            while (batch := self._next()) is not None:
                self._send(batch)
        finally:
            try:
                self.shutdown()
            except Exception:  # noqa: BLE001 - the batches are settled; a failing disconnect changes nothing
                pass
            with self._cond:
                self._cond.notify_all()

    def _next(self) -> list[dict] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            if not self._queue:
                return None
            batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
            self._in_flight = len(batch)
            return batch

    def _send(self, batch: list[dict]) -> None:
        try:
            payloads = [render(record, self.template) for record in batch]
        except Exception as exc:  # noqa: BLE001 - e.g. a record that is not a mapping: it cannot be sent
            self._dead(batch, [{"record": repr(record)} for record in batch], f"cannot render: {describe(exc)}")
            return
        if self._abandon.is_set():
            self._dead(batch, payloads, "not delivered before close() ran out of time")
            return
        attempt = 0
        while True:
            try:
                self.deliver(batch, payloads)
            except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered, none is fatal
                error = describe(exc)
                self._last_error = error
                if isinstance(exc, Permanent) or attempt >= self.retries or self._abandon.is_set():
                    self._dead(batch, payloads, error)
                    return
                attempt += 1
                with self._cond:
                    self._retried += len(batch)
                try:
                    self.recover(exc)
                except Exception:  # noqa: BLE001 - the next attempt fails and is counted instead
                    pass
                self._abandon.wait(self._delay(attempt))
            else:
                self._ack(batch)
                return

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d = backoff * 2**(attempt-1), max 30 s."""
        delay = min(MAX_DELAY_S, self.backoff * 2 ** (attempt - 1))
        return random.uniform(delay / 2, delay)

    def _ack(self, batch: list[dict]) -> None:
        now = time.monotonic()
        lags = [now - record[WALL] for record in batch if record.get(WALL) is not None]
        with self._cond:
            self._acknowledged += len(batch)
            self._in_flight = 0
            self._lags.extend(lags)
            self._lag_sum += sum(lags)
            self._lag_count += len(lags)
            self._cond.notify_all()

    def _dead(self, batch: list[dict], payloads: list[dict], error: str) -> None:
        lines = "".join(dumps({"sink": self.name, "error": error,
                               "event_id": record.get("event_id") if isinstance(record, Mapping) else None,
                               "payload": payload}) + "\n" for record, payload in zip(batch, payloads, strict=True))
        try:
            self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
            with _dead_letter_lock, self.dead_letter.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError as exc:
            self._last_error = f"{error}; and the dead-letter file {self.dead_letter} failed: {exc}"
        with self._cond:
            self._failed += len(batch)
            self._in_flight = 0
            self._cond.notify_all()


class AsyncSink(Sink):
    """A sink whose client library is asyncio: one event loop on the delivery thread runs :meth:`aopen`,
    :meth:`adeliver` (one batch at a time) and :meth:`aclose`."""

    loop: asyncio.AbstractEventLoop

    def open(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.aopen())

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        self.loop.run_until_complete(self.adeliver(records, payloads))

    def shutdown(self) -> None:
        try:
            self.loop.run_until_complete(self.aclose())
        finally:
            self.loop.close()

    async def aopen(self) -> None:
        """Connect (see :meth:`Sink.open`)."""

    async def adeliver(self, records: list[dict], payloads: list[dict]) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Disconnect (see :meth:`Sink.shutdown`)."""


def describe(error: BaseException) -> str:
    """A one-line account of a delivery failure, e.g. ``"TimeoutError"`` or ``"http 503: Service Unavailable"``."""
    message = str(error).strip().splitlines()
    if isinstance(error, Permanent | Transient | SinkError):
        return message[0] if message else type(error).__name__
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
