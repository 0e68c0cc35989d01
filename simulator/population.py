"""Who is simulated: new customers drawn from the model, or the customers of a given event log.

Either way a population is a users table (the event-log contract), the model's static inputs for each
user, and for a given log each user's own history (model codes, sorted by time) to continue from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.encoding import Schema, encode, observation_window, static_arrays, user_rows
from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import load_event_log
from twinsim.models.generate import sample_attributes
from twinsim.models.profile import is_profile, profiled


@dataclass
class History:
    """Known events per user: flat arrays (users contiguous, sorted by time) with ``offsets``, observed
    until ``observed_until_s``: no user had an event between their last one and then."""

    offsets: np.ndarray
    time_s: np.ndarray
    type: np.ndarray
    marks: np.ndarray
    amount: np.ndarray
    observed_until_s: float

    def of(self, users: np.ndarray) -> History:
        """The histories of ``users`` (indices), in that order."""
        offsets, index = user_rows(self.offsets, users)
        return History(offsets, self.time_s[index], self.type[index], self.marks[index], self.amount[index],
                       self.observed_until_s)


@dataclass
class Population:
    users: pd.DataFrame
    static_cat: np.ndarray
    static_num: np.ndarray
    history: History | None = None

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> Population:
        """The users ``rows`` (indices), in that order: what one cohort needs, and all it needs."""
        return Population(self.users.iloc[rows].reset_index(drop=True), self.static_cat[rows], self.static_num[rows],
                          None if self.history is None else self.history.of(rows))


def new_population(model_dir: Path, schema: Schema, n: int, seed: int) -> Population:
    """``n`` new customers with attributes drawn from the model's learned joint frequencies."""
    users = sample_attributes(model_dir, schema, n, seed, {})
    return Population(users, *static_arrays(users, schema))


def history_population(path: Path, schema: Schema, observed_until: pd.Timestamp | str | None = None) -> Population:
    """The customers of the event log at ``path`` (with events), each with their own history, observed until
    ``observed_until`` (default: the end of the day of the log's last event). A users table is needed only
    for the attributes the model was trained with."""
    log = load_event_log(path)
    start, end = observation_window(log.events["timestamp"])  # the history's own: each customer's profile
    latest = log.events["timestamp"].max()
    try:
        until = end if observed_until is None else as_utc(observed_until)
    except ValueError as exc:
        raise TwinsimError(f"--observed-until {observed_until!r} is not a date or time ({exc}); write e.g. "
                           "--observed-until 2025-12-31 or 2025-12-31T18:00") from None
    if until < latest:
        late = log.events.loc[log.events["timestamp"] > until, "user_id"]
        raise TwinsimError(f"--observed-until {until}: {path} has events after it ({len(late)} events of "
                           f"{late.nunique()} customers, e.g. customer {late.iloc[0]!r} at "
                           f"{log.events.loc[late.index[0], 'timestamp']}); the log must be observed at least until "
                           f"its last event: give --observed-until {latest.ceil('D').date()} or later, or leave it out")
    needed = [*schema.categorical_attributes, *(a for a in schema.numeric_attributes if not is_profile(a))]
    if log.users is None:
        if needed:
            raise TwinsimError(f"--history {path}: no users table found; the model needs each customer's attributes "
                               f"{needed}: put a users.parquet (user_id + attributes) beside the events")
        log = dataclasses.replace(log, users=pd.DataFrame({"user_id": log.events["user_id"].unique()}))
    log = profiled(log, schema, start.timestamp(), until.timestamp())
    missing = [a for a in [*schema.categorical_attributes, *schema.numeric_attributes] if a not in log.users]
    if missing:
        raise TwinsimError(f"--history {path}: the users table lacks attribute column(s) {missing} the model was "
                           "trained with; add them (see the model's model.json, schema)")
    encoded = encode(log, schema)
    users = log.users.set_index("user_id").loc[encoded.user_ids].reset_index()
    history = History(encoded.offsets, encoded.time_s, encoded.event_type, encoded.marks, encoded.amount,
                      until.timestamp())
    return Population(users, encoded.static_cat, encoded.static_num, history)


def as_utc(t: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
