"""Events -> per-user token sequences, and the schema that makes the mapping reversible.

One token per event: event type, categorical marks, log inter-event time, amount (log, standardised
per type), calendar of the absolute time (hour, weekday, day of month, month, days to month end) and the
exogenous context of that day (e.g. a macro index). Static user attributes condition the sequence.
The :class:`Schema` is saved with a model as JSON; :func:`encode` applies it to any log.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from twinsim.models import kernels
from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import AMOUNT, EventLog, TimeResolution, utc_seconds
from twinsim.models.profile import is_profile, profiled

NONE = "<none>"  # index 0 of every categorical vocabulary: empty mark or missing attribute
MIN_GAP_HOURS = 1.0 / 3600.0  # gaps are floored at one second before taking logs
CALENDAR_SIZES = (24, 7, 32, 13, 31)  # hour, weekday, day of month, month, days to month end
CALENDAR_NAMES = ("hour", "weekday", "day_of_month", "month", "days_to_month_end")
CALENDAR_CYCLES = {"hour": 24, "weekday": 7, "month": 12}  # 23:00 is next to 00:00, December to January
RECENT_DAYS = 14.0  # time scale of the decayed counts: "how much of this lately" (a salary cycle, offer fatigue)
# The memory channel (``memory_inputs``): per amount type, the latest amount and a decayed sum of amounts
# (what came in and went out lately: a salary stays one salary, a balance that runs low shows); per event
# type, a slowly decayed count (how active this customer is this quarter, long after the window forgot); per
# amount type, the days between its latest two amounts (a fortnightly salary is not a monthly one) and the
# median of its latest three such periods (one odd gap does not make a fortnightly customer monthly); per
# event type, the weekly rate since the customer's first event, and how long ago that was (how active this
# customer is for good: a year-long rollout must not drift every customer towards the average one).
MEMORY_SUM_DAYS = 30.0
MEMORY_COUNT_DAYS = 91.0
NEVER = -1.0e4  # "last occurrence" of something that has not happened yet, in days before the window start
SPLITS = ("train", "validation", "holdout")


@dataclass
class Schema:
    """Vocabularies and normalisation learned from the training log."""

    event_types: list[str]
    terminal_types: list[str]
    marks: dict[str, list[str]]
    amount_types: list[str]
    amount_log_mean: dict[str, float]
    amount_log_std: dict[str, float]
    categorical_attributes: dict[str, list[str]]
    numeric_attributes: dict[str, tuple[float, float]]  # name -> (mean, std)
    context_columns: list[str]
    context_mean: list[float]
    context_std: list[float]
    window_start: str  # ISO UTC; the observation window [start, end)
    window_end: str
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # (event type code, mark index, value code) combinations that get a recency feature of their own
    recency_pairs: list[list[int]] = field(default_factory=list)
    # The log's time resolution (event_log.detect_resolution): "second", or "day" for a log of dates, every
    # event at ``time_of_day_s`` seconds after UTC midnight; generated events are snapped to it (events_frame).
    time_resolution: str = "second"
    time_of_day_s: float = 0.0
    # Calendar inputs (CALENDAR_NAMES) the model does not read: held at one value in training and sampling
    # (``twinsim train --calendar-off month``: in a log of one year the month is also the time since it began)
    calendar_off: list[str] = field(default_factory=list)
    version: int = 2

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Schema:
        data = dict(data)
        data["numeric_attributes"] = {k: tuple(v) for k, v in data["numeric_attributes"].items()}
        data["split_fractions"] = tuple(data["split_fractions"])
        return cls(**data)

    @property
    def resolution(self) -> TimeResolution:
        return TimeResolution(self.time_resolution, self.time_of_day_s)

    @cached_property
    def calendar_seen(self) -> dict[str, list[int]]:
        """The values of each calendar input (``CALENDAR_NAMES``) that the training window held: the only ones
        the model learned anything for (written to model.json)."""
        hours = np.arange(np.floor(self.window_start_s / 3600.0), np.ceil(self.window_end_s / 3600.0)) * 3600.0
        cal = kernels.calendar(hours)
        # an input held off reads as its value at the window's start (the BOS token's, in training too)
        return {name: [int(cal[0, j])] if name in self.calendar_off else np.unique(cal[:, j]).tolist()
                for j, name in enumerate(CALENDAR_NAMES)}

    @cached_property
    def _calendar_lookup(self) -> np.ndarray:
        """(5, 32): each calendar value -> the nearest value the window held (cyclically for the hour,
        weekday and month), the identity for values it held."""
        lookup = np.zeros((len(CALENDAR_NAMES), max(CALENDAR_SIZES)), dtype=np.int64)
        for j, (name, size) in enumerate(zip(CALENDAR_NAMES, CALENDAR_SIZES, strict=True)):
            seen, values = np.array(self.calendar_seen[name]), np.arange(size)
            distance = np.abs(values[:, None] - seen[None, :])
            if name in CALENDAR_CYCLES:
                distance = np.minimum(distance, CALENDAR_CYCLES[name] - distance)
            lookup[j, :size] = seen[distance.argmin(axis=1)]
        return lookup

    def calendar(self, time_s: np.ndarray) -> np.ndarray:
        """``kernels.calendar`` of epoch seconds, as the model may read it: a value the training window never
        held (January for a model trained on June to December) becomes the nearest one it held, so a period
        the model never saw is not driven by an embedding training never moved."""
        cal = kernels.calendar(np.ascontiguousarray(time_s, dtype=np.float64))
        return self._calendar_lookup[np.arange(cal.shape[1]), cal]

    @property
    def window_start_s(self) -> float:
        return pd.Timestamp(self.window_start).timestamp()

    @property
    def window_end_s(self) -> float:
        return pd.Timestamp(self.window_end).timestamp()

    @property
    def terminal_codes(self) -> list[int]:
        return [self.event_types.index(t) for t in self.terminal_types]

    @property
    def amount_slots(self) -> np.ndarray:
        """Per event type, its index among the amount types (-1 if it carries none)."""
        slots = np.full(len(self.event_types), -1, dtype=np.int64)
        slots[self.amount_codes] = np.arange(len(self.amount_codes))
        return slots

    @property
    def memory_size(self) -> int:
        """Inputs of the memory channel (``memory_inputs``)."""
        return 4 * len(self.amount_types) + 2 * len(self.event_types) + 1

    @property
    def memory_state_size(self) -> int:
        """Raw memory kept per user by ``kernels.remember``."""
        return kernels.memory_state_size(len(self.amount_types), len(self.event_types))

    @property
    def amount_codes(self) -> list[int]:
        return [self.event_types.index(t) for t in self.amount_types]

    @property
    def recency_size(self) -> int:
        """One recency column per event type, per mark value and per (type, mark value) pair in
        ``recency_pairs`` (see :func:`last_occurrence`)."""
        return len(self.event_types) + sum(len(v) - 1 for v in self.marks.values()) + len(self.recency_pairs)

    def recency_keys(self, event_type: np.ndarray, marks: np.ndarray) -> list[np.ndarray]:
        """For each group of recency columns, the column each event sets (-1 where none): the event's type,
        then each mark's value, then for each mark the (type, value) pair."""
        keys = [event_type]
        start = len(self.event_types)
        for j, vocab in enumerate(self.marks.values()):
            keys.append(np.where(marks[:, j] > 0, start + marks[:, j] - 1, -1))
            start += len(vocab) - 1
        for j, lookup in enumerate(self._pair_columns):
            keys.append(lookup[event_type, marks[:, j]])
        return keys

    @cached_property
    def _pair_columns(self) -> list[np.ndarray]:
        """Per mark, a (types, values) table of the pairs' recency columns (-1 elsewhere)."""
        start = len(self.event_types) + sum(len(v) - 1 for v in self.marks.values())
        tables = [np.full((len(self.event_types), len(v)), -1, np.int64) for v in self.marks.values()]
        for i, (t, j, v) in enumerate(self.recency_pairs):
            tables[j][t, v] = start + i
        return tables


