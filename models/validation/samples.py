"""The samples a report compares: loaded, checked, cut to the same number of users, indexed once.

Every check compares a sample (synthetic users, or the real holdout as the ceiling) with the training
users. The :class:`Vocabulary` comes from the training log, so all samples are measured in its terms;
categories a sample invents fall into an ``(other)`` bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.encoding import detect_terminal_types
from twinsim.models.errors import DataContractError, TwinsimError
from twinsim.models.event_log import AMOUNT, EventLog, TimeResolution, load_event_log

MIN_USERS = 20  # below this a same-size comparison says nothing; refuse rather than report noise
TOP_CATEGORIES = 10  # categories kept per column; the rest share one "(other)" bin
DAY_S = 86_400.0


@dataclass
class Vocabulary:
    """The training log's terms: event types, mark values, amount types, terminal types, attributes, and its
    time resolution (a log of dates has no hour of day to compare)."""

    event_types: list[str]
    marks: dict[str, list[str]]
    amount_types: list[str]
    terminal_types: list[str]
    categorical_attributes: dict[str, list[str]] = field(default_factory=dict)
    numeric_attributes: list[str] = field(default_factory=list)
    resolution: TimeResolution = field(default_factory=TimeResolution)

    @property
    def terminal_codes(self) -> list[int]:
        return [self.event_types.index(t) for t in self.terminal_types]

    @classmethod
    def from_train(cls, log: EventLog, terminal: list[str] | None = None) -> Vocabulary:
        ev = log.events
        counts = ev["event_type"].value_counts()
        types = [str(t) for t, n in counts.items() if n > 0]
        terminal = detect_terminal_types(ev) if terminal is None else list(terminal)
        unknown = sorted(set(terminal) - set(types))
        if unknown:
            raise TwinsimError(f"--terminal names event type(s) {unknown} that do not occur in the training "
                               f"data; known types: {sorted(types)}")
        categorical, numeric = {}, []
        for name in log.attributes:
            values = log.users[name]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                numeric.append(name)
            else:
                categorical[name] = _top(values.astype("str").where(values.notna()))
        return cls(event_types=types, marks={m: _top(ev[m]) for m in log.marks},
                   amount_types=list(log.amount_types), terminal_types=sorted(terminal),
                   categorical_attributes=categorical, numeric_attributes=numeric, resolution=log.resolution)


def _top(values: pd.Series) -> list[str]:
    counts = values.value_counts(dropna=True)
    return [str(v) for v, n in counts.head(TOP_CATEGORIES).items() if n > 0]


@dataclass
class Sample:
    """Events of one set of users, sorted by user and time, with per-event arrays the checks share."""

    name: str
    events: pd.DataFrame
    users: pd.DataFrame | None
    _codes: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_log(cls, name: str, log: EventLog) -> Sample:
        events = log.events
        user, time = events["user_id"].to_numpy(), events["timestamp"].to_numpy()
        ordered = (user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (time[1:] >= time[:-1]))
        if not ordered.all():  # load_event_log sorts; a log built in memory may not be
            events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        return cls(name, events, log.users)

    @cached_property
    def user_ids(self) -> np.ndarray:
        return pd.unique(self.events["user_id"].to_numpy())

    @cached_property
    def user(self) -> np.ndarray:
        """Per event, the index of its user in :attr:`user_ids` (events of a user are contiguous)."""
        first = np.r_[True, self.events["user_id"].to_numpy()[1:] != self.events["user_id"].to_numpy()[:-1]]
        return np.cumsum(first) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @cached_property
    def time_s(self) -> np.ndarray:
        ts = self.events["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        return ts.to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6

    @cached_property
    def first(self) -> np.ndarray:
        """True for each user's first event."""
        return np.r_[True, self.user[1:] != self.user[:-1]]

    @cached_property
    def last(self) -> np.ndarray:
        """True for each user's last event."""
        return np.r_[self.user[1:] != self.user[:-1], True]

    @cached_property
    def gap_h(self) -> np.ndarray:
        """Hours since the user's previous event; NaN for a user's first event."""
        gap = np.empty_like(self.time_s)
        gap[1:] = np.diff(self.time_s) / 3600.0
        gap[self.first] = np.nan
        return gap

    @cached_property
    def window(self) -> tuple[float, float]:
        """Observed window in epoch seconds: midnight of the first day to midnight after the last."""
        first, last = np.floor(self.time_s.min() / DAY_S), np.floor(self.time_s.max() / DAY_S) + 1
        return float(first * DAY_S), float(last * DAY_S)

    @cached_property
    def amount(self) -> np.ndarray:
        return self.events[AMOUNT].to_numpy(dtype=np.float64) if AMOUNT in self.events else \
            np.full(len(self.events), np.nan)

    def codes(self, column: str, values: list[str]) -> np.ndarray:
        """Per event, the index of its value in ``values``; ``len(values)`` for any other value (``(other)``)
        and ``len(values) + 1`` where the value is missing (``(none)``) or the column is absent."""
        key = (column, tuple(values))
        if key not in self._codes:
            if column not in self.events:
                self._codes[key] = np.full(len(self.events), len(values) + 1)
            else:
                series = self.events[column]
                if not isinstance(series.dtype, pd.CategoricalDtype):
                    series = series.astype("category")
                index = {v: i for i, v in enumerate(values)}
                lookup = np.array([index.get(str(c), len(values)) for c in series.cat.categories] + [len(values) + 1])
                self._codes[key] = lookup[series.cat.codes.to_numpy()]  # code -1 (missing) -> the last entry
        return self._codes[key]

    @cached_property
    def calendar(self) -> dict[str, np.ndarray]:
        """Hour of day (0-23), weekday (0 = Monday) and day of month (1-31) of each event, in UTC."""
        ts = self.events["timestamp"].dt.tz_convert("UTC")
        return {"hour": ts.dt.hour.to_numpy(), "weekday": ts.dt.day_of_week.to_numpy(),
                "day_of_month": ts.dt.day.to_numpy()}

    def subset(self, user_ids: np.ndarray, name: str | None = None) -> Sample:
        """The events (and user rows) of the given users, in their original order."""
        keep = set(map(str, user_ids))
        events = self.events[self.events["user_id"].isin(keep)].reset_index(drop=True)
        users = None if self.users is None else self.users[self.users["user_id"].isin(keep)].reset_index(drop=True)
        return Sample(name or self.name, events, users)

    def sample_users(self, n: int, rng: np.random.Generator, name: str | None = None) -> Sample:
        """``n`` users drawn without replacement (all of them, unchanged, when there are no more than ``n``)."""
        if n >= self.n_users:
            return self if name is None else Sample(name, self.events, self.users)
        return self.subset(np.sort(rng.choice(self.user_ids, size=n, replace=False)), name)


