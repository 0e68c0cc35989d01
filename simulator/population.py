"""Who is simulated: new customers drawn from the model, or the customers of a given event log.

Either way a population is a users table (the event-log contract), the model's static inputs for each
user, and for a given log each user's own history (model codes, sorted by time) to continue from.
"""

from __future__ import annotations

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
    """Known events per user: flat arrays (users contiguous, sorted by time) with ``offsets``."""

    offsets: np.ndarray
    time_s: np.ndarray
    type: np.ndarray
    marks: np.ndarray
    amount: np.ndarray

    def of(self, users: np.ndarray) -> History:
        """The histories of ``users`` (indices), in that order."""
        offsets, index = user_rows(self.offsets, users)
        return History(offsets, self.time_s[index], self.type[index], self.marks[index], self.amount[index])


@dataclass
class Population:
    users: pd.DataFrame
    static_cat: np.ndarray
    static_num: np.ndarray
    history: History | None = None

    def __len__(self) -> int:
        return len(self.users)


def new_population(model_dir: Path, schema: Schema, n: int, seed: int) -> Population:
    """``n`` new customers with attributes drawn from the model's learned joint frequencies."""
    users = sample_attributes(model_dir, schema, n, seed, {})
    return Population(users, *static_arrays(users, schema))


def history_population(path: Path, schema: Schema) -> Population:
    """The customers of the event log at ``path`` (with events), each with their own history."""
    log = load_event_log(path)
    if log.users is None:
        needed = [*schema.categorical_attributes, *(a for a in schema.numeric_attributes if not is_profile(a))]
        raise TwinsimError(f"--history {path}: no users table found; the model needs each customer's attributes "
                           f"{needed}: put a "
                           "users.parquet (user_id + attributes) beside the events")
    start, end = observation_window(log.events["timestamp"])  # the history's own: each customer's profile
    log = profiled(log, schema, start.timestamp(), end.timestamp())
    missing = [a for a in [*schema.categorical_attributes, *schema.numeric_attributes] if a not in log.users]
    if missing:
        raise TwinsimError(f"--history {path}: the users table lacks attribute column(s) {missing} the model was "
                           "trained with; add them (see the model's model.json, schema)")
    encoded = encode(log, schema)
    users = log.users.set_index("user_id").loc[encoded.user_ids].reset_index()
    history = History(encoded.offsets, encoded.time_s, encoded.event_type, encoded.marks, encoded.amount)
    return Population(users, encoded.static_cat, encoded.static_num, history)


def as_utc(t: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