@dataclass
class EncodedLog:
    """Flat per-event arrays (users contiguous, sorted by time) with ``offsets`` into them."""

    user_ids: np.ndarray  # (users,) str
    offsets: np.ndarray  # (users + 1,) int64
    event_type: np.ndarray  # (events,) int64
    marks: np.ndarray  # (events, marks) int64, 0 = none
    time_s: np.ndarray  # (events,) float64 epoch seconds
    log_gap: np.ndarray  # (events,) float32 log hours since the previous event (or the window start)
    amount: np.ndarray  # (events,) float64 raw amount, NaN where none
    amount_z: np.ndarray  # (events,) float32 standardised log1p(amount), 0 where none
    calendar: np.ndarray  # (events, 5) int64
    context: np.ndarray  # (events, context columns) float32, standardised
    last_days: np.ndarray  # (events, recency size) float32: when each type / mark value last occurred
    recent: np.ndarray  # (events, recency size) float32: decayed counts of each, just after the event
    memory: np.ndarray  # (events, memory size) float32: ``memory_inputs`` just after the event
    static_cat: np.ndarray  # (users, categorical attributes) int64
    static_num: np.ndarray  # (users, numeric attributes) float32, standardised
    window_end_s: float = 0.0

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, mask: np.ndarray) -> EncodedLog:
        """The users where ``mask`` is true (events stay contiguous)."""
        users = np.flatnonzero(mask)
        offsets, index = user_rows(self.offsets, users)
        per_event = ("event_type", "marks", "time_s", "log_gap", "amount", "amount_z", "calendar", "context",
                     "last_days", "recent", "memory")
        return EncodedLog(
            user_ids=self.user_ids[users],
            offsets=offsets,
            **{name: getattr(self, name)[index] for name in per_event},
            static_cat=self.static_cat[users],
            static_num=self.static_num[users],
            window_end_s=self.window_end_s,
        )