def load_input(path: str | Path | EventLog, option: str, users: str | Path | None = None) -> EventLog:
    """Read one input, naming the option in any contract error so the user knows which input is wrong."""
    if isinstance(path, EventLog):
        return path
    try:
        return load_event_log(path, users)
    except DataContractError as exc:
        raise DataContractError(f"{option}: {exc.problem}", fix=exc.fix, file=exc.file, column=exc.column,
                                example=exc.example) from exc


def check_inputs(train: EventLog, holdout: EventLog, synthetic: EventLog,
                 names: tuple[str, str, str] = ("--train", "--holdout", "--synthetic")) -> None:
    """Refuse inputs that cannot give a meaningful report, saying which option (``names``) to change."""
    for log, option in zip((train, holdout, synthetic), names, strict=True):
        users = log.events["user_id"].nunique()
        if users < MIN_USERS:
            raise TwinsimError(f"{option} has {users} user(s) with events; the report needs at least {MIN_USERS} "
                               "(a few hundred for figures worth quoting)")
    shared = set(train.events["user_id"].unique()) & set(holdout.events["user_id"].unique())
    if shared:
        example = sorted(shared)[0]
        raise TwinsimError(f"{names[1]} shares {len(shared):,} user(s) with {names[0]} (e.g. {example!r}); the "
                           "holdout must be real users the generator never saw: split the users, not the events")
    known = set(map(str, train.events["event_type"].unique()))
    if not known & set(map(str, synthetic.events["event_type"].unique())):
        raise TwinsimError(f"{names[2]} has none of the training data's event types "
                           f"({', '.join(sorted(known)[:6])}, ...); is it the right dataset?")


def split_by_model(data: EventLog, model_dir: str | Path,
                   roles: tuple[str, ...] = ("train", "holdout")) -> tuple[EventLog, ...]:
    """The users of ``data`` in each of ``roles`` (train, validation, holdout) by the model's ``split.parquet``."""
    path = Path(model_dir) / "split.parquet"
    if not path.exists():
        raise TwinsimError(f"{path} does not exist; --model needs a directory written by `twinsim train` "
                           "(or pass --train and --holdout instead)")
    split = pd.read_parquet(path)
    split["user_id"] = split["user_id"].astype("str")
    parts = []
    for name in roles:
        ids = set(split.loc[split["split"] == name, "user_id"])
        part = data.of_users(ids)
        if part.events.empty:
            raise TwinsimError(f"--data has no events of the model's {name} users ({len(ids):,} in {path}); "
                               "pass the data the model was trained on")
        parts.append(part)
    return tuple(parts)
