"""The event record the live engine hands a sink, its deterministic id, and the payload template.

A record is a dict: ``event_id``, ``user_id``, ``timestamp`` (ISO 8601 UTC, microseconds, ``Z``),
``event_type``, ``amount`` (float or None), mark columns (str or None: ``product``, ``channel``, ...) and
``scheduled_wall`` (``time.monotonic()`` when the engine scheduled it; used for lag, never in a payload).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from twinsim.models.errors import TwinsimError

CORE_COLUMNS = ("event_id", "user_id", "timestamp", "event_type", "amount")
MARK_COLUMNS = ("product", "channel", "merchant_category")
COLUMNS = CORE_COLUMNS + MARK_COLUMNS  # what a template may name unless the caller gives the model's columns
WALL = "scheduled_wall"
TEMPLATE_EXAMPLE = '{"id": "event_id", "customer": "user_id", "ts": "timestamp", "source": "=twinsim"}'


class SinkError(TwinsimError):
    """A sink spec, option or template that cannot work, or a target that cannot be reached."""


def event_id(seed: int, user_id: str, n: int) -> str:
    """The id of customer ``user_id``'s ``n``-th event in a run with ``seed``: ``"tw-"`` and 16 hex digits of
    the blake2b digest of ``"{seed}:{user_id}:{n}"``, e.g. ``event_id(7, "u42", 0) == "tw-…"``. The same
    (seed, customer, number) always gives the same id, so a re-run re-emits the same ids and sinks dedupe."""
    digest = hashlib.blake2b(f"{int(seed)}:{user_id}:{int(n)}".encode(), digest_size=8).hexdigest()
    return f"tw-{digest}"


def timestamp(moment: datetime) -> str:
    """``moment`` as a record's timestamp: UTC, microseconds, ``Z`` (a naive datetime is taken as UTC)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(value):
    """json.dumps' fallback: numpy scalars as Python numbers, datetimes as record timestamps, else str."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, datetime):
        return timestamp(value)
    return str(value)


def dumps(value) -> str:
    """Compact JSON of a payload; never fails (values JSON does not know travel as text)."""
    return json.dumps(value, default=_plain, separators=(",", ":"), ensure_ascii=False)


def load_template(source: str | Path | Mapping | None, columns: Iterable[str] | None = None) -> dict | None:
    """A payload template from a JSON string, a JSON file's path or a mapping (None: no template).

    Each value is a column name (of ``columns``, default :data:`COLUMNS`), a literal prefixed with ``=``
    (``"=twinsim"``) or a nested object of the same. An unknown column raises :class:`SinkError`.
    """
    if source is None:
        return None
    if isinstance(source, Mapping):
        template = dict(source)
    else:
        text, origin = str(source), "--template"
        if not text.lstrip().startswith("{"):
            try:
                text, origin = Path(text).read_text(), f"--template {source}"
            except OSError as exc:
                raise SinkError(f"--template {source}: cannot read it ({exc.strerror}); give a JSON file or a JSON "
                                f"object, e.g. --template '{TEMPLATE_EXAMPLE}'") from None
        try:
            template = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SinkError(f"{origin}: not valid JSON ({exc}); e.g. {TEMPLATE_EXAMPLE}") from None
        if not isinstance(template, dict):
            raise SinkError(f"{origin}: a template is a JSON object of field -> column, e.g. {TEMPLATE_EXAMPLE}")
    _check(template, tuple(COLUMNS if columns is None else columns), "")
    return template


def _check(template: Mapping, columns: tuple[str, ...], prefix: str) -> None:
    for field, value in template.items():
        where = f"{prefix}{field}"
        if isinstance(value, Mapping):
            _check(value, columns, where + ".")
        elif not isinstance(value, str):
            raise SinkError(f"template field {where!r}: {value!r} is neither a column name, a literal \"=text\" "
                            f"nor a nested object; e.g. {TEMPLATE_EXAMPLE}")
        elif not value.startswith("=") and value not in columns:
            raise SinkError(f"template field {where!r}: unknown column {value!r}; valid columns: "
                            f"{', '.join(columns)} (a literal string starts with '=', e.g. \"=twinsim\")")


def render(record: Mapping, template: Mapping | None) -> dict:
    """The payload of ``record``: every field but ``scheduled_wall`` without a template, else the template
    with each column name replaced by the record's value (None where the record lacks the column)."""
    if template is None:
        return {key: value for key, value in record.items() if key != WALL}
    out = {}
    for field, value in template.items():
        if isinstance(value, Mapping):
            out[field] = render(record, value)
        else:
            out[field] = value[1:] if value.startswith("=") else record.get(value)
    return out
