"""Scenario files: what happens to the simulated population beyond its own behaviour.

A scenario is a TOML file (or the name of a built-in one in ``scenarios/builtin/``)::

    name = "travel-card push"
    description = "Push a travel-card offer in the app to young urban customers for two weeks."

    [[campaign]]
    name = "travel-push"
    start = "2026-01-08"              # first exposure day (UTC), inclusive; or a day number of the run: 7
    end = "2026-01-22"                # exclusive; or a day number: 21
    every_days = 7                    # one exposure per user every 7 days inside the window
    reach = 0.6                       # share of the segment exposed (each user's own draw)
    event_type = "offer_shown"        # the event the campaign imposes
    marks = { product = "travel_card", channel = "app" }
    segment = { age_band = ["18-25", "26-35"] }   # static attributes; omit for everyone
    hours = [9, 20]                   # exposures fall in this UTC hour range of the day

``baseline`` is the scenario with no campaign. Campaigns act *through the model*: an exposure is an event
in the user's history at the exposure time, and what the user does next is drawn from the model given it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from twinsim.models.encoding import Schema
from twinsim.models.errors import TwinsimError

BUILTIN = Path(__file__).parent / "builtin"
CAMPAIGN_KEYS = {"name", "start", "end", "every_days", "reach", "event_type", "marks", "segment", "hours"}
EXAMPLE = 'e.g.\n  [[campaign]]\n  name = "push"\n  start = "2026-01-08"\n  end = "2026-01-22"\n' \
          '  event_type = "offer_shown"\n  marks = { product = "travel_card", channel = "app" }'


@dataclass(frozen=True)
class Campaign:
    """An event pushed to (a share of) a segment, once every ``every_days`` within [start, end)."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    event_type: str
    marks: dict[str, str] = field(default_factory=dict)
    segment: dict[str, list[str]] = field(default_factory=dict)
    every_days: int = 7
    reach: float = 1.0
    hours: tuple[int, int] = (9, 20)

    def exposure_days(self) -> list[pd.Timestamp]:
        return list(pd.date_range(self.start, self.end - pd.Timedelta(days=1), freq=f"{self.every_days}D"))

    def to_json(self) -> dict:
        return {"name": self.name, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "event_type": self.event_type, "marks": self.marks, "segment": self.segment,
                "every_days": self.every_days, "reach": self.reach, "hours": list(self.hours)}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    campaigns: tuple[Campaign, ...] = ()
    source: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "campaigns": [c.to_json() for c in self.campaigns]}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.toml"))


def load_scenario(spec: str | Path, schema: Schema, run_start: pd.Timestamp) -> Scenario:
    """The scenario in file ``spec``, or the built-in one of that name, checked against the model's
    vocabulary (event types, marks, attributes); day numbers count from ``run_start`` (day 0)."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = BUILTIN / f"{spec}.toml"
        if not path.exists():
            raise TwinsimError(f"--scenario {spec}: no such file and no built-in scenario of that name; "
                               f"built-ins: {builtin_names()}, or give a path to a .toml file")
    if not path.is_file():
        raise TwinsimError(f"--scenario {spec}: no such file; give a TOML file or one of {builtin_names()}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TwinsimError(f"{path}: not valid TOML ({exc}); {EXAMPLE}") from exc
    unknown = set(raw) - {"name", "description", "campaign"}
    if unknown:
        raise TwinsimError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: name, description, "
                           "[[campaign]]")
    entries = raw.get("campaign", [])
    if not isinstance(entries, list):
        raise TwinsimError(f"{path}: 'campaign' must be an array of tables ([[campaign]]); {EXAMPLE}")
    campaigns = tuple(_campaign(path, i, entry, schema, run_start) for i, entry in enumerate(entries))
    names = [c.name for c in campaigns]
    if len(set(names)) != len(names):
        raise TwinsimError(f"{path}: campaign names must be unique (got {names})")
    return Scenario(name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")),
                    campaigns=campaigns, source=str(path))


def _when(value, run_start: pd.Timestamp) -> pd.Timestamp:
    """A date (UTC) or a day number of the run."""
    if isinstance(value, int) and not isinstance(value, bool):
        return run_start.normalize() + pd.Timedelta(days=value)
    t = pd.Timestamp(str(value))
    return t.tz_localize(None) if t.tzinfo is None else t.tz_convert("UTC").tz_localize(None)


def _campaign(path: Path, i: int, entry: dict, schema: Schema, run_start: pd.Timestamp) -> Campaign:
    where = f"{path}: [[campaign]] #{i + 1}"

    def fail(problem: str) -> TwinsimError:
        return TwinsimError(f"{where}: {problem}; {EXAMPLE}")

    unknown = set(entry) - CAMPAIGN_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}, allowed: {sorted(CAMPAIGN_KEYS)}")
    for key in ("name", "start", "end", "event_type"):
        if key not in entry:
            raise fail(f"'{key}' is missing")
    try:
        start, end = (_when(entry[k], run_start) for k in ("start", "end"))
    except ValueError as exc:
        raise fail(f"start/end must be dates like \"2026-01-08\" or day numbers of the run like 7 ({exc})") from exc
    if end <= start:
        raise fail(f"end {end.date()} must come after start {start.date()}")
    event_type = str(entry["event_type"])
    if event_type not in schema.event_types:
        raise fail(f"event_type {event_type!r} is not in the model's vocabulary {schema.event_types}")
    if event_type in schema.terminal_types:
        raise fail(f"event_type {event_type!r} is terminal: a campaign cannot end customers")
    marks = {str(k): str(v) for k, v in dict(entry.get("marks", {})).items()}
    for name, value in marks.items():
        if name not in schema.marks:
            raise fail(f"marks: the model has no mark {name!r}; marks: {list(schema.marks)}")
        if value not in schema.marks[name][1:]:
            raise fail(f"marks: {name} = {value!r} is not a known value; known: {schema.marks[name][1:]}")
    segment = {}
    for name, values in dict(entry.get("segment", {})).items():
        if name not in schema.categorical_attributes:
            raise fail(f"segment: {name!r} is not a categorical attribute of the model; "
                       f"attributes: {list(schema.categorical_attributes)}")
        values = [str(v) for v in (values if isinstance(values, list) else [values])]
        known = schema.categorical_attributes[name][1:]
        bad = [v for v in values if v not in known]
        if bad:
            raise fail(f"segment: {name} value(s) {bad} unknown; known: {known}")
        segment[name] = values
    every_days, reach = int(entry.get("every_days", 7)), float(entry.get("reach", 1.0))
    if every_days < 1:
        raise fail(f"every_days must be at least 1 (got {every_days})")
    if not 0.0 < reach <= 1.0:
        raise fail(f"reach must be in (0, 1] (got {reach})")
    hours = tuple(int(h) for h in entry.get("hours", (9, 20)))
    if len(hours) != 2 or not 0 <= hours[0] < hours[1] <= 24:
        raise fail(f"hours must be [first, last) within 0-24, e.g. [9, 20] (got {list(hours)})")
    return Campaign(name=str(entry["name"]), start=start, end=end, event_type=event_type, marks=marks,
                    segment=segment, every_days=every_days, reach=reach, hours=hours)  # type: ignore[arg-type]