# ------------------------------------------------------------------------------------------- schema
def fit_schema(log: EventLog, split_seed: int = 0, terminal: list[str] | None = None,
               calendar_off: list[str] | None = None) -> Schema:
    """Learn vocabularies, normalisation and the observation window from a validated log; ``calendar_off``:
    calendar inputs the model is not to read (names of ``CALENDAR_NAMES``)."""
    unknown = sorted(set(calendar_off or ()) - set(CALENDAR_NAMES))
    if unknown:
        raise TwinsimError(f"--calendar-off {','.join(unknown)}: not a calendar input; they are "
                           f"{', '.join(CALENDAR_NAMES)}; e.g. --calendar-off month")
    ev = log.events
    types = sorted(map(str, ev["event_type"].cat.categories[ev["event_type"].cat.codes.unique()]))
    terminal = detect_terminal_types(ev) if terminal is None else terminal
    unknown = [t for t in terminal if t not in types]
    if unknown:
        raise TwinsimError(f"--terminal names event type(s) {unknown} that do not occur; known types: {types}")
    log_amounts = {t: np.log1p(np.abs(ev.loc[ev["event_type"] == t, AMOUNT].to_numpy())) for t in log.amount_types}
    users = log.users
    categorical, numeric = {}, {}
    for name in log.attributes:
        values = users[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numeric[name] = normalisation(values)
        else:
            categorical[name] = [NONE, *sorted(map(str, values.dropna().unique()))]
    context_columns, context_mean, context_std = [], [], []
    if log.context is not None:
        for column in log.context.columns.drop("date"):
            context_columns.append(column)
            context_mean.append(float(log.context[column].mean()))
            context_std.append(float(log.context[column].std() or 1.0))
    start, end = observation_window(ev["timestamp"])
    marks = {m: [NONE, *sorted(map(str, ev[m].dropna().unique()))] for m in log.marks}
    return Schema(
        event_types=types,
        terminal_types=sorted(terminal),
        marks=marks,
        amount_types=list(log.amount_types),
        amount_log_mean={t: float(a.mean()) for t, a in log_amounts.items()},
        amount_log_std={t: float(a.std() or 1.0) for t, a in log_amounts.items()},
        categorical_attributes=categorical,
        numeric_attributes=numeric,
        context_columns=context_columns,
        context_mean=context_mean,
        context_std=context_std,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        split_seed=split_seed,
        recency_pairs=recency_pairs(ev, types, marks),
        time_resolution=log.resolution.unit,
        time_of_day_s=log.resolution.time_of_day_s,
        calendar_off=sorted(calendar_off or []),
    )


def normalisation(values: pd.Series) -> tuple[float, float]:
    """(mean, standard deviation, 1 where it is 0) that standardise a numeric attribute."""
    return float(values.mean()), float(values.std() or 1.0)


def observation_window(timestamps: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end): from the day of the first timestamp to the end of the day of the last."""
    return timestamps.min().floor("D"), timestamps.max().floor("D") + pd.Timedelta(days=1)


def recency_pairs(events: pd.DataFrame, types: list[str], marks: dict[str, list[str]],
                  min_count: int = 20) -> list[list[int]]:
    """The (type, mark value) combinations seen at least ``min_count`` times in a type that shows more
    than one value of that mark: "days since the last *mortgage inquiry*" rather than since anything
    about mortgages (offers shown included) or any inquiry. This is what life-stage chains key on."""
    pairs = []
    for j, (name, vocab) in enumerate(marks.items()):
        counts = events.groupby([events["event_type"].astype(str), events[name].astype(str)], observed=True).size()
        for t, type_name in enumerate(types):
            if type_name not in counts.index.get_level_values(0):
                continue
            values = counts.loc[type_name]
            values = values[values.index.isin(vocab[1:]) & (values >= min_count)]
            if len(values) > 1:
                pairs += [[t, j, vocab.index(v)] for v in sorted(values.index)]
    return pairs


def detect_terminal_types(events: pd.DataFrame, min_count: int = 5) -> list[str]:
    """Event types that occur at least ``min_count`` times and are always their user's last event. None when
    every user has a single event (one purchase each): then every type is "always last", which says nothing
    about churn, and a model told so would end every customer at their first event."""
    last = ~events["user_id"].duplicated(keep="last")
    if last.all():
        return []
    counts = events.groupby("event_type", observed=True).size()
    always_last = events.groupby("event_type", observed=True)["user_id"].size() == \
        events[last].groupby("event_type", observed=True).size().reindex(counts.index, fill_value=0)
    return sorted(str(t) for t in counts.index if always_last[t] and counts[t] >= min_count)


def split_of(user_ids: np.ndarray, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Deterministic per-user split (0 train, 1 validation, 2 holdout) from a hash of (seed, user id)."""
    u = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest(), "little")
                  for uid in user_ids], dtype=np.float64) / 2.0**64
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, u, side="right")


