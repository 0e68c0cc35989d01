"""``http(s)://HOST:PORT/PATH``: a webhook; each batch is one POST of a JSON array of payloads.

Headers: ``Content-Type: application/json`` and ``X-Twinsim-Batch`` (a batch id derived from its event ids,
the same on every retry, so a receiver may dedupe whole batches). A 2xx answer acknowledges the batch;
timeouts, connection errors, 429 and 5xx are retried; any other status is permanent (dead letters now).
"""

from __future__ import annotations

import hashlib

import aiohttp

from twinsim.simulator.live.sinks.base import (
    RETRY_OPTIONS,
    AsyncSink,
    Permanent,
    Transient,
    batch_option,
    redact,
    timeout_option,
)
from twinsim.simulator.live.sinks.records import dumps


def batch_id(records: list[dict]) -> str:
    """16 hex digits of the blake2b digest of the batch's event ids."""
    digest = hashlib.blake2b(digest_size=8)
    for record in records:
        digest.update(f"{record.get('event_id')}\n".encode())
    return digest.hexdigest()


class WebhookSink(AsyncSink):
    """POSTs batches to ``url`` through one persistent aiohttp session, ``timeout`` seconds per request."""

    kind = "webhook"
    OPTIONS = (batch_option(100), *RETRY_OPTIONS, timeout_option(5.0, "one POST"))
    EXAMPLE = "http://127.0.0.1:8080/events?batch=100&retries=5"

    def __init__(self, url: str, name: str | None = None, template=None, *, timeout: float = 5.0, **options) -> None:
        self.url, self.timeout = url, timeout
        self.session: aiohttp.ClientSession | None = None
        super().__init__(redact(url), name, template, **options)

    async def aopen(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def adeliver(self, records: list[dict], payloads: list[dict]) -> None:
        headers = {"Content-Type": "application/json", "X-Twinsim-Batch": batch_id(records)}
        async with self.session.post(self.url, data=dumps(payloads).encode(), headers=headers) as response:
            if 200 <= response.status < 300:
                return
            reason = f"http {response.status}: {response.reason}"
            if response.status == 429 or response.status >= 500:
                raise Transient(reason)
            raise Permanent(reason)

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
