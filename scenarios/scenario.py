"""Scenario files: what happens to the simulated population beyond its own behaviour.

A scenario is a TOML file (or the name of a built-in one in ``scenarios/builtin/``), checked against the
vocabulary of the model (or world) it runs on; ``docs/scenarios.md`` documents every field::

    name = "travel-card push"
    description = "Push a travel-card offer in the app to young customers at their next login."

    [cap]                             # per customer, across all campaigns: at most 1 exposure in any 7 days
    exposures = 1
    days = 7

    [[campaign]]
    name = "travel-push"
    start = "2026-01-08"              # first exposure day (UTC), inclusive; or a day number of the run: 7
    end = "2026-01-22"                # exclusive; or a day number: 21
    every_days = 7                    # one exposure opportunity per customer every 7 days inside the window
    reach = 0.6                       # share of the eligible customers reached (each customer's own draw)
    control = 0.1                     # share of the reached held out: assigned to "control", never exposed
    event_type = "offer_shown"        # the event the campaign imposes
    marks = { product = "travel_card", channel = "app" }
    at = "login"                      # a few seconds after the customer's first login of each period ...
    # hours = [9, 20]                 # ... or (without ``at``) at a uniform time in this UTC hour range
    budget = { total = 5000, per_day = 500 }      # exposures in all / per UTC day
    segment = { age_band = ["18-24", "25-34"] }   # categorical attributes; omit for everyone
    attributes = { tenure_months = [12, 120] }    # numeric attributes in [min, max)
    not_had = [{ event_type = "offer_purchase", product = "travel_card" }]   # never had such an event
    active_days = 30                  # had an event of their own in the last 30 days

    [[shock]]                         # the daily context column the model reads, on days [start, end)
    column = "macro_index"
    start = 30
    end = 90
    shift = -15.0                     # or: set = 85.0

``baseline`` is the scenario with no campaign. Campaigns act *through the model*: an exposure is an event
in the customer's history at the exposure time, and what the customer does next is drawn given it.
"""

from __future__ import annotations

import datetime
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.encoding import Schema
from twinsim.models.errors import TwinsimError
from twinsim.models.profile import is_profile

BUILTIN = Path(__file__).parent / "builtin"

# every key of each table, with the example its errors show
TOP_KEYS = {"name": 'name = "travel-card push"', "description": 'description = "Travel-card offer at login."',
            "campaign": '[[campaign]]\n  name = "push"\n  start = 7\n  end = 21\n  event_type = "offer_shown"',
            "cap": "[cap]\n  exposures = 1\n  days = 7",
            "shock": '[[shock]]\n  column = "macro_index"\n  start = 30\n  end = 90\n  shift = -15.0'}
CAMPAIGN_KEYS = {
    "name": 'name = "travel-push"',
    "start": 'start = "2026-01-08" (a UTC day) or start = 7 (a day number of the run, its first day being 0)',
    "end": 'end = "2026-01-22" or end = 21 (exclusive)',
    "event_type": 'event_type = "offer_shown"',
    "marks": 'marks = { product = "travel_card", channel = "app" }',
    "every_days": "every_days = 7",
    "reach": "reach = 0.6",
    "hours": "hours = [9, 20]",
    "at": 'at = "login"',
    "control": "control = 0.1",
    "budget": "budget = { total = 5000, per_day = 500 }",
    "segment": 'segment = { age_band = ["18-24", "25-34"] }',
    "attributes": "attributes = { tenure_months = [12, 120] } (or { tenure_months = { min = 12 } })",
    "not_had": 'not_had = [{ event_type = "offer_purchase", product = "travel_card" }]',
    "active_days": "active_days = 30",
}
BUDGET_KEYS = {"total": "budget = { total = 5000 } (exposures in all)",
               "per_day": "budget = { per_day = 500 } (exposures per UTC day)"}
