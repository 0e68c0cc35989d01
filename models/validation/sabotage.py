"""Deliberately bad "synthetic" data, to show that the report fails when it should.

* :func:`copy_of` - the training users themselves under new ids: perfect fidelity, no privacy.
* :func:`shuffle_columns` - every column shuffled independently across all events (and user attributes
  across users): each column's distribution is exact, but events no longer hang together.
* :func:`shift_time` - every timestamp moved (by 3 days and 5 hours by default): sequences intact, the
  calendar wrong.

The shuffled log breaks the contract on purpose (amounts land on event types that never carry them), so
these functions return an :class:`~twinsim.models.event_log.EventLog` in memory instead of files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twinsim.models.event_log import EventLog

SHIFT = pd.Timedelta(days=3, hours=5)


def _with_events(log: EventLog, events: pd.DataFrame, users: pd.DataFrame | None) -> EventLog:
    events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    return EventLog(events=events, users=users, marks=log.marks, amount_types=log.amount_types, event_files=())


def _renamed(ids: pd.Series, prefix: str) -> pd.Series:
    return prefix + ids.astype("str")


def copy_of(log: EventLog, prefix: str = "copy-") -> EventLog:
    """The same users and events under new user ids."""
    users = None if log.users is None else log.users.assign(user_id=_renamed(log.users["user_id"], prefix))
    return _with_events(log, log.events.assign(user_id=_renamed(log.events["user_id"], prefix)), users)


def shuffle_columns(log: EventLog, seed: int = 0) -> EventLog:
    """Each event column (all but ``user_id``) permuted independently across all events; likewise each
    user attribute across users."""
    rng = np.random.default_rng(seed)

    def shuffled(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(**{c: frame[c].take(rng.permutation(len(frame))).set_axis(frame.index)
                               for c in frame.columns if c != "user_id"})

    return _with_events(log, shuffled(log.events), None if log.users is None else shuffled(log.users))


def shift_time(log: EventLog, by: pd.Timedelta = SHIFT) -> EventLog:
    """Every timestamp moved by ``by``."""
    return _with_events(log, log.events.assign(timestamp=log.events["timestamp"] + by), log.users)
