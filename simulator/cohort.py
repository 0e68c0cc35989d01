"""One cohort of users simulated in SimPy time: the population stepper and the campaign processes.

The stepper runs the cohort ahead to the next time a scenario process acts (``env.peek()``), at most
``AHEAD_DAYS`` at a time: it commits every user's events due before that horizon, in rounds (each round
commits the next event of every user still due and draws their following one), then writes the days
that are complete.

A campaign process wakes on each exposure day and gives the customers it reaches an opportunity: at a
drawn time of the day, or (``at``) armed until the period ends, to fire a few seconds after the customer's
first event of that type. The stepper has ``interventions.Targeting`` decide each opportunity when the
customer reaches it; an exposure replaces the customer's pending draw (``Rollout.impose``), so what the
customer does next is drawn given it. Shocks change the context table the model reads.

:func:`run_cohort` runs one cohort from what a worker holds (the run's :class:`RunSpec`, its loaded model and the
cohort's slice of the population); every execution strategy (``simulator/parallel.py``) calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy
import torch

from twinsim.models import kernels
from twinsim.models.encoding import Schema
from twinsim.models.generate import events_frame
from twinsim.models.rollout import Events, Rollout
from twinsim.models.rowwise import MIN_ROWS, one_thread
from twinsim.models.transformer import EventTransformer, KVCache
from twinsim.scenarios.scenario import Campaign, Scenario
from twinsim.simulator.decisions import Decisions, DecisionSpec
from twinsim.simulator.interventions import ARMS, Targeting, shocked_context
from twinsim.simulator.population import History, Population, as_utc
from twinsim.simulator.sink import Output, part_name

PURPOSE_CAMPAIGN = 20  # + campaign index, keyed by day: exposure time (or trigger delay) and reach
TRIGGER_DELAY_S = (2.0, 10.0)  # a triggered exposure comes this many seconds after its trigger event
DAY_S = 86400.0
AHEAD_DAYS = 7  # the stepper runs at most this far ahead before writing (memory: a cohort's week of events)


Report = Callable[[pd.Timestamp, int, int, float], None]  # (day, events so far, users alive, share of the cohort)


@dataclass(frozen=True)
class RunSpec:
    """What every cohort of a run shares, resolved once by the parent: small and picklable, it travels to
    worker processes and Ray tasks."""

    model_dir: str
    model_sha256: str  # the key under which a worker keeps the model it loaded
    seed: int
    scenario: Scenario
    out: Output
    begin_s: float  # where users' histories begin (sampled warm-up or the given log)
    start_s: float  # the first simulated second
    end_s: float
    cache_rows: int  # rows of the key-value cache: the largest cohort + MIN_ROWS
    population: int = 0  # users in the run (cohorts' budget shares); 0: the cohort is the whole population
    decisions: DecisionSpec | None = None  # a policy in the loop (``decisions.py``), from ``start_s`` on


@dataclass
class Loaded:
    """A model as a process holds it; ``cache``: one key-value cache for every cohort the process runs
    (allocating it is not free; what earlier users left in it is never attended to)."""

    model: EventTransformer
    schema: Schema
    context: pd.DataFrame | None
    cache: KVCache | None = None

    def kv_cache(self, rows: int) -> KVCache:
        if self.cache is None or self.cache.count.shape[0] != rows:
            self.cache = KVCache.empty(self.model.cfg, rows)
        return self.cache


def run_cohort(spec: RunSpec, loaded: Loaded, k: int, members: np.ndarray, part: Population,
               report: Report | None = None) -> dict:
    """Simulate cohort ``k``, the users ``members`` (population indices, the keys of their random streams)
    whose attributes and histories are ``part``, into ``spec.out``; returns its counts and seconds."""
    started = time.perf_counter()
    with one_thread():
        stats = Cohort(spec, loaded, k, members, part, report or (lambda *_: None)).run_to_end()
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats


class Cohort:
    """The users ``members`` (population indices; ``part``: their rows of the population) of the run ``spec``,
    from their histories' start to the run's end."""

    def __init__(self, spec: RunSpec, loaded: Loaded, cohort: int, members: np.ndarray, part: Population,
                 report: Report) -> None:
        self.run, self.schema, self.cohort, self.report = spec, loaded.schema, cohort, report
        n = len(members)
        self.n = n
        scenario = spec.scenario
        context = shocked_context(loaded.context, loaded.schema, scenario.shocks, spec.begin_s, spec.end_s)
        self.roll = Rollout(loaded.model, loaded.schema, context, spec.seed, n, spec.begin_s, idle=MIN_ROWS,
                            cache=loaded.kv_cache(spec.cache_rows))
        with torch.no_grad():
            static = loaded.model.static(torch.from_numpy(part.static_cat), torch.from_numpy(part.static_num))
        self.roll.start(np.arange(n), members, static, spec.begin_s)
        # per row: population index (the key of the user's random streams), user id, alive, campaign state
        self.members = members
        self.user_ids = part.users["user_id"].to_numpy()
        self.active = np.ones(n, dtype=bool)
        self.campaigns = scenario.campaigns
        self.targeting = Targeting(scenario, loaded.schema, part.users, members, spec.seed, spec.population or n)
        self.push = np.full((len(self.campaigns), n), np.inf)  # each campaign's next opportunity per row
        self.budgeted = np.array([c.budgeted for c in self.campaigns], dtype=bool)
        self.triggers = [(j, loaded.schema.event_types.index(c.at)) for j, c in enumerate(self.campaigns) if c.at]
        self.armed = np.full((len(self.campaigns), n), -np.inf)  # a trigger campaign's period end per row
        self.delay = np.zeros((len(self.campaigns), n))  # its exposure's seconds after the trigger
        self.imposed = np.zeros(n, dtype=bool)  # the row's pending event is an exposure
        self.exposures: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.buffers: dict[int, list[Events]] = {}  # day number -> events committed in it, until written
        self.written = 0
        self.total_days = int(round((spec.end_s - spec.begin_s) / DAY_S))
        self.stats = {"users": n, "events": 0, "history_events": 0, "exposures": 0, "ended": 0}
        self.decisions = None
        if spec.decisions is not None:
            self.decisions = Decisions(spec.decisions, loaded.schema, self.roll, part.users, members, spec.seed,
                                       spec.start_s)
            self.controlled = [loaded.schema.event_types.index(spec.decisions.event_type)]
            if part.history is not None or spec.start_s <= spec.begin_s:  # no sampled warm-up: controlled at once
                self.roll.exclude(self.controlled)
        silent_until = None
        if part.history is not None:
            self._replay(part.history)
            silent_until = part.history.observed_until_s  # the log saw nothing after each user's last event
        self.roll.propose(np.flatnonzero(self.active), silent_until)

    def run_to_end(self) -> dict:
        env = simpy.Environment()
        env.process(self._stepper(env))
        for j, c in enumerate(self.campaigns):
            env.process(self._campaign(env, j, c))
        if self.decisions is not None:
            env.process(self._policy(env))
        env.run()
        self._write_exposures()
        self._write_assignments()
        self.stats["ended"] = int((~self.active).sum())
        if self.decisions is not None:
            table = self.decisions.table()
            if table is not None:
                self.run.out.write_parquet(table, "decisions", part_name(self.cohort))
            self.stats["policy"] = self.decisions.finish()
        if self.campaigns:
            self.stats["campaigns"] = self.targeting.counts()
        return self.stats

    # -- processes --------------------------------------------------------------------------------------------
    def _stepper(self, env: simpy.Environment):
        """Run ahead to the next time a scenario process acts (at most AHEAD_DAYS), write the days done,
        let the scenario processes act, repeat."""
        while env.now < self.total_days:
            horizon = int(min(env.peek(), env.now + AHEAD_DAYS, self.total_days))
            if horizon > env.now:
                self._advance(self.run.begin_s + horizon * DAY_S)
                self._write_days(horizon)
            yield env.timeout(horizon - env.now)

    def _campaign(self, env: simpy.Environment, j: int, c: Campaign):
        """On each exposure day: the customers this campaign reaches (of those its static rules admit) get an
        opportunity, at a drawn time of the day or at their first trigger event of the period."""
        for day, until in c.periods():
            day_s = as_utc(day).timestamp()
            yield env.timeout((day_s - self.run.begin_s) / DAY_S - env.now)
            rows = np.flatnonzero(self.targeting.static[j] & self.active)
            u = kernels.uniforms(self.run.seed, self.members[rows], np.full(len(rows), int(day_s // DAY_S)),
                                 PURPOSE_CAMPAIGN + j, 2)
            hit = u[:, 1] < c.reach
            if c.at is None:
                self.push[j, rows[hit]] = day_s + (c.hours[0] + (c.hours[1] - c.hours[0]) * u[hit, 0]) * 3600.0
            else:
                self.armed[j, rows[hit]] = as_utc(until).timestamp()
                self.delay[j, rows[hit]] = TRIGGER_DELAY_S[0] + (TRIGGER_DELAY_S[1] - TRIGGER_DELAY_S[0]) * u[hit, 0]

    def _policy(self, env: simpy.Environment):
        """At the run's start the controlled type becomes the environment's (after a sampled warm-up in which
        the model drew it: pending draws are drawn again without it); then, for a learning policy, every day
        the outcomes whose window has closed are fed back (so the stepper runs at most a day ahead)."""
        run = self.run
        yield env.timeout((run.start_s - run.begin_s) / DAY_S - env.now)
        if self.roll.excluded is None:
            self.roll.exclude(self.controlled)
            drawn = np.flatnonzero(self.active & ~self.imposed)
            if len(drawn):
                self.roll.redraw(drawn, run.start_s)
        if not self.decisions.learns:
            return
        while env.now < self.total_days:
            self.decisions.feed_back(run.begin_s + env.now * DAY_S)
            yield env.timeout(1)

    # -- stepping ---------------------------------------------------------------------------------------------
    def _advance(self, horizon_s: float) -> None:
        """Commit every event due before ``horizon_s`` (opportunities before the drawn event come first)."""
        roll = self.roll
        while True:
            t_push = self.push.min(axis=0) if len(self.campaigns) else np.full(self.n, np.inf)
            t_next = roll.pending["t_next"][: self.n]
            soonest = np.minimum(t_next, t_push)
            if self.decisions is not None:
                soonest = np.minimum(soonest, self.decisions.due)
            rows = np.flatnonzero(self.active & (soonest < horizon_s))
            if not len(rows):
                return
            if self.decisions is not None:  # a decision due before the row's next event: ask, maybe show
                due = self.decisions.due[rows]
                deciding = rows[(due <= np.minimum(t_next[rows], t_push[rows])) & ~self.imposed[rows]]
                if len(deciding):
                    self._show(deciding)
                    continue
            pushed = rows[(t_push[rows] <= t_next[rows]) & ~self.imposed[rows]]  # (an exposure first commits)
            if len(pushed):
                waiting, passed = self._expose(pushed, t_next)
                if passed:  # an opportunity came to nothing: the row's next event is another one, or its draw
                    continue
                rows = rows[~np.isin(rows, waiting)]
            events = roll.commit(rows)
            own = ~self.imposed[rows]
            self.imposed[rows] = False
            self.targeting.observe(rows, events.type, events.marks, events.time_s, own)
            if self.decisions is not None:
                self.decisions.observe(rows, events)
            for j, code in self.triggers:
                fire = (events.type == code) & (events.time_s < self.armed[j, rows])
                hit = rows[fire]
                self.push[j, hit] = events.time_s[fire] + self.delay[j, hit]
                self.armed[j, hit] = -np.inf
            day = ((events.time_s - self.run.begin_s) // DAY_S).astype(np.int64)
            for d in np.unique(day):
                self.buffers.setdefault(int(d), []).append(events.take(np.flatnonzero(day == d)))
            self.active[rows[roll.is_terminal(events.type)]] = False
            going = rows[self.active[rows]]
            if len(going):
                roll.propose(going)

    def _expose(self, pushed: np.ndarray, t_next: np.ndarray) -> tuple[np.ndarray, bool]:
        """Decide the earliest opportunity of each row of ``pushed``, imposing those that become exposures;
        returns the rows that must wait (a budgeted opportunity later than some customer of the cohort has been
        simulated to, while an earlier one that may still come could take its budget) and whether any
        opportunity came to nothing."""
        push = self.push
        which = push[:, pushed].argmin(axis=0)
        at = push[which, pushed]
        waiting = pushed[:0]
        if self.budgeted.any():
            alive = self.active
            unbudgeted = push[~self.budgeted].min(axis=0, initial=np.inf)  # their exposures may trigger others
            frontier = np.minimum(t_next, unbudgeted)[alive].min(initial=np.inf)
            ready = ~self.budgeted[which] | (at <= frontier)
            if not ready.all():  # no wait where the order cannot matter: no budget left, or enough for all
                pending = np.isfinite(push).sum(axis=1) + ((self.armed > -np.inf) & alive).sum(axis=1)
                ready[~ready] = self.targeting.uncontested(which[~ready], at[~ready], pending)
            waiting, pushed, which, at = pushed[~ready], pushed[ready], which[ready], at[ready]
        exposed = self.targeting.decide(pushed, which, at)
        push[which, pushed] = np.inf
        for j, c in enumerate(self.campaigns):
            hit = exposed & (which == j)
            if hit.any():
                _impose(self.roll, self.schema, c, pushed[hit], at[hit])
                # the time the exposure event got (a second after the row's latest event at the earliest)
                self.exposures.append((pushed[hit], self.roll.pending["t_next"][pushed[hit]].copy(), j))
        self.imposed[pushed[exposed]] = True
        return waiting, bool((~exposed).any())

    def _show(self, rows: np.ndarray) -> None:
        """The policy decides the pending decisions of ``rows``; the offers it shows become their next events."""
        shown, at, product, channel = self.decisions.decide(rows)
        if not len(shown):
            return
        spec, schema = self.run.decisions, self.schema
        marks = np.zeros((len(shown), len(schema.marks)), dtype=np.int64)
        marks[:, list(schema.marks).index(spec.mark)] = product
        if "channel" in schema.marks:
            marks[:, list(schema.marks).index("channel")] = channel
        self.roll.impose(shown, at, np.full(len(shown), schema.event_types.index(spec.event_type)), marks,
                         np.full(len(shown), np.nan))
        self.imposed[shown] = True

    def _replay(self, history: History) -> None:
        """Feed each user's known events to the model in order (lockstep over event numbers); users whose
        last event is terminal stay ended."""
        roll, lengths = self.roll, np.diff(history.offsets)
        for k in range(int(lengths.max(initial=0))):
            rows = np.flatnonzero(lengths > k)
            if k:
                roll.feed(rows)
            index = history.offsets[rows] + k
            roll.impose(rows, history.time_s[index], history.type[index], history.marks[index],
                        history.amount[index])
            events = roll.commit(rows)
            self.targeting.observe(rows, events.type, events.marks, events.time_s, np.ones(len(rows), dtype=bool))
            if self.decisions is not None:
                self.decisions.observe(rows, events)
        has = lengths > 0
        last = history.offsets[1:][has] - 1
        self.active[np.flatnonzero(has)[roll.is_terminal(history.type[last])]] = False

    # -- output -----------------------------------------------------------------------------------------------
    def _write_days(self, until: int) -> None:
        run = self.run
        for d in range(self.written, until):
            events = Events.concat(self.buffers.pop(d, []), len(self.schema.marks))
            day_start = run.begin_s + d * DAY_S
            dataset = "events" if day_start >= run.start_s else "history"
            self.stats["events" if dataset == "events" else "history_events"] += len(events)
            day = pd.Timestamp(day_start, unit="s")
            if len(events):
                events = events.take(np.lexsort((events.time_s, events.user)))
                run.out.write_day(dataset, day, self.cohort, events_frame(events, self.user_ids, self.schema))
            self.report(day.tz_localize("UTC"), self.stats["events"] + self.stats["history_events"],
                        int(self.active.sum()), (d + 1) / self.total_days)
        self.written = until

    def _write_exposures(self) -> None:
        if not self.exposures:
            return
        rows = np.concatenate([e[0] for e in self.exposures])
        at = np.concatenate([e[1] for e in self.exposures])
        names = [c.name for c in self.campaigns]
        order = np.lexsort((at, rows))
        self.run.out.write_parquet(pd.DataFrame({
            "user_id": self.user_ids[rows[order]],
            "timestamp": pd.to_datetime(np.round(at[order] * 1e6).astype(np.int64), unit="us", utc=True),
            "campaign": pd.Categorical.from_codes(np.concatenate([[e[2]] * len(e[0]) for e in self.exposures])[order],
                                                  categories=names)}),
            "exposures", part_name(self.cohort))
        self.stats["exposures"] = len(rows)

    def _write_assignments(self) -> None:
        rows, which, arm = self.targeting.assignments()
        if not len(rows):
            return
        order = np.lexsort((which, rows))
        self.run.out.write_parquet(pd.DataFrame({
            "user_id": self.user_ids[rows[order]],
            "campaign": pd.Categorical.from_codes(which[order], categories=[c.name for c in self.campaigns]),
            "arm": pd.Categorical.from_codes(arm[order] - 1, categories=ARMS)}), "assignments", part_name(self.cohort))


def _impose(roll: Rollout, schema, c: Campaign, rows: np.ndarray, at_s: np.ndarray) -> None:
    marks = np.zeros((len(rows), len(schema.marks)), dtype=np.int64)
    for j, name in enumerate(schema.marks):
        if name in c.marks:
            marks[:, j] = schema.marks[name].index(c.marks[name])
    roll.impose(rows, at_s, np.full(len(rows), schema.event_types.index(c.event_type)), marks,
                np.full(len(rows), np.nan))

