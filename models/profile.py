"""Activity profile: each customer's own rate of the frequent event types, as static attributes.

Real customers keep their level of activity: a heavy card payer in January is a heavy card payer in
December. A model that reads it from the history alone under-reads it a little, and over a year-long
rollout every synthetic customer drifts towards the average one (``benchmarks/activity_persistence.py``,
``docs/validation.md``, session 14). As in DoppelGANger (Lin et al., 2020), which generates each series'
summary first and the series given it, the customer's whole-window rates become attributes: training
conditions every event on the customer's realised rates, and generation draws the rates with the other
attributes from their learned joint frequencies (``models/generate.py``), so each synthetic customer
keeps to a level of activity a real one had.

A profile column is ``activity:<event type>``: log(1 + events of that type per week observed), a customer
being observed from the window start to their terminal event (churn), or to the window end, and for a
week at least. Profiled types are the non-terminal ones with at least ``MIN_WEEKLY_RATE`` events per
customer-week over the log.
Generated users tables leave these columns out: they are the model's, not the customer contract's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import EventLog, utc_seconds

if TYPE_CHECKING:
    from twinsim.models.encoding import Schema

PREFIX = "activity:"
MIN_WEEKLY_RATE = 0.1


def is_profile(name: str) -> bool:
    """Whether an attribute name is a profile column."""
    return str(name).startswith(PREFIX)


def profile_columns(users: pd.DataFrame) -> list[str]:
    """The profile columns of a users table."""
    return [c for c in users.columns if is_profile(c)]


def without_profile(users: pd.DataFrame) -> pd.DataFrame:
    """``users`` without the profile columns."""
    return users.drop(columns=profile_columns(users))


def profile_types(log: EventLog, terminal: list[str], start_s: float, end_s: float) -> list[str]:
    """The event types frequent enough to profile: non-terminal, ``MIN_WEEKLY_RATE`` per customer-week."""
    weeks = _observed_weeks(log, terminal, start_s, end_s).sum()
    counts = log.events["event_type"].astype(str).value_counts()
    return sorted(t for t, n in counts.items() if t not in terminal and n / weeks >= MIN_WEEKLY_RATE)


def with_profile(log: EventLog, types: list[str], terminal: list[str], start_s: float, end_s: float) -> EventLog:
    """``log`` with every user's profile columns added to (or made into) its users table."""
    clash = profile_columns(log.users) if log.users is not None else []
    if clash:
        raise TwinsimError(f"the users table has column(s) {clash}: names starting {PREFIX!r} are kept for "
                           f"twinsim's activity profile; rename them (e.g. {clash[0].replace(':', '_')})")
    weeks = _observed_weeks(log, terminal, start_s, end_s)
    ev = log.events
    of_type = ev[ev["event_type"].astype(str).isin(types)]
    counts = of_type.groupby([of_type["user_id"], of_type["event_type"].astype(str)], observed=True).size() \
        .unstack(fill_value=0)
    counts = counts.reindex(index=weeks.index, columns=types, fill_value=0)
    profile = np.log1p(counts.div(weeks, axis=0)).add_prefix(PREFIX)
    users = log.users if log.users is not None else pd.DataFrame({"user_id": weeks.index})
    users = users.merge(profile, left_on="user_id", right_index=True, how="left")
    return replace(log, users=users.fillna({c: 0.0 for c in profile.columns}))


def fit_profile(log: EventLog, schema: Schema) -> tuple[EventLog, Schema]:
    """Training: choose the profiled types of ``log``, add their columns, and add them to ``schema``'s
    numeric attributes (mean and standard deviation, as for any numeric attribute)."""
    start_s, end_s = schema.window_start_s, schema.window_end_s
    log = with_profile(log, profile_types(log, schema.terminal_types, start_s, end_s), schema.terminal_types,
                       start_s, end_s)
    from twinsim.models.encoding import normalisation  # encoding imports this module

    numeric = {**schema.numeric_attributes, **{c: normalisation(log.users[c]) for c in profile_columns(log.users)}}
    return log, replace(schema, numeric_attributes=numeric)


def profiled(log: EventLog, schema: Schema, start_s: float, end_s: float) -> EventLog:
    """``log`` (customers with a history, observed over ``[start_s, end_s)``) with the profile columns the
    model of ``schema`` expects."""
    types = [n.removeprefix(PREFIX) for n in schema.numeric_attributes if is_profile(n)]
    return with_profile(log, types, schema.terminal_types, start_s, end_s) if types else log


def _observed_weeks(log: EventLog, terminal: list[str], start_s: float, end_s: float) -> pd.Series:
    """Weeks each user is observed (at least one): from the window start to their terminal event, else the
    window end."""
    ev = log.events
    stop = pd.Series(np.where(ev["event_type"].astype(str).isin(terminal), utc_seconds(ev["timestamp"]), end_s))
    stop = stop.groupby(ev["user_id"].to_numpy()).min()
    return np.maximum((np.minimum(stop, end_s) - start_s) / (7 * 86400.0), 1.0)
