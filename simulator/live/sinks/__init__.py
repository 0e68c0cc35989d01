"""The sinks ``twinsim live`` emits into, named by SPEC strings (``--sink SPEC``; see ``docs/live.md``).

    sink = open_sink("postgresql://postgres@127.0.0.1:5432/test?table=twinsim_events")
    sink.write_bulk(history)          # PostgreSQL only: the backfill, before live emission
    sink.submit(records)              # never blocks; records as in records.py
    sink.flush(timeout=10); sink.stats(); sink.close()
    prometheus([sink])                # the /metrics text

Schemes: ``jsonl:``, ``http(s)://`` (webhook), ``postgresql://`` / ``postgres://``, ``redis://`` /
``rediss://`` (Streams), ``nats://`` (JetStream), ``function:MODULE:NAME``; :class:`CallableSink` takes a
callable directly. Options go in the query string; each sink's ``OPTIONS`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twinsim.simulator.live.sinks.base import Permanent, Sink, Transient, redact
from twinsim.simulator.live.sinks.function import CallableSink
from twinsim.simulator.live.sinks.jsonl import JsonlSink
from twinsim.simulator.live.sinks.metrics import prometheus
from twinsim.simulator.live.sinks.nats_js import NatsSink
from twinsim.simulator.live.sinks.postgres import PostgresSink
from twinsim.simulator.live.sinks.records import COLUMNS, SinkError, event_id, load_template, render, timestamp
from twinsim.simulator.live.sinks.redis_streams import RedisSink
from twinsim.simulator.live.sinks.webhook import WebhookSink

__all__ = ["COLUMNS", "CallableSink", "JsonlSink", "NatsSink", "Permanent", "PostgresSink", "RedisSink", "SCHEMES",
           "Sink", "SinkError", "SinkSpec", "Transient", "WebhookSink", "event_id", "load_template", "open_sink",
           "open_sinks", "parse_spec", "prometheus", "render", "timestamp"]

SCHEMES: dict[str, type[Sink]] = {
    "jsonl": JsonlSink, "http": WebhookSink, "https": WebhookSink, "postgresql": PostgresSink,
    "postgres": PostgresSink, "redis": RedisSink, "rediss": RedisSink, "nats": NatsSink, "function": CallableSink}
OPAQUE = ("jsonl", "function")  # SCHEME:REST, the rest a path or a reference rather than a URL


@dataclass(frozen=True)
class SinkSpec:
    """A parsed SPEC: the sink class, its target (the path, reference or URL without twinsim's options) and
    the options with defaults filled in."""

    spec: str
    cls: type[Sink]
    target: str
    options: dict


def _schemes() -> str:
    examples = "; ".join(dict.fromkeys(cls.EXAMPLE for cls in SCHEMES.values()))
    return f"schemes: {', '.join(sorted(SCHEMES))}; e.g. {examples}"


def parse_spec(spec: str) -> SinkSpec:
    """Split a SPEC into its sink class, target and typed options; :class:`SinkError` if it cannot work."""
    spec = str(spec)
    shown = redact(spec)
    scheme = urlsplit(spec).scheme.lower() if ":" in spec else ""
    cls = SCHEMES.get(scheme)
    if cls is None:
        raise SinkError(f"--sink {shown!r}: unknown sink scheme {scheme or '(none)'!r}; {_schemes()}")
    base, _, query = spec.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SinkError(f"--sink {shown!r}: the options after '?' are not name=value pairs joined by '&'; "
                        f"e.g. --sink {cls.EXAMPLE}") from None
    known = {option.name: option for option in cls.OPTIONS}
    passthrough = getattr(cls, "PASSTHROUGH", ())
    options, kept = {option.name: option.default for option in cls.OPTIONS}, []
    for key, value in pairs:
        if key in passthrough:
            kept.append((key, value))
            continue
        if key not in known:
            allowed = ", ".join([*known, *passthrough])
            raise SinkError(f"--sink {shown!r}: unknown option {key!r} of the {cls.kind} sink; its options: "
                            f"{allowed}; e.g. --sink {cls.EXAMPLE}")
        try:
            options[key] = known[key].parse(value)
        except ValueError as exc:
            raise SinkError(f"--sink {shown!r}: option {key}={value!r} must be {exc} ({known[key].help}); "
                            f"e.g. --sink {cls.EXAMPLE}") from None
    if scheme in OPAQUE:
        target = base.split(":", 1)[1]
        if not target:
            raise SinkError(f"--sink {shown!r}: nothing after '{scheme}:'; e.g. --sink {cls.EXAMPLE}")
    else:
        target = _url(base, kept, scheme, shown, cls)
    return SinkSpec(spec, cls, target, options)


def _url(base: str, kept: list, scheme: str, shown: str, cls: type[Sink]) -> str:
    parts = urlsplit(base)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise SinkError(f"--sink {shown!r}: the port is not a number from 1 to 65535; e.g. --sink {cls.EXAMPLE}"
                        ) from None
    if not parts.hostname and scheme not in ("postgresql", "postgres"):  # libpq alone has a default (the socket)
        raise SinkError(f"--sink {shown!r}: no host; e.g. --sink {cls.EXAMPLE}")
    return urlunsplit(parts._replace(query=urlencode(kept)))


def open_sink(spec: str, template: str | Path | Mapping | None = None, name: str | None = None,
              columns: Iterable[str] | None = None) -> Sink:
    """Open the sink a SPEC names, with an optional payload template (a mapping, JSON text or a JSON file;
    its column names checked against ``columns``, default :data:`COLUMNS`) and a name for its counters
    (default: its kind). Connects before it returns; :class:`SinkError` if it cannot."""
    parsed = parse_spec(spec)
    return parsed.cls(parsed.target, name=name, template=load_template(template, columns), **parsed.options)


def open_sinks(specs: Iterable[str], template: str | Path | Mapping | None = None,
               columns: Iterable[str] | None = None) -> list[Sink]:
    """:func:`open_sink` for each SPEC, named by kind (``postgres``, a second one ``postgres-2``); closes
    those already open if one fails."""
    template = load_template(template, columns)
    sinks: list[Sink] = []
    counts: dict[str, int] = {}
    try:
        for spec in specs:
            parsed = parse_spec(spec)
            counts[parsed.cls.kind] = counts.get(parsed.cls.kind, 0) + 1
            name = parsed.cls.kind if counts[parsed.cls.kind] == 1 else f"{parsed.cls.kind}-{counts[parsed.cls.kind]}"
            sinks.append(parsed.cls(parsed.target, name=name, template=template, **parsed.options))
    except BaseException:
        for sink in sinks:
            sink.close(timeout=5)
        raise
    return sinks
