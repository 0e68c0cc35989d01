"""A scenario in the reference world: campaigns the world's own customers respond to, shocks on its economy.

This is the ground truth for what-if claims: a twin's forecast of a campaign is scored against what the world
does with the same scenario. The world applies a scenario (``scenarios/scenario.py``) with its own laws:

* a **campaign** of ``offer_shown`` shows its product to the customers it reaches, and the customer's click,
  purchase and life-stage chain follow from their own affinity, fatigue and recency exactly as for the bank's
  organic offers (``behaviour.Chunk.respond``); a campaign of any other event type is refused;
* a **shock** sets or shifts ``macro_index`` on some days; spending and churn react through the macro laws.

Every draw a scenario needs is the customer's own (``streams.CAMPAIGN_*``), so customers a scenario never
exposes are identical to the baseline world with the same seed, and exposed ones up to their first exposure.
docs/reference-world.md ("Scenarios: the ground truth") says what the world does with each field.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numba as nb
import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.scenarios.scenario import pro_rata
from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world import streams as st
from twinsim.simulator.reference_world.behaviour import DAY, N_OFFER_DRAWS, Chunk, E
from twinsim.simulator.reference_world.calendar import Calendar
from twinsim.simulator.reference_world.population import Population, attribute_codes

NEVER = np.iinfo(np.int64).max
MAX_CAMPAIGNS = 127  # an event's campaign is an int8 in behaviour.EventBuffer
MARK_CODES = {"channel": laws.CHANNELS, "merchant_category": laws.MERCHANTS, "product": laws.PRODUCTS}
MARK_COLUMN = {"channel": 4, "merchant_category": 5, "product": 6}  # in EventBuffer.columns()


def _day_number(value, start: date) -> int:
    """A day of the window: a day number, or a date / timestamp (UTC)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return int((pd.Timestamp(value).tz_localize(None).normalize() - pd.Timestamp(start)).days)


def check_scenario(scenario, where: str) -> None:
    """Refuse what the world cannot act out; errors name the file, the table and the key, with an example."""
    example = 'e.g. event_type = "offer_shown" with marks = { product = "travel_card", channel = "app" }'
    if len(scenario.campaigns) > MAX_CAMPAIGNS:
        raise TwinsimError(f"{where}: [[campaign]]: {len(scenario.campaigns)} campaigns; the reference world runs at "
                           f"most {MAX_CAMPAIGNS} at once (split the scenario into several runs)")
    for i, c in enumerate(scenario.campaigns):
        table = f"{where}: [[campaign]] #{i + 1} ({c.name!r})"
        if c.event_type != "offer_shown":
            raise TwinsimError(f"{table}: event_type: {c.event_type!r} cannot run in the reference world, which only "
                               f"responds to offer_shown campaigns (its customers click and buy offers); {example}")
        if "product" not in c.marks:
            raise TwinsimError(f"{table}: marks: no product mark; the world's customers respond to a product; "
                               f"{example}")
        extra = set(c.marks) - {"product", "channel"}
        if extra:
            raise TwinsimError(f"{table}: marks: {sorted(extra)} are not marks of the world's offers, which carry "
                               f"only product and channel; {example}")
        for cond in c.not_had:
            _condition(table, cond)
    for i, s in enumerate(scenario.shocks):
        if s.column != "macro_index":
            raise TwinsimError(f"{where}: [[shock]] #{i + 1}: column: {s.column!r} is not a context column of the "
                               'reference world, whose only one is macro_index; e.g. column = "macro_index"')


def shocked_calendar(cal: Calendar, scenario, start: date) -> Calendar:
    """The calendar with the scenario's shocks on ``macro_index`` (days [start, end), in order)."""
    if not scenario.shocks:
        return cal
    macro = cal.macro_index.copy()
    for s in scenario.shocks:
        a, b = (min(max(_day_number(v, start), 0), cal.days) for v in (s.start, s.end))
        macro[a:b] = s.apply(macro[a:b])
    return replace(cal, macro_index=macro)


def _or_never(share: int | None) -> int:
    """A budget share as the kernel reads it: no budget is a budget never spent."""
    return NEVER if share is None else share


@nb.njit(cache=True)
def _admit(users, campaigns, times, recent, cap_s, budget):
    """Admit opportunities in time order: at most ``recent.shape[1]`` exposures a customer in any ``cap_s``
    seconds (``recent``: their latest exposure times, updated; ``cap_s == 0``: no cap), then each campaign's
    budget left today (first come, first served)."""
    ok = np.zeros(users.shape[0], dtype=np.bool_)
    for i in range(users.shape[0]):
        u, k = users[i], campaigns[i]
        oldest = 0
        if cap_s > 0:
            for s in range(recent.shape[1]):
                if recent[u, s] < recent[u, oldest]:
                    oldest = s
            if recent[u, oldest] > times[i] - cap_s:
                continue
        if budget[k] <= 0:
            continue
        if cap_s > 0:
            recent[u, oldest] = times[i]
        budget[k] -= 1
        ok[i] = True
    return ok


