"""The live customers: groups of customers (one :class:`Group` per ``--users``, ``--history`` or added batch),
each a cohort of the simulation engine stepped a little at a time, with every event numbered and identified.

A group's customers are drawn from the model (``--where`` conditions their attributes) with population
indices that continue from the groups before it, so adding customers never changes anyone else: a
customer's draws are keyed by (seed, population index, event number), as in ``simulate``. Its history
begins ``history_days`` before the moment it joins and is sampled up to it at once; after that the group
is advanced to whatever horizon the live clock asks, and an event imposed on a customer (the control API's
"an offer was shown", "salary now") replaces that customer's pending draw, so what follows is drawn given it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twinsim.models.encoding import Schema, static_arrays
from twinsim.models.errors import TwinsimError
from twinsim.models.generate import events_frame, sample_attributes
from twinsim.models.rollout import Events
from twinsim.models.rowwise import MIN_ROWS, one_thread
from twinsim.scenarios.scenario import Scenario
from twinsim.simulator.cohort import DAY_S, Cohort, Loaded, RunSpec
from twinsim.simulator.live.sinks.records import event_id
from twinsim.simulator.population import Population

RECENT = 20  # events kept per customer for the control API's state
FOREVER_DAYS = 3650  # a live group's nominal end: it runs until stopped


def user_id_of(index: int) -> str:
    """A new customer's id from its population index (as ``simulate`` names new customers)."""
    return f"s{index:07d}"


def draw_customers(model_dir, schema: Schema, first: int, count: int, seed: int,
                   where: dict[str, list[str]]) -> tuple[np.ndarray, Population]:
    """Customers ``first`` .. ``first + count - 1`` of the run (population indices) with attributes drawn from
    the model given ``where``: (indices, population)."""
    users = sample_attributes(model_dir, schema, first + count, seed, where).iloc[first:].reset_index(drop=True)
    index = np.arange(first, first + count, dtype=np.int64)
    users["user_id"] = [user_id_of(int(i)) for i in index]
    return index, Population(users, *static_arrays(users, schema))


@dataclass
class Imposed:
    """An event the system under test imposed on a customer: ``user_id``, ``event_type``, mark values, amount."""

    user_id: str
    event_type: str
    marks: dict[str, str]
    amount: float | None = None


class Group:
    """Customers that joined together at ``joined_s``, their past sampled from ``begin_s``; or, with a known
    history (``part.history``, a given log's customers), that history replayed first and the silence after it
    continued up to ``joined_s`` (:attr:`known`: the log's own events, numbered first)."""

    def __init__(self, loaded: Loaded, model_dir: str, seed: int, members: np.ndarray, part: Population,
                 joined_s: float, begin_s: float) -> None:
        self.schema, self.seed = loaded.schema, seed
        spec = RunSpec(str(model_dir), "", seed, Scenario(name="live"), None, begin_s, joined_s,
                       joined_s + FOREVER_DAYS * DAY_S, len(members) + MIN_ROWS, len(members))
        # each group its own key-value cache (groups run side by side); the model itself is shared
        with one_thread():
            self.cohort = Cohort(spec, Loaded(loaded.model, loaded.schema, loaded.context), 0, members, part,
                                 report=lambda *_: None)
        self.members = members
        self.users = part.users
        self.user_ids = part.users["user_id"].to_numpy().astype(str)
        self.row_of = {u: i for i, u in enumerate(self.user_ids)}
        self.counts = np.zeros(len(members), dtype=np.int64)
        self.recent = [deque(maxlen=RECENT) for _ in members]
        self.known = _empty(self.schema)
        h = part.history
        if h is not None:  # the log's events come first in each customer's numbering
            rows = np.repeat(np.arange(len(members)), np.diff(h.offsets))
            self.known = self._frame(Events(rows, h.time_s, h.type, h.marks, h.amount))

    def advance(self, horizon_s: float) -> pd.DataFrame:
        """Every event before ``horizon_s`` not yet drawn, in time order, numbered and identified (see
        :func:`records`)."""
        cohort = self.cohort
        with one_thread():
            cohort._advance(horizon_s)
        parts = [e for d in sorted(cohort.buffers) for e in cohort.buffers.pop(d)]
        return self._frame(Events.concat(parts, len(self.schema.marks)))

    def impose(self, row: int, event: Imposed, at_s: float) -> None:
        """``event`` becomes customer ``row``'s pending event at ``at_s`` (at least a second after its latest)."""
        schema, roll = self.schema, self.cohort.roll
        marks = np.zeros((1, len(schema.marks)), dtype=np.int64)
        for j, name in enumerate(schema.marks):
            if name in event.marks:
                marks[0, j] = schema.marks[name].index(event.marks[name])
        at = max(at_s, float(roll.time_s[row]) + 1.0)
        with one_thread():
            roll.impose(np.array([row]), np.array([at]), np.array([schema.event_types.index(event.event_type)]),
                        marks, np.array([np.nan if event.amount is None else float(event.amount)]))
        self.cohort.imposed[row] = True

    def remember(self, batch: list[dict]) -> None:
        """Keep the latest emitted records of this group's customers (the control API's ``recent``)."""
        for record in batch:
            row = self.row_of.get(record["user_id"])
            if row is not None:
                self.recent[row].append(record)

    def alive(self) -> np.ndarray:
        return self.cohort.active.copy()

    def pending(self, row: int) -> dict | None:
        """The customer's next event as drawn now (it may still be pre-empted by an imposed one)."""
        if not self.cohort.active[row]:
            return None
        p = self.cohort.roll.pending
        t = float(p["t_next"][row])
        return {"timestamp": iso(t), "event_type": self.schema.event_types[int(p["type"][row])]}

    def _frame(self, events: Events) -> pd.DataFrame:
        if not len(events):
            return _empty(self.schema)
        order = np.lexsort((events.user, events.time_s))
        events = events.take(order)
        rows = events.user
        # the n-th event of each customer: its count so far plus its rank among this batch's events of it
        rank = np.zeros(len(rows), dtype=np.int64)
        by_row = np.argsort(rows, kind="stable")
        sorted_rows = rows[by_row]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
        lengths = np.diff(np.r_[starts, len(rows)])
        rank[by_row] = np.arange(len(rows)) - np.repeat(starts, lengths)
        number = self.counts[rows] + rank
        np.add.at(self.counts, rows, 1)
        frame = events_frame(events, self.user_ids, self.schema)
        frame.insert(0, "event_id", [event_id(self.seed, u, int(n)) for u, n in zip(frame["user_id"], number,
                                                                                   strict=True)])
        frame["time_s"] = events.time_s
        frame["row"] = rows
        return frame