CAP_KEYS = {"exposures": "exposures = 1", "days": "days = 7"}
SHOCK_KEYS = {"column": 'column = "macro_index"', "start": "start = 30 (a day number of the run) or a date",
              "end": 'end = 90 or end = "2026-04-01" (exclusive)', "shift": "shift = -15.0 (added to the column)",
              "set": "set = 85.0 (replaces the column)"}


@dataclass(frozen=True)
class Vocabulary:
    """What a scenario may name: the event types, mark values (without the empty slot), static attributes
    and daily context columns of a model or a world."""

    event_types: list[str]
    terminal_types: list[str]
    marks: dict[str, list[str]]
    categorical_attributes: dict[str, list[str]]
    numeric_attributes: list[str]
    context_columns: list[str]

    @classmethod
    def from_schema(cls, schema: Schema) -> Vocabulary:
        """A model's vocabulary (its activity-profile attributes are the model's own, not the customers')."""
        return cls(event_types=list(schema.event_types), terminal_types=list(schema.terminal_types),
                   marks={k: list(v[1:]) for k, v in schema.marks.items()},
                   categorical_attributes={k: list(v[1:]) for k, v in schema.categorical_attributes.items()},
                   numeric_attributes=[a for a in schema.numeric_attributes if not is_profile(a)],
                   context_columns=list(schema.context_columns))


@dataclass(frozen=True)
class Campaign:
    """An event shown to (a share of) the eligible customers, one opportunity every ``every_days`` within
    [start, end): at a uniform time within ``hours``, or with ``at`` a few seconds after the customer's first
    event of that type in the period (:meth:`periods`)."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    event_type: str
    marks: dict[str, str] = field(default_factory=dict)
    segment: dict[str, list[str]] = field(default_factory=dict)
    every_days: int = 7
    reach: float = 1.0
    hours: tuple[int, int] = (9, 20)
    at: str | None = None
    control: float = 0.0
    budget_total: int | None = None
    budget_per_day: int | None = None
    attributes: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    not_had: tuple[dict, ...] = ()
    active_days: int | None = None

    def exposure_days(self) -> list[pd.Timestamp]:
        return list(pd.date_range(self.start, self.end - pd.Timedelta(days=1), freq=f"{self.every_days}D"))

    def periods(self) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """[from, until) of each exposure day's opportunity: until the next exposure day or the campaign end."""
        days = self.exposure_days()
        return list(zip(days, [*days[1:], self.end], strict=True))

    @property
    def budgeted(self) -> bool:
        return self.budget_total is not None or self.budget_per_day is not None

    def to_json(self) -> dict:
        return {"name": self.name, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "event_type": self.event_type, "marks": self.marks, "segment": self.segment,
                "every_days": self.every_days, "reach": self.reach, "hours": list(self.hours), "at": self.at,
                "control": self.control, "budget_total": self.budget_total, "budget_per_day": self.budget_per_day,
                "attributes": {k: list(v) for k, v in self.attributes.items()}, "not_had": list(self.not_had),
                "active_days": self.active_days}


@dataclass(frozen=True)
class Cap:
    """Per customer, across all campaigns: at most ``exposures`` exposures in any ``days`` days."""

    exposures: int
    days: int

    def to_json(self) -> dict:
        return {"exposures": self.exposures, "days": self.days}


