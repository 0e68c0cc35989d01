"""The simulation engine: a population of synthetic customers living on in SimPy time.

The population is split into cohorts of ``cohort_size`` users, simulated one after the other, so memory
holds one cohort's model state (about 35 KB a user) whatever the population size or the number of days.
Within a cohort a SimPy environment runs in days:

* the **population stepper** wakes at the end of every simulated day and advances every user whose next
  event falls in that day, in batches (``models.rollout``): commit the due events, draw each of those
  users' next event, repeat until nobody is due before midnight; then the day's events are written;
* each **campaign** of the scenario (``scenarios/scenario.py``) wakes on its exposure days and schedules
  an exposure for the users of its segment it reaches; the stepper imposes it at its time, replacing the
  user's pending draw, and the model draws what the user does next given it.

Every draw comes from the user's own random streams (seed, user, event number, purpose) and every network
call is padded to the same row count, so a user's events depend neither on the cohort size nor on the
other users: two runs that differ only by scenario are identical for users the scenario never touches and
for everyone before it first acts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import simpy
import torch

from models import kernels
from models.errors import OutputExistsError, TwinsimError
from models.generate import events_frame
from models.model_dir import load_model, read_table
from models.rollout import Events, Rollout
from models.rowwise import MIN_ROWS
from scenarios.scenario import Campaign, Scenario, load_scenario
from simulator import sink
from simulator.population import Population, as_utc, history_population, new_population

PURPOSE_CAMPAIGN = 20  # + campaign index: exposure time and reach
DAY_S = 86400.0


@dataclass
class SimulateConfig:
    users: int | None = 1000  # new customers; None with ``history``: every customer of the log
    start: str | None = None  # first simulated day (UTC); default: the day after the history's last event
    days: int = 30
    seed: int = 0
    scenario: str = "baseline"  # a TOML file or a built-in scenario name
    history_days: int = 30  # sampled warm-up before ``start`` for new customers (0: none)
    history: str | None = None  # an event log whose customers are continued from their last event
    cohort_size: int = 16384

    def validate(self) -> None:
        if self.history is None and (self.users is None or self.users < 1):
            raise TwinsimError(f"--users must be at least 1 (got {self.users}); e.g. --users 10000")
        if self.history is None and self.start is None:
            raise TwinsimError("--start is required without --history; e.g. --start 2026-01-01")
        if self.days < 1:
            raise TwinsimError(f"--days must be at least 1 (got {self.days}); e.g. --days 30")
        if self.history_days < 0:
            raise TwinsimError(f"--history-days must be 0 or more (got {self.history_days})")
        if self.cohort_size < 1:
            raise TwinsimError(f"--cohort-size must be at least 1 (got {self.cohort_size}); e.g. 16384")


@dataclass
class Progress:
    """What a progress line shows; ``fraction`` of the whole run done."""

    cohort: int
    cohorts: int
    date: pd.Timestamp
    events: int
    alive: int
    elapsed_s: float
    fraction: float

    @property
    def events_per_s(self) -> float:
        return self.events / max(self.elapsed_s, 1e-9)

    @property
    def eta_s(self) -> float:
        return self.elapsed_s * (1.0 - self.fraction) / max(self.fraction, 1e-9)


@dataclass
class Run:
    """Everything a cohort needs, resolved once per run."""

    model: torch.nn.Module
    schema: object
    context: pd.DataFrame | None
    population: Population
    scenario: Scenario
    config: SimulateConfig
    out: Path
    begin_s: float  # where users' histories begin (sampled warm-up or the given log)
    start_s: float  # the first simulated second
    end_s: float
    counts: dict = field(default_factory=dict)


def simulate(model_dir: str | Path, config: SimulateConfig, out: str | Path, resume: bool = False,
             overwrite: bool = False, on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Simulate ``config`` with the model in ``model_dir`` into run directory ``out``; returns the manifest."""
    config.validate()
    model_dir, out = Path(model_dir), Path(out)
    model, schema, _ = load_model(model_dir)
    population = (history_population(Path(config.history), schema) if config.history
                  else new_population(model_dir, schema, int(config.users), config.seed))
    start = _start(config, population)
    scenario = load_scenario(config.scenario, schema, start.tz_localize(None))
    for c in scenario.campaigns:
        if c.start < start.tz_localize(None) or c.end > start.tz_localize(None) + pd.Timedelta(days=config.days):
            raise TwinsimError(f"{scenario.source}: campaign {c.name!r} runs {c.start.date()} to {c.end.date()}, "
                               f"outside the simulated days {start.date()} + {config.days} days; move it inside "
                               "or use day numbers of the run (start = 7)")
    start_s = start.timestamp()
    if population.history is not None:
        first = pd.Timestamp(population.history.time_s.min(), unit="s", tz="UTC").normalize()
        begin_s = min(first.timestamp(), start_s)
    else:
        begin_s = start_s - config.history_days * DAY_S
    run = Run(model, schema, read_table(model_dir, "context"), population, scenario, config, out, begin_s,
              start_s, start_s + config.days * DAY_S)
    identity = {"config": asdict(config), "start": start.isoformat(), "model": str(model_dir),
                "model_sha256": _model_hash(model_dir), "scenario": scenario.to_json(),
                "scenario_sha256": hashlib.sha256(json.dumps(scenario.to_json(), sort_keys=True).encode()).hexdigest()}
    manifest = _open_run(out, identity, resume, overwrite)
    if not (out / "users.parquet").exists():
        sink.write_atomic(population.users, out / "users.parquet")
    cohorts = [np.arange(i, min(i + config.cohort_size, len(population)))
               for i in range(0, len(population), config.cohort_size)]
    done = {int(k): v for k, v in manifest["cohorts_done"].items()}
    started, events_before = time.perf_counter(), sum(v["events"] for v in done.values())
    for k, members in enumerate(cohorts):
        if k in done:
            continue
        sink.remove_cohort(out, k)  # whatever an interrupted attempt left
        t0 = time.perf_counter()

        def report(date: pd.Timestamp, events: int, alive: int, fraction_of_cohort: float, k=k) -> None:
            if on_progress is not None:
                finished = sum(len(cohorts[j]) for j in done) + fraction_of_cohort * len(cohorts[k])
                on_progress(Progress(k, len(cohorts), date, events, alive, time.perf_counter() - started,
                                     finished / len(population)))

        done[k] = run_cohort(run, k, members, report)
        done[k]["seconds"] = round(time.perf_counter() - t0, 3)
        manifest["cohorts_done"] = {str(j): v for j, v in sorted(done.items())}
        sink.write_json_atomic(manifest, out / "manifest.json")
    totals = {key: int(sum(v[key] for v in done.values())) for key in ("events", "history_events", "exposures",
                                                                       "ended")}
    seconds = time.perf_counter() - started
    manifest.update(status="complete", users=len(population), cohorts=len(cohorts), **totals,
                    seconds_this_attempt=round(seconds, 3),
                    events_per_second_this_attempt=round((totals["events"] + totals["history_events"]
                                                         - events_before) / max(seconds, 1e-9)))
    sink.write_json_atomic(manifest, out / "manifest.json")
    return manifest