# ------------------------------------------------------------------------------------------- encode
def encode(log: EventLog, schema: Schema) -> EncodedLog:
    """Apply ``schema`` to a validated log. Unknown categories map to ``<none>``. A log without the activity
    profile columns the schema has (``models/profile.py``) gets them from its events over the schema's window."""
    if any(is_profile(n) and (log.users is None or n not in log.users) for n in schema.numeric_attributes):
        log = profiled(log, schema, schema.window_start_s, schema.window_end_s)
    ev = log.events
    user_codes, user_ids = pd.factorize(ev["user_id"], sort=False)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_codes, minlength=len(user_ids)))]).astype(np.int64)
    type_index = {t: i for i, t in enumerate(schema.event_types)}
    unknown = sorted(set(map(str, ev["event_type"].unique())) - set(type_index))
    if unknown:
        raise TwinsimError(f"event type(s) {unknown} are not in the model's vocabulary {schema.event_types}; "
                           "retrain on data that has them, or drop those events")
    event_type = _codes(ev["event_type"], schema.event_types)
    marks = np.zeros((len(ev), len(schema.marks)), dtype=np.int64)
    for j, (name, vocab) in enumerate(schema.marks.items()):
        if name in ev:
            marks[:, j] = _codes(ev[name], vocab)
    time_s = utc_seconds(ev["timestamp"])
    previous = np.empty_like(time_s)
    previous[1:] = time_s[:-1]
    previous[offsets[:-1]] = schema.window_start_s  # a user's first gap runs from the window start
    gap_h = np.maximum((time_s - previous) / 3600.0, MIN_GAP_HOURS)
    amount = ev[AMOUNT].to_numpy(dtype=np.float64) if AMOUNT in ev else np.full(len(ev), np.nan)
    amount_z = np.zeros(len(ev), dtype=np.float32)
    for t in schema.amount_types:
        rows = (event_type == type_index[t]) & ~np.isnan(amount)
        amount_z[rows] = (np.log1p(np.abs(amount[rows])) - schema.amount_log_mean[t]) / schema.amount_log_std[t]
    static_cat, static_num = static_arrays(_user_rows(log, user_ids), schema)
    keys = schema.recency_keys(event_type, marks)
    days = (time_s - schema.window_start_s) / 86400.0
    return EncodedLog(
        user_ids=np.asarray(user_ids, dtype=object),
        offsets=offsets,
        event_type=event_type,
        marks=marks,
        time_s=time_s,
        log_gap=np.log(gap_h).astype(np.float32),
        amount=amount,
        amount_z=amount_z,
        calendar=schema.calendar(time_s),  # (the training window's own values, but for the inputs held off)
        context=context_at(time_s, log.context, schema),
        last_days=last_occurrence(schema.recency_size, keys, days, offsets),
        recent=kernels.decayed_counts(np.stack(keys, axis=1), days, offsets, schema.recency_size, RECENT_DAYS),
        memory=memory_inputs(kernels.memory_of_log(event_type, amount, amount_z, days, offsets, schema.amount_slots,
                                                   len(schema.amount_types), len(schema.event_types),
                                                   MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS), len(schema.amount_types)),
        static_cat=static_cat,
        static_num=static_num,
        window_end_s=schema.window_end_s,
    )


