"""``jsonl:-`` (stdout) or ``jsonl:PATH``: one JSON payload per line, appended, flushed per batch."""

from __future__ import annotations

import sys
from pathlib import Path

from twinsim.simulator.live.sinks.base import RETRY_OPTIONS, Sink, batch_option
from twinsim.simulator.live.sinks.records import dumps


class JsonlSink(Sink):
    """Appends each payload as a line to ``path`` (``"-"``: standard output)."""

    kind = "jsonl"
    OPTIONS = (batch_option(1000), *RETRY_OPTIONS)
    EXAMPLE = "jsonl:events.jsonl"

    def __init__(self, path: str | Path, name: str | None = None, template=None, **options) -> None:
        self.path = None if str(path) == "-" else Path(path)
        self._out = None
        super().__init__(f"jsonl:{path}", name, template, **options)

    def open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("a", encoding="utf-8")

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        out = sys.stdout if self._out is None else self._out  # looked up each time: stdout may be replaced
        out.write("".join(dumps(payload) + "\n" for payload in payloads))
        out.flush()

    def shutdown(self) -> None:
        if self._out is not None:
            self._out.close()