def _empty(schema: Schema) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [], "user_id": [], "timestamp": pd.to_datetime([], utc=True),
                         "event_type": [], "amount": [], **{m: [] for m in schema.marks}, "time_s": [], "row": []})


def iso(t_s: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds and Z."""
    return pd.Timestamp(round(t_s * 1e6), unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def records(frame: pd.DataFrame, schema: Schema) -> list[dict]:
    """An events frame of :meth:`Group.advance` as sink records: ``event_id``, ``user_id``, ``timestamp`` (ISO
    8601 UTC), ``event_type``, ``amount`` (None where the type has none), one key per mark (None where it does
    not apply)."""
    if not len(frame):
        return []
    stamps = pd.DatetimeIndex(frame["timestamp"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    amount = frame["amount"].to_numpy(dtype=float)
    columns = {"event_id": frame["event_id"].tolist(), "user_id": frame["user_id"].astype(str).tolist(),
               "timestamp": list(stamps), "event_type": frame["event_type"].astype(str).tolist(),
               "amount": [None if np.isnan(a) else float(a) for a in amount]}
    for name in schema.marks:
        values = frame[name].astype(object)
        columns[name] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    keys = list(columns)
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def check_imposed(event: Imposed, schema: Schema) -> None:
    """Refuses an imposed event the model cannot read, naming the field, with an example."""
    example = '{"event_type": "offer_shown", "product": "travel_card"}'
    if event.event_type not in schema.event_types:
        raise TwinsimError(f"event_type {event.event_type!r} is not an event type of the model; one of "
                           f"{schema.event_types}; e.g. {example}")
    for name, value in event.marks.items():
        if name not in schema.marks:
            raise TwinsimError(f"{name!r} is not a mark of the model; marks: {list(schema.marks)}; e.g. {example}")
        if value not in schema.marks[name][1:]:
            raise TwinsimError(f"{name}={value!r} is not a value the model knows; one of {schema.marks[name][1:]}")
    carries = event.event_type in schema.amount_types
    if carries and event.amount is None:
        raise TwinsimError(f"{event.event_type} carries an amount: give \"amount\", e.g. "
                           f'{{"event_type": "{event.event_type}", "amount": 2500.0}}')
    if not carries and event.amount is not None:
        raise TwinsimError(f"{event.event_type} carries no amount in the model (types with amounts: "
                           f"{schema.amount_types}); leave \"amount\" out")
    if event.amount is not None and not (np.isfinite(event.amount) and event.amount >= 0):
        raise TwinsimError(f"amount {event.amount!r} must be a finite number >= 0")


def rows_of(groups: list[Group], user_id: str) -> tuple[Group, int]:
    """The group and row of customer ``user_id``; an unknown id is refused with an example of a known one."""
    for group in groups:
        row = group.row_of.get(user_id)
        if row is not None:
            return group, row
    known = str(groups[0].user_ids[0]) if groups and len(groups[0].user_ids) else "s0000000"
    raise KeyError(f"no customer {user_id!r} in this run; ids look like {known!r} (GET /customers lists them)")
