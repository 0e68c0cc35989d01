"""What a scenario does to a cohort beyond the model's own draws: whom its campaigns expose, and the daily
context its shocks change.

A campaign gives each customer *opportunities* (``simulator/cohort.py``: a drawn time on an exposure day,
or a few seconds after the first trigger event of a period). :class:`Targeting` decides each one, in time
order, in the order a bank's campaign system would:

1. **eligibility**: segment and numeric attribute ranges (static), ``not_had`` over everything the customer
   did so far (a given ``--history`` log and the warm-up included, exposures too), ``active_days`` over the
   customer's own events (campaign exposures do not make a customer active);
2. **assignment**: at the first eligible opportunity of a campaign the customer is assigned to an arm,
   ``control`` with the campaign's control share (the customer's own draw), else ``treatment``; a control
   customer is never exposed by that campaign;
3. **frequency cap**: at most ``cap.exposures`` exposures, of all campaigns, in any ``cap.days`` days;
4. **budget**: the cohort's pro-rata share of the campaign's total and per-day budgets, first come first
   served in time (a budgeted opportunity is decided only once every customer of the cohort has been
   simulated up to its time, so no earlier one can still appear).

Assignments are intention to treat: a treatment customer that the cap or the budget kept from an exposure
stays in the treatment arm, so treatment against control reads as a randomised test of the campaign.
Budgets are the only place where customers of a cohort interact: which ones an exhausted budget leaves out
depends on who else is in the cohort, so budget use depends on the cohort split (``--cohort-size``, which
the manifest records and a resumed run keeps).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twinsim.models import kernels
from twinsim.models.encoding import Schema
from twinsim.scenarios.scenario import Scenario, Shock, pro_rata

PURPOSE_CONTROL = 19  # keyed by (seed, user, campaign index): the customer's arm in that campaign
DAY_S = 86400.0
TREATMENT, CONTROL = 1, 2
ARMS = ["treatment", "control"]


class Targeting:
    """The campaign state of one cohort: ``users`` (its rows of the population, ``members`` their population
    indices) of a ``population`` of that many."""

    def __init__(self, scenario: Scenario, schema: Schema, users: pd.DataFrame, members: np.ndarray, seed: int,
                 population: int) -> None:
        campaigns, n = scenario.campaigns, len(members)
        self.campaigns, self.cap = campaigns, scenario.cap
        self.static = np.ones((len(campaigns), n), dtype=bool)  # segment and attribute ranges
        self.control = np.zeros((len(campaigns), n), dtype=bool)  # the customer's arm, would they be assigned
        self.matchers: list[tuple[int, list[tuple[int, int]]]] = []  # (type code or -1, [(mark, value code)])
        self.not_had: list[list[int]] = []  # per campaign: its matchers
        for j, c in enumerate(campaigns):
            for name, values in c.segment.items():
                self.static[j] &= users[name].astype(str).isin(values).to_numpy()
            for name, (lo, hi) in c.attributes.items():
                v = pd.to_numeric(users[name], errors="coerce").to_numpy(dtype=float)
                self.static[j] &= (v >= (-np.inf if lo is None else lo)) & (v < (np.inf if hi is None else hi))
            u = kernels.uniforms(seed, members, np.full(n, j, dtype=np.int64), PURPOSE_CONTROL, 1)
            self.control[j] = u[:, 0] < c.control
            self.not_had.append([self._matcher(schema, entry) for entry in c.not_had])
        self.had = np.zeros((len(self.matchers), n), dtype=bool)
        self.last_own = np.full(n, -np.inf)  # time of each customer's latest own event (not an exposure)
        self.arm = np.zeros((len(campaigns), n), dtype=np.int8)  # 0: not assigned yet
        self.assigned: list[tuple[np.ndarray, int]] = []  # (rows, campaign) in the order they were assigned
        self.recent = np.full((n, scenario.cap.exposures if scenario.cap else 0), -np.inf)  # latest exposures
        first = int(members.min()) if n else 0
        self.budget_total = [pro_rata(c.budget_total, first, n, population) for c in campaigns]
        self.budget_per_day = [pro_rata(c.budget_per_day, first, n, population) for c in campaigns]
        self.used = [0] * len(campaigns)
        self.used_on: list[dict[int, int]] = [{} for _ in campaigns]  # day number -> exposures

    def _matcher(self, schema: Schema, entry: dict) -> int:
        marks = [(j, schema.marks[name].index(entry[name])) for j, name in enumerate(schema.marks) if name in entry]
        event = schema.event_types.index(entry["event_type"]) if "event_type" in entry else -1
        self.matchers.append((event, marks))
        return len(self.matchers) - 1

    def observe(self, rows: np.ndarray, type_: np.ndarray, marks: np.ndarray, time_s: np.ndarray,
                own: np.ndarray) -> None:
        """Events that ``rows`` just committed; ``own``: which were the customer's own (not an exposure)."""
        for m, (event, values) in enumerate(self.matchers):
            hit = np.ones(len(rows), dtype=bool) if event < 0 else type_ == event
            for j, code in values:
                hit &= marks[:, j] == code
            self.had[m, rows[hit]] = True
        self.last_own[rows[own]] = time_s[own]

    def decide(self, rows: np.ndarray, which: np.ndarray, at_s: np.ndarray) -> np.ndarray:
        """Opportunities: row ``rows[i]`` for campaign ``which[i]`` at ``at_s[i]``, one per row, every earlier
        budgeted one of the cohort decided already; returns which become exposures."""
        order = np.lexsort((rows, at_s))  # time order (the budgets are first come, first served)
        rows, which, at_s = rows[order], which[order], at_s[order]
        ok = self.static[which, rows].copy()
        for j, c in enumerate(self.campaigns):
            mine = which == j
            for m in self.not_had[j]:
                ok[mine] &= ~self.had[m, rows[mine]]
            if c.active_days is not None:
                ok[mine] &= self.last_own[rows[mine]] >= at_s[mine] - c.active_days * DAY_S
        new = ok & (self.arm[which, rows] == 0)
        self.arm[which[new], rows[new]] = np.where(self.control[which[new], rows[new]], CONTROL, TREATMENT)
        for j in np.unique(which[new]):
            self.assigned.append((rows[new & (which == j)], int(j)))
        ok &= ~self.control[which, rows]
        if self.cap is not None:
            ok &= self.recent[rows, 0] <= at_s - self.cap.days * DAY_S
        for j in np.flatnonzero([c.budgeted for c in self.campaigns]):
            ok[which == j] &= self._within_budget(j, at_s[which == j], ok[which == j])
        day = (at_s // DAY_S).astype(np.int64)
        for j in np.unique(which[ok]):
            self.used[j] += int((ok & (which == j)).sum())
            for d, k in zip(*np.unique(day[ok & (which == j)], return_counts=True), strict=True):
                self.used_on[j][int(d)] = self.used_on[j].get(int(d), 0) + int(k)
        if self.cap is not None and self.cap.exposures:
            hit = rows[ok]
            self.recent[hit] = np.concatenate([self.recent[hit, 1:], at_s[ok, None]], axis=1)
        out = np.empty(len(ok), dtype=bool)
        out[order] = ok
        return out

    def uncontested(self, which: np.ndarray, at_s: np.ndarray, pending: np.ndarray) -> np.ndarray:
        """Whether campaign ``which[i]``'s opportunity at ``at_s[i]`` may be decided before earlier ones that may
        still come, the campaign having ``pending[j]`` opportunities that may still come (pending and armed):
        where its budget (in all, and on that UTC day) is used up, it comes to nothing whatever the order;
        where it is left for all of them, it is granted whatever the order."""
        out = np.zeros(len(which), dtype=bool)
        day = (at_s // DAY_S).astype(np.int64)
        for j in np.unique(which):
            mine = np.flatnonzero(which == j)
            total = np.inf if self.budget_total[j] is None else self.budget_total[j] - self.used[j]
            left = np.full(len(mine), total)
            if self.budget_per_day[j] is not None:
                days, index = np.unique(day[mine], return_inverse=True)
                used = np.array([self.used_on[j].get(int(d), 0) for d in days])
                left = np.minimum(left, (self.budget_per_day[j] - used)[index])
            out[mine] = (left <= 0) | (left >= pending[j])
        return out

    def _within_budget(self, j: int, at_s: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Of campaign ``j``'s opportunities at ``at_s`` (time order) that passed so far (``ok``), those its
        budgets still cover."""
        keep = ok.copy()
        day = (at_s // DAY_S).astype(np.int64)
        if self.budget_per_day[j] is not None:
            for d in np.unique(day[keep]):
                on = np.flatnonzero(keep & (day == d))
                left = max(self.budget_per_day[j] - self.used_on[j].get(int(d), 0), 0)
                keep[on[left:]] = False
        if self.budget_total[j] is not None:
            keep[np.flatnonzero(keep)[max(self.budget_total[j] - self.used[j], 0):]] = False
        return keep

    def assignments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, campaign index, arm: TREATMENT or CONTROL) of every assignment."""
        if not self.assigned:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
        rows = np.concatenate([r for r, _ in self.assigned])
        which = np.concatenate([np.full(len(r), j) for r, j in self.assigned])
        return rows, which, self.arm[which, rows]

    def counts(self) -> dict[str, dict]:
        """Per campaign: exposures, customers per arm, the cohort's budgets and exposures per UTC day."""
        _, which, arm = self.assignments()
        return {c.name: {"exposures": self.used[j], "treatment": int(((which == j) & (arm == TREATMENT)).sum()),
                         "control": int(((which == j) & (arm == CONTROL)).sum()),
                         "budget_total": self.budget_total[j], "budget_per_day": self.budget_per_day[j],
                         "exposures_per_day": {str(pd.Timestamp(d * DAY_S, unit="s").date()): k
                                               for d, k in sorted(self.used_on[j].items())}}
                for j, c in enumerate(self.campaigns)}


def shocked_context(context: pd.DataFrame | None, schema: Schema, shocks: tuple[Shock, ...], begin_s: float,
                    end_s: float) -> pd.DataFrame | None:
    """The model's daily context table with ``shocks`` applied: one row per day from the table's first day (or
    ``begin_s``'s, if earlier) to the day after ``end_s``, every unshocked day holding exactly the value the model
    reads without the scenario (``encoding.context_at``: the latest day the table has, the first before it;
    the mean where the model has no table), so that nothing changes before a shock starts or outside it."""
    if not shocks:
        return context
    begin = np.datetime64(pd.Timestamp(begin_s, unit="s").floor("D"), "D")
    end = np.datetime64(pd.Timestamp(end_s, unit="s").floor("D"), "D") + 1
    if context is None or not len(context):
        table = pd.DataFrame([schema.context_mean], columns=schema.context_columns, index=[begin])
    else:
        table = context.assign(date=context["date"].to_numpy().astype("datetime64[D]"))
        table = table.drop_duplicates("date", keep="last").set_index("date")
        table = table.astype({k: np.float64 for k, v in table.dtypes.items() if not np.issubdtype(v, np.floating)})
        for name, mean in zip(schema.context_columns, schema.context_mean, strict=True):
            if name not in table:
                table[name] = mean
    table.index = pd.DatetimeIndex(table.index).as_unit("ns")
    days = pd.date_range(min(pd.Timestamp(begin), table.index.min()), max(pd.Timestamp(end), table.index.max()),
                         freq="D", unit="ns")
    table = table[schema.context_columns].reindex(days).ffill().bfill()
    for shock in shocks:
        on = (table.index >= shock.start) & (table.index < shock.end)
        table.loc[on, shock.column] = shock.apply(table.loc[on, shock.column].to_numpy(dtype=float))
    return table.rename_axis("date").reset_index()
