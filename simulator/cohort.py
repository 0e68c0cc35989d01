"""One cohort of users simulated in SimPy time: the population stepper and the campaign processes.

The stepper runs the cohort ahead to the next time a scenario process acts (``env.peek()``), at most
``AHEAD_DAYS`` at a time: it commits every user's events due before that horizon, in rounds (each round
commits the next event of every user still due and draws their following one), then writes the days
that are complete.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import simpy
import torch

from twinsim.models import kernels
from twinsim.models.generate import events_frame
from twinsim.models.rollout import Events, Rollout
from twinsim.models.rowwise import MIN_ROWS
from twinsim.scenarios.scenario import Campaign
from twinsim.simulator import sink
from twinsim.simulator.population import History, as_utc

PURPOSE_CAMPAIGN = 20  # + campaign index: exposure time and reach
DAY_S = 86400.0
AHEAD_DAYS = 7  # the stepper runs at most this far ahead before writing (memory: a cohort's week of events)


class Cohort:
    """The users ``members`` (population indices) of ``run``, from their histories' start to the run's end."""

    def __init__(self, run, cohort: int, members: np.ndarray,
                 report: Callable[[pd.Timestamp, int, int, float], None]) -> None:
        self.run, self.cohort, self.report = run, cohort, report
        pop, n = run.population, len(members)
        self.n = n
        self.roll = Rollout(run.model, run.schema, run.context, run.config.seed, n, run.begin_s, idle=MIN_ROWS,
                            cache=run.cache)
        with torch.no_grad():
            static = run.model.static(torch.from_numpy(pop.static_cat[members]),
                                      torch.from_numpy(pop.static_num[members]))
        self.roll.start(np.arange(n), members, static, run.begin_s)
        # per row: population index (the key of the user's random streams), user id, alive, campaign state
        self.members = members
        self.user_ids = pop.users["user_id"].to_numpy()[members]
        self.active = np.ones(n, dtype=bool)
        self.campaigns = run.scenario.campaigns
        self.in_segment = np.array([_segment(c, pop.users.iloc[members]) for c in self.campaigns]).reshape(-1, n)
        self.push = np.full((len(self.campaigns), n), np.inf)  # each campaign's next exposure time per row
        self.exposures: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.buffers: dict[int, list[Events]] = {}  # day number -> events committed in it, until written
        self.written = 0
        self.total_days = int(round((run.end_s - run.begin_s) / DAY_S))
        self.stats = {"users": n, "events": 0, "history_events": 0, "exposures": 0, "ended": 0}
        silent_until = None
        if pop.history is not None:
            self._replay(pop.history.of(members))
            silent_until = pop.history.observed_until_s  # the log saw nothing after each user's last event
        self.roll.propose(np.flatnonzero(self.active), silent_until)

    def run_to_end(self) -> dict:
        env = simpy.Environment()
        env.process(self._stepper(env))
        for j, c in enumerate(self.campaigns):
            env.process(self._campaign(env, j, c))
        env.run()
        self._write_exposures()
        self.stats["ended"] = int((~self.active).sum())
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
        """On each exposure day: the users of the segment this campaign reaches get an exposure scheduled."""
        for day in c.exposure_days():
            day_s = as_utc(day).timestamp()
            yield env.timeout((day_s - self.run.begin_s) / DAY_S - env.now)
            rows = np.flatnonzero(self.in_segment[j] & self.active)
            u = kernels.uniforms(self.run.config.seed, self.members[rows], np.full(len(rows), int(day_s // DAY_S)),
                                 PURPOSE_CAMPAIGN + j, 2)
            hit = u[:, 1] < c.reach
            self.push[j, rows[hit]] = day_s + (c.hours[0] + (c.hours[1] - c.hours[0]) * u[hit, 0]) * 3600.0

    # -- stepping ---------------------------------------------------------------------------------------------
    def _advance(self, horizon_s: float) -> None:
        """Commit every event due before ``horizon_s`` (exposures before the drawn event come first)."""
        roll, push = self.roll, self.push
        while True:
            t_push = push.min(axis=0) if len(self.campaigns) else np.full(self.n, np.inf)
            t_next = roll.pending["t_next"][: self.n]
            rows = np.flatnonzero(self.active & (np.minimum(t_next, t_push) < horizon_s))
            if not len(rows):
                return
            pushed = rows[t_push[rows] <= t_next[rows]]
            if len(pushed):
                which = push[:, pushed].argmin(axis=0)
                for j, c in enumerate(self.campaigns):
                    hit = pushed[which == j]
                    if len(hit):
                        _impose(roll, self.run.schema, c, hit, push[j, hit])
                        self.exposures.append((hit, push[j, hit].copy(), j))
                        push[j, hit] = np.inf
            events = roll.commit(rows)
            day = ((events.time_s - self.run.begin_s) // DAY_S).astype(np.int64)
            for d in np.unique(day):
                self.buffers.setdefault(int(d), []).append(events.take(np.flatnonzero(day == d)))
            self.active[rows[roll.is_terminal(events.type)]] = False
            going = rows[self.active[rows]]
            if len(going):
                roll.propose(going)

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
            roll.commit(rows)
        has = lengths > 0
        last = history.offsets[1:][has] - 1
        self.active[np.flatnonzero(has)[roll.is_terminal(history.type[last])]] = False

    # -- output -----------------------------------------------------------------------------------------------
    def _write_days(self, until: int) -> None:
        run = self.run
        for d in range(self.written, until):
            events = Events.concat(self.buffers.pop(d, []), len(run.schema.marks))
            day_start = run.begin_s + d * DAY_S
            dataset = "events" if day_start >= run.start_s else "history"
            self.stats["events" if dataset == "events" else "history_events"] += len(events)
            day = pd.Timestamp(day_start, unit="s")
            if len(events):
                events = events.take(np.lexsort((events.time_s, events.user)))
                sink.write_day(run.out, dataset, day, self.cohort, events_frame(events, self.user_ids, run.schema))
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
        sink.write_atomic(pd.DataFrame({
            "user_id": self.user_ids[rows[order]],
            "timestamp": pd.to_datetime(np.round(at[order] * 1e6).astype(np.int64), unit="us", utc=True),
            "campaign": pd.Categorical.from_codes(np.concatenate([[e[2]] * len(e[0]) for e in self.exposures])[order],
                                                  categories=names)}),
            self.run.out / "exposures" / sink.part_name(self.cohort))
        self.stats["exposures"] = len(rows)


def _impose(roll: Rollout, schema, c: Campaign, rows: np.ndarray, at_s: np.ndarray) -> None:
    marks = np.zeros((len(rows), len(schema.marks)), dtype=np.int64)
    for j, name in enumerate(schema.marks):
        if name in c.marks:
            marks[:, j] = schema.marks[name].index(c.marks[name])
    roll.impose(rows, at_s, np.full(len(rows), schema.event_types.index(c.event_type)), marks,
                np.full(len(rows), np.nan))


def _segment(c: Campaign, users: pd.DataFrame) -> np.ndarray:
    """Per user of ``users``: in the campaign's segment?"""
    mask = np.ones(len(users), dtype=bool)
    for name, values in c.segment.items():
        mask &= users[name].astype(str).isin(values).to_numpy()
    return mask
