"""``nats://HOST:PORT?stream=TWINSIM&subject=twinsim.events``: NATS JetStream, nats-py.

The stream is created if missing, with subjects ``{subject}.>``; each event is published to
``{subject}.{event_type}`` (characters other than letters, digits, ``_`` and ``-`` become ``_``) with the
header ``Nats-Msg-Id: event_id``, and a batch is acknowledged when JetStream has acked every message.
JetStream drops a message whose id it saw within the stream's duplicate window (2 minutes by default), so a
retried batch is stored once; beyond the window consumers dedupe on the id.
"""

from __future__ import annotations

import asyncio
import re

from twinsim.simulator.live.sinks.base import (
    RETRY_OPTIONS,
    AsyncSink,
    Option,
    Permanent,
    batch_option,
    describe,
    redact,
    require,
    text,
    timeout_option,
)
from twinsim.simulator.live.sinks.records import SinkError, dumps

TOKEN = re.compile(r"[^A-Za-z0-9_-]")
RECONNECTS = 3  # the client's own attempts per (re)connect, RECONNECT_WAIT_S apart
RECONNECT_WAIT_S = 0.5


class NatsSink(AsyncSink):
    """Publishes each payload (JSON) to JetStream stream ``stream`` under ``{subject}.{event_type}``."""

    kind = "nats"
    OPTIONS = (batch_option(500), *RETRY_OPTIONS,
               Option("stream", text, "TWINSIM", "the JetStream stream (created if missing)"),
               Option("subject", text, "twinsim.events", "the subject prefix: events go to {subject}.{event_type}"),
               timeout_option(5.0, "connecting or one publish acknowledgement"))
    EXAMPLE = "nats://127.0.0.1:4222?stream=TWINSIM&subject=twinsim.events"

    def __init__(self, url: str, name: str | None = None, template=None, *, stream: str = "TWINSIM",
                 subject: str = "twinsim.events", timeout: float = 5.0, **options) -> None:
        self.nats = require("nats", "nats")
        self.url, self.stream, self.subject, self.timeout = url, stream, subject, timeout
        self.nc = self.js = None
        super().__init__(redact(url), name, template, **options)

    def subject_of(self, record: dict) -> str:
        return f"{self.subject}.{TOKEN.sub('_', str(record.get('event_type') or 'unknown'))}"

    async def connect(self) -> None:
        """A new client. nats-py gives up on a server only when ``max_reconnect_attempts`` > 0 (0 and -1 retry
        forever, even the first connect), so it tries a few times and closes; :meth:`adeliver` then
        reconnects within the sink's own retries."""
        self.nc = await self.nats.connect(self.url, connect_timeout=self.timeout, max_reconnect_attempts=RECONNECTS,
                                          reconnect_time_wait=RECONNECT_WAIT_S, error_cb=self._on_error)
        self.js = self.nc.jetstream(timeout=self.timeout)

    async def _on_error(self, error: Exception) -> None:
        self._last_error = describe(error)  # instead of nats-py's logged traceback per attempt

    async def aopen(self) -> None:
        from nats.js.errors import NotFoundError

        await self.connect()
        wanted = f"{self.subject}.>"
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(name=self.stream, subjects=[wanted])
            return
        if not {wanted, ">"} & set(info.config.subjects or ()):
            raise SinkError(f"--sink {self.target}: JetStream stream {self.stream!r} exists with subjects "
                            f"{info.config.subjects}, which do not hold {wanted}; name another stream or a "
                            f"subject it holds, e.g. ?stream=TWINSIM&subject=twinsim.events")

    async def adeliver(self, records: list[dict], payloads: list[dict]) -> None:
        from nats.errors import NoRespondersError
        from nats.js.errors import APIError, ServiceUnavailableError

        if self.nc is None or self.nc.is_closed:
            await self.connect()
        acks = await asyncio.gather(*(
            self.js.publish(self.subject_of(record), dumps(payload).encode(), timeout=self.timeout,
                            stream=self.stream, headers={"Nats-Msg-Id": str(record["event_id"])})
            for record, payload in zip(records, payloads, strict=True)), return_exceptions=True)
        errors = [ack for ack in acks if isinstance(ack, BaseException)]
        if not errors:
            return
        error = errors[0]
        if isinstance(error, NoRespondersError) or (isinstance(error, APIError)
                                                     and not isinstance(error, ServiceUnavailableError)):
            raise Permanent(f"JetStream rejected {len(errors)} of {len(acks)} messages: {error}") from error
        raise error

    async def aclose(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()
