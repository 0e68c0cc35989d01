"""One cohort of users simulated in SimPy time: the population stepper and the campaign processes.

The stepper runs the cohort ahead to the next time a scenario process acts (``env.peek()``), at most
``AHEAD_DAYS`` at a time: it commits every user's events due before that horizon, in rounds (each round
commits the next event of every user still due and draws their following one), then writes the days
that are complete.

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
from twinsim.simulator.population import History, Population, as_utc
from twinsim.simulator.sink import Output, part_name

PURPOSE_CAMPAIGN = 20  # + campaign index: exposure time and reach
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
        self.roll = Rollout(loaded.model, loaded.schema, loaded.context, spec.seed, n, spec.begin_s, idle=MIN_ROWS,
                            cache=loaded.kv_cache(spec.cache_rows))
        with torch.no_grad():
            static = loaded.model.static(torch.from_numpy(part.static_cat), torch.from_numpy(part.static_num))
        self.roll.start(np.arange(n), members, static, spec.begin_s)
        # per row: population index (the key of the user's random streams), user id, alive, campaign state
        self.members = members
        self.user_ids = part.users["user_id"].to_numpy()
        self.active = np.ones(n, dtype=bool)
        self.campaigns = spec.scenario.campaigns
        self.in_segment = np.array([_segment(c, part.users) for c in self.campaigns]).reshape(-1, n)
        self.push = np.full((len(self.campaigns), n), np.inf)  # each campaign's next exposure time per row
        self.exposures: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.buffers: dict[int, list[Events]] = {}  # day number -> events committed in it, until written
        self.written = 0
        self.total_days = int(round((spec.end_s - spec.begin_s) / DAY_S))
        self.stats = {"users": n, "events": 0, "history_events": 0, "exposures": 0, "ended": 0}
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
            u = kernels.uniforms(self.run.seed, self.members[rows], np.full(len(rows), int(day_s // DAY_S)),
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
                        _impose(roll, self.schema, c, hit, push[j, hit])
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