def run_cohort(run: Run, cohort: int, members: np.ndarray,
               report: Callable[[pd.Timestamp, int, int, float], None]) -> dict:
    """Simulate the users ``members`` (population indices) from their history's start to the run's end."""
    n = len(members)
    roll = Rollout(run.model, run.schema, run.context, run.config.seed, n, run.begin_s, idle=MIN_ROWS)
    pop = run.population
    with torch.no_grad():
        static = run.model.static(torch.from_numpy(pop.static_cat[members]), torch.from_numpy(pop.static_num[members]))
    roll.start(np.arange(n), members, static, run.begin_s)
    active = np.ones(n, dtype=bool)
    if pop.history is not None:
        _replay(roll, pop.history.of(members), active)
    user_ids = pop.users["user_id"].to_numpy()[members]
    campaigns = [(c, _segment(c, pop.users.iloc[members])) for c in run.scenario.campaigns]
    push = np.full((len(campaigns), n), np.inf)  # each campaign's next exposure time per user
    exposures: list[tuple[np.ndarray, np.ndarray, int]] = []
    stats = {"users": n, "events": 0, "history_events": 0, "exposures": 0, "ended": int((~active).sum())}
    env = simpy.Environment()
    total_days = int(round((run.end_s - run.begin_s) / DAY_S))
    roll.propose(np.flatnonzero(active))

    def stepper():
        while env.now < total_days:
            yield env.timeout(1)  # the day [now - 1, now) is over: live it
            day_end = run.begin_s + env.now * DAY_S
            parts = []
            while True:
                t_push = push.min(axis=0) if len(campaigns) else np.full(n, np.inf)
                t_next = roll.pending["t_next"][:n]
                rows = np.flatnonzero(active & (np.minimum(t_next, t_push) < day_end))
                if not len(rows):
                    break
                pushed = rows[t_push[rows] <= t_next[rows]]
                if len(pushed):
                    which = push[:, pushed].argmin(axis=0)
                    for j, (c, _) in enumerate(campaigns):
                        hit = pushed[which == j]
                        if len(hit):
                            _impose(roll, run.schema, c, hit, push[j, hit])
                            exposures.append((hit, push[j, hit].copy(), j))
                            push[j, hit] = np.inf
                events = roll.commit(rows)
                parts.append(events)
                ended = rows[roll.is_terminal(events.type)]
                active[ended] = False
                going = rows[active[rows]]
                if len(going):
                    roll.propose(going)
            events = Events.concat(parts, len(run.schema.marks))
            day = pd.Timestamp(day_end - DAY_S, unit="s", tz="UTC")
            dataset = "events" if day_end > run.start_s else "history"
            stats["events" if dataset == "events" else "history_events"] += len(events)
            if len(events):
                events = events.take(np.lexsort((events.time_s, events.user)))
                sink.write_day(run.out, dataset, day.tz_localize(None), cohort,
                               events_frame(events, user_ids, run.schema))
            report(day, stats["events"] + stats["history_events"], int(active.sum()), env.now / total_days)

    def campaign(j: int, c: Campaign, members_in: np.ndarray):
        for day in c.exposure_days():
            day_s = as_utc(day).timestamp()
            yield env.timeout((day_s - run.begin_s) / DAY_S - env.now)
            u = kernels.uniforms(run.config.seed, members[members_in], np.full(len(members_in), int(day_s // DAY_S)),
                                 PURPOSE_CAMPAIGN + j, 2)
            reached = members_in[(u[:, 1] < c.reach) & active[members_in]]
            hours = c.hours[0] + (c.hours[1] - c.hours[0]) * u[(u[:, 1] < c.reach) & active[members_in], 0]
            push[j, reached] = day_s + hours * 3600.0

    env.process(stepper())
    for j, (c, members_in) in enumerate(campaigns):
        env.process(campaign(j, c, members_in))
    env.run()
    if exposures:
        rows = np.concatenate([e[0] for e in exposures])
        sink.write_atomic(pd.DataFrame({
            "user_id": user_ids[rows],
            "timestamp": pd.to_datetime(np.round(np.concatenate([e[1] for e in exposures]) * 1e6).astype(np.int64),
                                        unit="us", utc=True),
            "campaign": pd.Categorical(np.concatenate([[campaigns[e[2]][0].name] * len(e[0]) for e in exposures]),
                                       categories=[c.name for c, _ in campaigns])}),
            run.out / "exposures" / sink.part_name(cohort))
        stats["exposures"] = int(len(rows))
    stats["ended"] = int((~active).sum())
    return stats


def _replay(roll: Rollout, history, active: np.ndarray) -> None:
    """Feed each row's known events to the model in order (lockstep over event numbers); users whose last
    event is terminal stay ended."""
    lengths = np.diff(history.offsets)
    for k in range(int(lengths.max(initial=0))):
        rows = np.flatnonzero(lengths > k)
        if k:
            roll.feed(rows)
        index = history.offsets[rows] + k
        roll.impose(rows, history.time_s[index], history.type[index], history.marks[index], history.amount[index])
        roll.commit(rows)
    has = lengths > 0
    last = history.offsets[1:][has] - 1
    active[np.flatnonzero(has)[roll.is_terminal(history.type[last])]] = False


def _impose(roll: Rollout, schema, c: Campaign, rows: np.ndarray, at_s: np.ndarray) -> None:
    marks = np.zeros((len(rows), len(schema.marks)), dtype=np.int64)
    for j, name in enumerate(schema.marks):
        if name in c.marks:
            marks[:, j] = schema.marks[name].index(c.marks[name])
    roll.impose(rows, at_s, np.full(len(rows), schema.event_types.index(c.event_type)), marks,
                np.full(len(rows), np.nan))


def _segment(c: Campaign, users: pd.DataFrame) -> np.ndarray:
    """Positions (within the cohort) of the users in the campaign's segment."""
    mask = np.ones(len(users), dtype=bool)
    for name, values in c.segment.items():
        mask &= users[name].astype(str).isin(values).to_numpy()
    return np.flatnonzero(mask)


def _start(config: SimulateConfig, population: Population) -> pd.Timestamp:
    if config.start is not None:
        start = as_utc(config.start)
    else:
        start = pd.Timestamp(population.history.time_s.max(), unit="s", tz="UTC").normalize() + pd.Timedelta(days=1)
    if population.history is not None and len(population.history.time_s):
        latest = population.history.time_s.max()
        if latest >= start.timestamp():
            raise TwinsimError(f"--start {start.date()}: the history has events up to "
                               f"{pd.Timestamp(latest, unit='s', tz='UTC')}; continue from after them, e.g. "
                               f"--start {(pd.Timestamp(latest, unit='s').normalize() + pd.Timedelta(days=1)).date()}")
    return start


def _model_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.json", "model.pt"):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()


def _open_run(out: Path, identity: dict, resume: bool, overwrite: bool) -> dict:
    """The run's manifest: a new one, or with ``resume`` the interrupted run's (which must match)."""
    path = out / "manifest.json"
    if resume:
        if not path.exists():
            raise TwinsimError(f"--resume: {out} holds no run to resume (no manifest.json); start it without --resume")
        manifest = json.loads(path.read_text())
        differs = [k for k in identity if json.dumps(manifest.get(k), sort_keys=True, default=str)
                   != json.dumps(identity[k], sort_keys=True, default=str)]
        if differs:
            raise TwinsimError(f"--resume: {out} was started with a different {', '.join(differs)}; rerun with the "
                               "same options, or use a new output directory")
        return manifest
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace it, or --resume to finish an "
                                    "interrupted run")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"twinsim": "simulate", **identity, "status": "running", "cohorts_done": {}}
    sink.write_json_atomic(manifest, path)
    return manifest
