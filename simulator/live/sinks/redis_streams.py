"""``redis://HOST:PORT/DB?stream=twinsim:events``: one Redis Stream entry (XADD) per event, redis-py.

Each entry has the fields ``event_id``, ``payload`` (the payload as JSON) and the payload's top-level
fields as strings (None left out; numbers, booleans and objects as JSON). With ``per_customer=1`` each
customer has a stream, ``{stream}:{user_id}``. A batch is one pipeline. Redis Streams do not dedupe: a
retried batch may add an entry twice, so consumers dedupe on ``event_id`` (at-least-once).
"""

from __future__ import annotations

from twinsim.simulator.live.sinks.base import (
    RETRY_OPTIONS,
    Option,
    Permanent,
    Sink,
    batch_option,
    flag,
    integer,
    redact,
    require,
    text,
    timeout_option,
)
from twinsim.simulator.live.sinks.records import dumps


def fields(record: dict, payload: dict) -> dict[str, str]:
    flat = {key: value if isinstance(value, str) else dumps(value)
            for key, value in payload.items() if value is not None}
    return {**flat, "event_id": str(record.get("event_id")), "payload": dumps(payload)}


class RedisSink(Sink):
    """XADDs each payload to ``stream`` (or ``{stream}:{user_id}``), capped near ``maxlen`` entries if > 0."""

    kind = "redis"
    OPTIONS = (batch_option(500), *RETRY_OPTIONS,
               Option("stream", text, "twinsim:events", "the stream key (the prefix with per_customer=1)"),
               Option("per_customer", flag, False, "1: one stream per customer, {stream}:{user_id}"),
               Option("maxlen", integer(0), 0, "cap each stream near this many entries (XADD MAXLEN ~); 0: no cap"),
               timeout_option(5.0, "one round trip"))
    EXAMPLE = "redis://127.0.0.1:6379/0?stream=twinsim:events"

    def __init__(self, url: str, name: str | None = None, template=None, *, stream: str = "twinsim:events",
                 per_customer: bool = False, maxlen: int = 0, timeout: float = 5.0, **options) -> None:
        self.redis = require("redis", "redis")
        self.url, self.stream, self.per_customer, self.maxlen, self.timeout = url, stream, per_customer, maxlen, timeout
        self.client = None
        super().__init__(redact(url), name, template, **options)

    def key(self, record: dict) -> str:
        return f"{self.stream}:{record.get('user_id')}" if self.per_customer else self.stream

    def open(self) -> None:
        self.client = self.redis.Redis.from_url(self.url, socket_timeout=self.timeout,
                                                socket_connect_timeout=self.timeout)
        self.client.ping()

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for record, payload in zip(records, payloads, strict=True):
            pipe.xadd(self.key(record), fields(record, payload), maxlen=self.maxlen or None, approximate=True)
        try:
            pipe.execute()
        except self.redis.ResponseError as exc:  # e.g. WRONGTYPE: the key is not a stream
            raise Permanent(f"redis rejected the batch: {exc}") from exc

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.close()