def user_rows(offsets: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For flat per-event arrays with per-user ``offsets``: (offsets, event index) of ``users``, in that order."""
    counts = np.diff(offsets)[users]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.repeat(offsets[users], counts) + within


def memory_inputs(state: np.ndarray, n_amount: int) -> np.ndarray:
    """The memory channel's inputs from raw memory ``state`` (rows, ``kernels.memory_state_size``) kept by
    ``kernels.remember``: the latest standardised amount per amount type (0 before the first), then log(1 +
    decayed sum of amounts) per amount type, log(1 + decayed count) per event type, and per amount type
    log(1 + days between the latest two amounts) and log(1 + the median of the latest MEMORY_PERIODS such
    periods, of those there are yet; 0 before the second amount); then per event type log(1 + its weekly
    rate since the first event, over at least a week) and log(1 + days since the first event). float32."""
    a, k = n_amount, kernels.MEMORY_PERIODS
    n_types = kernels.memory_types(state.shape[1], a)
    counts_end = 2 * a + n_types
    periods = state[:, counts_end + a:counts_end + (1 + k) * a].reshape(len(state), k, a)
    lifetime, elapsed = state[:, -1 - n_types:-1], state[:, -1:]
    rate = 7.0 * lifetime / np.maximum(elapsed, 7.0)
    return np.concatenate([state[:, :a], np.log1p(state[:, a:counts_end]), np.log1p(periods[:, 0]),
                           np.log1p(median_period(periods)), np.log1p(rate),
                           np.log1p(np.maximum(elapsed - 1.0, 0.0))], axis=1).astype(np.float32)


def median_period(periods: np.ndarray) -> np.ndarray:
    """(rows, a): the median of the non-zero entries of ``periods`` (rows, k, a), 0 where all are zero."""
    k = periods.shape[1]
    ordered = np.sort(periods, axis=1)  # the zeros ("not yet") first
    n = (periods > 0).sum(axis=1, keepdims=True)
    lo, hi = np.clip(k - n + (n - 1) // 2, 0, k - 1), np.clip(k - n + n // 2, 0, k - 1)
    median = 0.5 * (np.take_along_axis(ordered, lo, 1) + np.take_along_axis(ordered, hi, 1))[:, 0]
    return np.where(n[:, 0] > 0, median, 0.0)


def last_occurrence(size: int, keys: list[np.ndarray], days: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(events, size): for every event, the time (days since the window start) at which each recency column
    (``keys`` from :meth:`Schema.recency_keys`) was last set for the same user, this event included;
    NEVER if not yet.

    These are the model's long memory: "days since the last income" makes paydays, "days since the last
    mortgage inquiry" makes life-stage chains, whatever the attention window holds."""
    n = len(days)
    out = np.full((n, size), NEVER, dtype=np.float32)
    user_start = np.repeat(offsets[:-1], np.diff(offsets))
    position = np.arange(n)
    for key in keys:
        for column in np.unique(key[key >= 0]):
            last = np.maximum.accumulate(np.where(key == column, position, -1))
            seen = last >= user_start
            out[seen, column] = days[last[seen]]
    return out


def static_arrays(users: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """(categorical codes, standardised numerics) of the static attributes, one row per user of ``users``;
    missing values become ``<none>`` and the mean."""
    cat = np.stack([_codes(users[n], v) for n, v in schema.categorical_attributes.items()], axis=1) \
        if schema.categorical_attributes else np.zeros((len(users), 0), np.int64)
    num = np.stack([((users[n].astype(float) - m) / s).fillna(0.0).to_numpy(np.float32)
                    for n, (m, s) in schema.numeric_attributes.items()], axis=1) \
        if schema.numeric_attributes else np.zeros((len(users), 0), np.float32)
    return cat, num


def _codes(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """Vocabulary index of each value (0 for missing or unknown), computed once per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    index = {v: i for i, v in enumerate(vocab)}
    lookup = np.array([index.get(str(u), 0) for u in uniques] + [0], dtype=np.int64)
    return lookup[codes]


def _user_rows(log: EventLog, user_ids) -> pd.DataFrame:
    if log.users is None:
        return pd.DataFrame(index=pd.Index(user_ids, name="user_id"))
    return log.users.set_index("user_id").reindex(pd.Index(user_ids, name="user_id"))


def context_at(time_s: np.ndarray, context: pd.DataFrame | None, schema: Schema) -> np.ndarray:
    """Standardised context of each time's UTC day. A day the table does not cover holds the value of the
    latest day before it that it does (the first day's, before the table begins): past the end of a model's
    table the macro index stays where it was last seen, rather than jumping to the table's mean, which would
    read as a downturn of the table's average depth. A scenario sets other values (docs/simulate.md)."""
    out = np.zeros((len(time_s), len(schema.context_columns)), dtype=np.float32)
    if context is None or not schema.context_columns or not len(context):
        return out
    days = np.floor(time_s / 86400).astype(np.int64)
    table_days = context["date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    pos = np.clip(np.searchsorted(table_days, days, side="right") - 1, 0, len(table_days) - 1)
    for j, (name, mean, std) in enumerate(zip(schema.context_columns, schema.context_mean, schema.context_std,
                                              strict=True)):
        if name in context:
            out[:, j] = (context[name].to_numpy()[pos] - mean) / std
    return out