@dataclass(frozen=True)
class Shock:
    """The daily context column ``column`` on days [start, end): ``shift`` added to it, or ``set`` in its place."""

    column: str
    start: pd.Timestamp
    end: pd.Timestamp
    shift: float | None = None
    set: float | None = None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (of the column, on shocked days) as the shock makes them."""
        return np.full(len(values), self.set) if self.set is not None else values + self.shift

    def to_json(self) -> dict:
        return {"column": self.column, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "shift": self.shift, "set": self.set}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    campaigns: tuple[Campaign, ...] = ()
    source: str = ""
    cap: Cap | None = None
    shocks: tuple[Shock, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "campaigns": [c.to_json() for c in self.campaigns],
                "cap": None if self.cap is None else self.cap.to_json(), "shocks": [s.to_json() for s in self.shocks]}


def pro_rata(amount: int | None, first: int, count: int, population: int) -> int | None:
    """A cohort's share of ``amount``, the cohort being ``count`` users from population index ``first``: the
    shares of consecutive cohorts add up to ``amount`` exactly."""
    if amount is None:
        return None
    return amount * (first + count) // population - amount * first // population


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.toml"))


def load_scenario(spec: str | Path, vocabulary: Vocabulary | Schema, run_start: pd.Timestamp) -> Scenario:
    """The scenario in file ``spec``, or the built-in one of that name, checked against ``vocabulary`` (a
    :class:`Vocabulary`, or a model's schema); day numbers count from ``run_start`` (day 0)."""
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary.from_schema(vocabulary)
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
        raise TwinsimError(f"{path}: not valid TOML ({exc}); e.g.\n  {TOP_KEYS['campaign']}") from exc
    top = _Table(path, "top level", raw, TOP_KEYS)
    entries, shocks = top.array("campaign"), top.array("shock")
    campaigns = tuple(_campaign(_Table(path, f"[[campaign]] #{i + 1}{_named(e)}", e, CAMPAIGN_KEYS), vocab,
                                run_start) for i, e in enumerate(entries))
    names = [c.name for c in campaigns]
    if len(set(names)) != len(names):
        raise top.fail("campaign", f"campaign names must be unique (got {names}); rename the repeated ones")
    cap = None
    if "cap" in raw:
        table = _Table(path, "[cap]", top.table("cap"), CAP_KEYS)
        cap = Cap(exposures=table.integer("exposures", minimum=1), days=table.integer("days", minimum=1))
    return Scenario(name=top.string("name", path.stem), description=top.string("description", ""),
                    campaigns=campaigns, source=str(path), cap=cap,
                    shocks=tuple(_shock(_Table(path, f"[[shock]] #{i + 1}", e, SHOCK_KEYS), vocab, run_start)
                                 for i, e in enumerate(shocks)))


def _named(entry) -> str:
    """`` "name"`` of a campaign table, to label its errors (nothing if it has no usable name)."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return f' "{name}"' if isinstance(name, str) else ""


class _Table:
    """One table of a scenario file being read; its errors name the file, the table and the key, and show
    the key's example."""

    def __init__(self, path: Path, label: str, entry, examples: dict[str, str]) -> None:
        self.path, self.label, self.examples = path, label, examples
        if not isinstance(entry, dict):
            raise TwinsimError(f"{path}: {label}: must be a table of keys, got {entry!r}; e.g.\n  "
                               + "\n  ".join(examples.values()))
        unknown = sorted(set(entry) - set(examples))
        if unknown:
            raise TwinsimError(f"{path}: {label}: unknown key(s) {unknown}; allowed: {sorted(examples)} (check "
                               "the spelling; docs/scenarios.md lists every field)")
        self.entry = entry

    def fail(self, key: str, problem: str) -> TwinsimError:
        return TwinsimError(f"{self.path}: {self.label}: {key}: {problem}; e.g. {self.examples[key]}")

    def required(self, key: str):
        if key not in self.entry:
            raise self.fail(key, "is missing")
        return self.entry[key]

    def string(self, key: str, default: str | None = None) -> str:
        value = self.required(key) if default is None else self.entry.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(key, f"must be a non-empty string in quotes (got {value!r})")
        return value

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        value = self.required(key) if default is None else self.entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be a whole number of at least {minimum} (got {value!r})")
        return value

    def number(self, key: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number (got {value!r})")
        return float(value)

    def share(self, key: str, default: float, below_one: bool = False) -> float:
        value = self.number(key, self.entry.get(key, default))
        if not 0.0 <= value <= 1.0 or (below_one and value == 1.0):
            raise self.fail(key, f"must be a share in [0, 1{')' if below_one else ']'} (got {value})")
        return value

    def table(self, key: str, default: dict | None = None) -> dict:
        value = self.entry.get(key, {} if default is None else default)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table (got {value!r})")
        return value

    def array(self, key: str) -> list:
        value = self.entry.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of tables, written [[{key}]] (got a single table or value)")
        return value

    def day(self, key: str, run_start: pd.Timestamp) -> pd.Timestamp:
        """A UTC day: a date, or a day number of the run (``run_start`` being day 0)."""
        value = self.required(key)
        if isinstance(value, bool) or isinstance(value, float):
            raise self.fail(key, f"must be a date in quotes or a whole day number (got {value!r})")
        if isinstance(value, int):
            return run_start.normalize() + pd.Timedelta(days=value)
        if not isinstance(value, str | datetime.date):
            raise self.fail(key, f"must be a date or a day number (got {value!r})")
        try:
            t = pd.Timestamp(str(value))
        except ValueError as exc:
            raise self.fail(key, f"{value!r} is not a date ({exc})") from None
        t = t.tz_localize(None) if t.tzinfo is None else t.tz_convert("UTC").tz_localize(None)
        if t != t.normalize():
            raise self.fail(key, f"{value!r} is a time of day; give the day only, e.g. \"{t.date()}\"")
        return t

    def period(self, run_start: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
        start, end = self.day("start", run_start), self.day("end", run_start)
        if end <= start:
            raise self.fail("end", f"{end.date()} must come after start {start.date()} (end is exclusive)")
        return start, end


def _known(table: _Table, key: str, value, known: list[str], what: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) not in known:
        raise table.fail(key, f"{what} {value!r} is not in the vocabulary; known: {known}")
    return str(value)


def _event_marks(table: _Table, key: str, entry: dict, vocab: Vocabulary) -> dict[str, str]:
    """Mark values of a table (``marks``, or a ``not_had`` entry less its event_type)."""
    out = {}
    for name, value in entry.items():
        if name not in vocab.marks:
            raise table.fail(key, f"the vocabulary has no mark {name!r}; marks: {list(vocab.marks)}")
        out[name] = _known(table, key, value, vocab.marks[name], f"{name} =")
    return out


def _campaign(t: _Table, vocab: Vocabulary, run_start: pd.Timestamp) -> Campaign:
    name = t.string("name")
    start, end = t.period(run_start)
    event_type = _known(t, "event_type", t.required("event_type"), vocab.event_types, "event type")
    if event_type in vocab.terminal_types:
        raise t.fail("event_type", f"{event_type!r} is terminal: a campaign cannot end customers; use a "
                     f"non-terminal type of {[e for e in vocab.event_types if e not in vocab.terminal_types]}")
    marks = _event_marks(t, "marks", t.table("marks"), vocab)
    segment = {}
    for attribute, values in t.table("segment").items():
        if attribute not in vocab.categorical_attributes:
            raise t.fail("segment", f"{attribute!r} is not a categorical attribute; attributes: "
                         f"{list(vocab.categorical_attributes)} (numeric ones go in attributes = {{ ... }})")
        values = values if isinstance(values, list) else [values]
        segment[attribute] = [_known(t, "segment", v, vocab.categorical_attributes[attribute], f"{attribute} value")
                              for v in values]
    attributes = {attribute: _range(t, attribute, bounds, vocab) for attribute, bounds in t.table("attributes").items()}
    every_days, reach = t.integer("every_days", 7, minimum=1), t.share("reach", 1.0)
    at = None
    if "at" in t.entry:
        at = _known(t, "at", t.entry["at"], vocab.event_types, "event type")
        if at in vocab.terminal_types:
            raise t.fail("at", f"{at!r} is terminal: no customer is left to show anything to after it")
        if "hours" in t.entry:
            raise t.fail("hours", f"applies to scheduled exposures only; with at = {at!r} the exposure follows "
                         "the customer's event: drop hours, or drop at")
    hours = t.entry.get("hours", [9, 20])
    if (not isinstance(hours, list) or len(hours) != 2 or any(isinstance(h, bool) or not isinstance(h, int)
                                                              for h in hours) or not 0 <= hours[0] < hours[1] <= 24):
        raise t.fail("hours", f"must be [first, last) whole UTC hours within 0-24 (got {hours!r})")
    budget = _Table(t.path, f"{t.label} budget", t.table("budget"), BUDGET_KEYS)
    if "budget" in t.entry and not budget.entry:
        raise t.fail("budget", "is empty: give total and/or per_day")
    budget_total, budget_per_day = (budget.integer(k) if k in budget.entry else None for k in BUDGET_KEYS)
    not_had = []
    for entry in t.array("not_had"):
        if not isinstance(entry, dict) or not entry:
            raise t.fail("not_had", f"each entry is a table of event_type and/or marks (got {entry!r})")
        marks_of = {k: v for k, v in entry.items() if k != "event_type"}
        event = {"event_type": _known(t, "not_had", entry["event_type"], vocab.event_types, "event type")} \
            if "event_type" in entry else {}
        not_had.append({**event, **_event_marks(t, "not_had", marks_of, vocab)})
    active_days = t.integer("active_days", minimum=1) if "active_days" in t.entry else None
    return Campaign(name=name, start=start, end=end, event_type=event_type, marks=marks, segment=segment,
                    every_days=every_days, reach=reach, hours=tuple(hours), at=at,  # type: ignore[arg-type]
                    control=t.share("control", 0.0, below_one=True), budget_total=budget_total,
                    budget_per_day=budget_per_day, attributes=attributes, not_had=tuple(not_had),
                    active_days=active_days)


def _range(t: _Table, attribute: str, bounds, vocab: Vocabulary) -> tuple[float | None, float | None]:
    """[min, max) of a numeric attribute: ``[12, 120]`` or ``{ min = 12 }`` / ``{ max = 120 }``."""
    if attribute not in vocab.numeric_attributes:
        raise t.fail("attributes", f"{attribute!r} is not a numeric attribute; numeric attributes: "
                     f"{vocab.numeric_attributes} (categorical ones go in segment = {{ ... }})")
    if isinstance(bounds, dict) and bounds and set(bounds) <= {"min", "max"}:
        lo, hi = bounds.get("min"), bounds.get("max")
    elif isinstance(bounds, list) and len(bounds) == 2:
        lo, hi = bounds
    else:
        raise t.fail("attributes", f"{attribute} must be [min, max] or {{ min = ... }} / {{ max = ... }} "
                     f"(got {bounds!r})")
    lo, hi = (None if b is None else t.number("attributes", b) for b in (lo, hi))
    if lo is not None and hi is not None and hi <= lo:
        raise t.fail("attributes", f"{attribute}: max {hi} must be above min {lo} (the range is [min, max))")
    return lo, hi


def _shock(t: _Table, vocab: Vocabulary, run_start: pd.Timestamp) -> Shock:
    if not vocab.context_columns:
        raise t.fail("column", "the model reads no daily context (it was trained on a log without a context "
                     "table), so a shock has nothing to act on; train on a log with context.parquet (a reference "
                     "world has macro_index), or drop [[shock]]")
    column = _known(t, "column", t.required("column"), vocab.context_columns, "context column")
    start, end = t.period(run_start)
    if ("shift" in t.entry) == ("set" in t.entry):
        raise t.fail("shift", "give exactly one of shift (added to the column) and set (replaces it)")
    return Shock(column=column, start=start, end=end,
                 shift=t.number("shift", t.entry["shift"]) if "shift" in t.entry else None,
                 set=t.number("set", t.entry["set"]) if "set" in t.entry else None)
