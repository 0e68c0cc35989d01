"""The sinks' counters in the Prometheus text exposition format (what ``/metrics`` serves).

Per sink (label ``sink``): ``twinsim_sink_{emitted,acknowledged,retried,failed}_total`` (counters, records),
``twinsim_sink_pending`` and ``twinsim_sink_in_flight`` (gauges), ``twinsim_sink_lag_seconds`` (a summary:
quantiles 0.5 and 0.99 over the recent window, ``_sum`` and ``_count`` since the start) and
``twinsim_sink_lag_seconds_max`` (gauge, the recent window). ``extra`` adds gauges such as the engine's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from twinsim.simulator.live.sinks.base import Sink
from twinsim.simulator.live.sinks.records import SinkError

COUNTERS = (("emitted", "Records submitted to the sink."),
            ("acknowledged", "Records the target confirmed."),
            ("retried", "Records re-sent after a failed attempt."),
            ("failed", "Records given up on (written to the dead-letter file)."))
GAUGES = (("pending", "Records queued, not yet taken for delivery."),
          ("in_flight", "Records in the batch being delivered."))
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _label(value: str) -> str:
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _number(value) -> str:
    if value is None:
        return "NaN"
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, object]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]


def prometheus(sinks: Iterable[Sink], extra: Mapping[str, float] | None = None) -> str:
    """The text exposition of ``sinks``' counters, plus a gauge per ``extra`` item (name -> number; a name
    without the ``twinsim_`` prefix gets ``twinsim_live_``), ending in a newline."""
    stats = [sink.stats() for sink in sinks]
    lines: list[str] = []

    def per_sink(key: str, quantile: str | None = None) -> list[tuple[str, object]]:
        more = "" if quantile is None else f',quantile="{quantile}"'
        return [(f'{{sink="{_label(s["sink"])}"{more}}}', s[key]) for s in stats]

    for key, help_text in COUNTERS:
        _family(lines, f"twinsim_sink_{key}_total", "counter", help_text, per_sink(key))
    for key, help_text in GAUGES:
        _family(lines, f"twinsim_sink_{key}", "gauge", help_text, per_sink(key))
    _family(lines, "twinsim_sink_lag_seconds", "summary",
            "Seconds from an event's scheduled emission to its acknowledgement (quantiles: recent window).",
            [*per_sink("lag_p50_s", "0.5"), *per_sink("lag_p99_s", "0.99")])
    lines += [f"twinsim_sink_lag_seconds_sum{labels} {_number(v)}" for labels, v in per_sink("lag_sum_s")]
    lines += [f"twinsim_sink_lag_seconds_count{labels} {_number(v)}" for labels, v in per_sink("lag_count")]
    _family(lines, "twinsim_sink_lag_seconds_max", "gauge", "The largest lag in the recent window, seconds.",
            per_sink("lag_max_s"))
    for key, value in (extra or {}).items():
        name = key if key.startswith("twinsim_") else f"twinsim_live_{key}"
        if not NAME.fullmatch(name):
            raise SinkError(f"prometheus extra {key!r}: not a metric name (letters, digits, _ and :), e.g. users")
        _family(lines, name, "gauge", f"twinsim live: {key}.", [("", value)])
    return "\n".join(lines) + "\n"