class ScenarioAgent:
    """A scenario's campaigns acting on one chunk of customers at the end of every day (``behaviour.DayAgent``).

    Each campaign gives each customer it reaches (a draw per period) an opportunity per period, decided as
    docs/scenarios.md says, in time order: eligibility (static, ``not_had``, ``active_days``), assignment at
    the first eligible one (``control`` customers are never exposed), the frequency cap, the budget.
    """

    def __init__(self, scenario, pop: Population, cal: Calendar, streams: st.Streams, users: int,
                 start: date) -> None:
        n = len(pop)
        self.campaigns, self.streams, self.n = scenario.campaigns, streams, n
        attrs = attribute_codes(pop)
        self.window, self.days, self.static, self.control, self.arm = [], [], [], [], []
        self.budget_total, self.budget_day, self.armed, self.delay, self.not_had = [], [], [], [], []
        idx = np.arange(n)
        for k, c in enumerate(self.campaigns):
            self.window.append((_day_number(c.start, start), _day_number(c.end, start)))
            self.days.append([_day_number(d, start) for d in c.exposure_days()])
            static = np.ones(n, dtype=bool)
            for name, values in c.segment.items():
                codes, vocabulary = attrs[name]
                static &= np.isin(codes, [vocabulary.index(v) for v in values])
            for name, (low, high) in c.attributes.items():
                values = attrs[name][0]
                static &= values >= (-np.inf if low is None else low)
                static &= values < (np.inf if high is None else high)
            self.static.append(static)
            self.control.append(streams.draw(st.CAMPAIGN_ASSIGN, idx, 0, 1, np.full(n, k))[:, 0] < c.control)
            self.arm.append(np.zeros(n, dtype=np.int8))  # 0: not assigned yet, 1: treatment, 2: control
            self.budget_total.append(_or_never(pro_rata(c.budget_total, pop.first_id, n, users)))
            self.budget_day.append(_or_never(pro_rata(c.budget_per_day, pop.first_id, n, users)))
            self.armed.append(np.full(n, -1, dtype=np.int64))  # at: the period's end (seconds) while armed
            self.delay.append(np.zeros(n, dtype=np.int64))
            self.not_had.append([(_condition(c.name, cond), np.full(n, NEVER)) for cond in c.not_had])
        cap = scenario.cap
        self.cap_s = int(cap.days) * DAY if cap is not None else 0  # exposures >= 1 (load_scenario)
        self.recent = np.full((n, int(cap.exposures) if cap is not None else 1), -NEVER, dtype=np.int64)
        self.last_own = np.full(n, -NEVER, dtype=np.int64)  # the latest own event (not an exposure) so far
        self.track_own = any(c.active_days is not None for c in self.campaigns)
        self.last_day = max((end for _, end in self.window), default=0)  # nothing to do from this day on
        self.seen = 0  # EventBuffer parts already read into the trackers

    def assignments(self) -> dict[str, np.ndarray]:
        """Every assigned customer: ``user`` (local index), ``campaign`` (index), ``control`` (bool)."""
        rows = [(np.flatnonzero(arm > 0), k, arm[arm > 0] == 2) for k, arm in enumerate(self.arm)]
        return {"user": np.concatenate([r[0] for r in rows] or [np.empty(0, np.int64)]),
                "campaign": np.concatenate([np.full(len(r[0]), r[1]) for r in rows] or [np.empty(0, np.int64)]),
                "control": np.concatenate([r[2] for r in rows] or [np.empty(0, bool)])}

    def _read(self, chunk: Chunk) -> None:
        """Fold the events added since the last read into ``not_had`` first times and the latest own event."""
        first_part, self.seen = self.seen, len(chunk.out.parts)
        if not self.track_own and not any(self.not_had):
            return
        cols = chunk.out.columns(first_part)
        user, seconds = cols[0], cols[1]
        for conditions in self.not_had:
            for (etype, marks), first in conditions:
                hit = (cols[2] == etype) if etype >= 0 else np.ones(len(user), dtype=bool)
                for column, code in marks:
                    hit &= cols[column] == code
                np.minimum.at(first, user[hit], seconds[hit])
        if self.track_own:
            own = cols[8] < 0
            np.maximum.at(self.last_own, user[own], seconds[own])

    def _first_today(self, today, etype: int | None) -> np.ndarray:
        """Each customer's first own event of the day (of type ``etype``, or of any), NEVER if none."""
        first = np.full(self.n, NEVER)
        hit = today[8] < 0 if etype is None else today[2] == etype
        np.minimum.at(first, today[0][hit], today[1][hit])
        return first

    def on_day(self, chunk: Chunk, day: int, first_part: int) -> None:
        if day >= self.last_day:
            return
        own_before = self.last_own.copy()  # the latest own event of the days before
        self._read(chunk)
        today = chunk.out.columns(first_part)
        own_today = self._first_today(today, None) if self.track_own else None
        users, times, which = [], [], []
        for k, c in enumerate(self.campaigns):
            begin, end = self.window[k]
            if not begin <= day < end:
                continue
            opens = day in self.days[k]
            if opens:  # the period's reach: each customer's own draw for this campaign and day
                static = np.flatnonzero(self.static[k])
                u_reach, u_time = self.streams.draw(st.CAMPAIGN_TIME, static, day, 2, np.full(len(static), k)).T
                reached, u_time = static[u_reach < c.reach], u_time[u_reach < c.reach]
            if c.at is None:
                if not opens:
                    continue
                cand = reached
                t = day * DAY + (c.hours[0] * 3600 + np.floor(u_time * (c.hours[1] - c.hours[0]) * 3600)).astype(int)
            else:
                armed = self.armed[k]
                if opens:
                    period_end = min([d for d in self.days[k] if d > day] + [end]) * DAY
                    armed[:] = -1
                    armed[reached] = period_end
                    self.delay[k][reached] = st.integers(u_time, 2, 11)
                trigger = self._first_today(today, E[c.at])
                cand = np.flatnonzero((trigger < armed) & (armed > 0))
                t = trigger[cand] + self.delay[k][cand]
                armed[cand] = -1  # an opportunity is decided once: a triggered one does not wait for the next
            keep = t < chunk.closed_at[cand]
            for _, first_had in self.not_had[k]:
                keep &= first_had[cand] >= t
            if c.active_days is not None:
                keep &= (own_today[cand] < t) | (own_before[cand] >= t - c.active_days * DAY)
            cand, t = cand[keep], t[keep]
            arm = self.arm[k]
            new = cand[arm[cand] == 0]
            arm[new] = np.where(self.control[k][new], 2, 1)
            treated = arm[cand] == 1
            users.append(cand[treated])
            times.append(t[treated])
            which.append(np.full(treated.sum(), k))
        if users:
            self._expose(chunk, day, np.concatenate(users), np.concatenate(times), np.concatenate(which))
        self._read(chunk)

    def _expose(self, chunk: Chunk, day: int, users: np.ndarray, times: np.ndarray, which: np.ndarray) -> None:
        order = np.lexsort((users, which, times))
        users, times, which = users[order], times[order], which[order]
        budget = np.array([min(total, per_day) for total, per_day in zip(self.budget_total, self.budget_day,
                                                                          strict=True)], dtype=np.int64)
        start_budget = budget.copy()
        ok = _admit(users, which, times, self.recent, self.cap_s, budget)
        for k, c in enumerate(self.campaigns):
            if self.budget_total[k] != NEVER:
                self.budget_total[k] -= int(start_budget[k] - budget[k])
            mine = ok & (which == k)
            if not mine.any():
                continue
            rows, at = users[mine], times[mine]
            u = self.streams.draw(st.CAMPAIGN_OFFER, rows, day, N_OFFER_DRAWS, np.full(len(rows), k))
            channel = (np.full(len(rows), laws.CHANNELS.index(c.marks["channel"])) if "channel" in c.marks
                       else chunk.session_channel(rows, u[:, 16], u[:, 17]))
            offer = np.full(len(rows), laws.PRODUCTS.index(c.marks["product"]))
            chunk.respond(day, rows, at, channel, offer, u, campaign=k)


def _condition(where: str, cond: dict) -> tuple[int, list[tuple[int, int]]]:
    """A ``not_had`` entry as (event type code or -1 for any, [(EventBuffer column, code)])."""
    cond = dict(cond)
    event_type = cond.pop("event_type", None)
    example = 'e.g. not_had = [{ event_type = "offer_purchase", product = "travel_card" }]'
    if event_type is not None and event_type not in E:
        raise TwinsimError(f"{where}: not_had: {event_type!r} is not a world event type ({list(laws.EVENT_TYPES)}); "
                           f"{example}")
    marks = []
    for name, value in cond.items():
        if name not in MARK_CODES or value not in MARK_CODES[name]:
            raise TwinsimError(f"{where}: not_had: {name} = {value!r} is not a mark of the world; {example}")
        marks.append((MARK_COLUMN[name], MARK_CODES[name].index(value)))
    return (-1 if event_type is None else E[event_type]), marks
