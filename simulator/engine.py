"""The simulation engine: a population of synthetic customers living on in SimPy time.

The population is split into cohorts of ``cohort_size`` users, so memory holds one cohort's model state
(about 35 KB a user) per process whatever the population size or the number of days. Cohorts are
independent: they run one after the other in this process, or side by side in worker processes or Ray
tasks (``simulator/parallel.py``), and the parent records each in the manifest as it finishes, so an
interrupted run resumes with any number of workers. Within a cohort a SimPy environment keeps time in
days (``simulator/cohort.py``):

* the **population stepper** runs the cohort ahead to the next time a scenario process acts (at most a
  week): it commits, in batches (``models.rollout``), every event due before that horizon and draws each
  user's next one, then writes the days that are done, one Parquet partition per day;
* each **campaign** of the scenario (``scenarios/scenario.py``) wakes on its exposure days and gives the
  customers it reaches an opportunity, at a drawn time or at their next trigger event (``at``); the
  stepper has ``interventions.Targeting`` decide it (eligibility, control arm, frequency cap, budget) and
  imposes an exposure at its time, replacing the user's pending draw, so the model draws what the user
  does next given it; shocks change the daily context the model reads (``interventions.shocked_context``).

Every draw comes from the user's own random streams (seed, user, event number, purpose), every network
call is padded to the same row count and runs on one torch thread, so a user's events depend neither on
the cohort size, nor on the other users, nor on where the cohort runs: two runs that differ only by
scenario are identical for users the scenario never touches and for everyone before it first acts.
The one exception is a campaign budget: each cohort gets its pro-rata share of it (deterministic), so which
customers an exhausted budget leaves out depends on the cohort split; the manifest records
``cohort_size``, and a resumed run keeps it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import load_model, read_table
from twinsim.models.profile import without_profile
from twinsim.models.rowwise import MIN_ROWS
from twinsim.scenarios.scenario import load_scenario
from twinsim.simulator import parallel, sink
from twinsim.simulator.cohort import DAY_S, Loaded, RunSpec
from twinsim.simulator.decisions import DecisionSpec, policy_totals
from twinsim.simulator.population import Population, as_utc, history_population, new_population


@dataclass
class SimulateConfig:
    users: int | None = 1000  # new customers; None with ``history``: every customer of the log
    start: str | None = None  # first simulated day (UTC); default: the day after the history's last event
    days: int = 30
    seed: int = 0
    scenario: str = "baseline"  # a TOML file or a built-in scenario name
    history_days: int = 30  # sampled warm-up before ``start`` for new customers (0: none)
    history: str | None = None  # an event log whose customers are continued from the end of its observation
    observed_until: str | None = None  # with ``history``: when its observation ended (default: end of its last day)
    cohort_size: int | None = None  # users per cohort; None: ``cohort_size_for`` the population and workers

    def validate(self) -> None:
        if self.history is None and (self.users is None or self.users < 1):
            raise TwinsimError(f"--users must be at least 1 (got {self.users}); e.g. --users 10000")
        if self.history is None and self.start is None:
            raise TwinsimError("--start is required without --history; e.g. --start 2026-01-01")
        if self.history is None and self.observed_until is not None:
            raise TwinsimError("--observed-until applies to --history only: it says when the log's observation "
                               "ended; drop it, or give --history LOG")
        if self.days < 1:
            raise TwinsimError(f"--days must be at least 1 (got {self.days}); e.g. --days 30")
        if self.history_days < 0:
            raise TwinsimError(f"--history-days must be 0 or more (got {self.history_days})")
        if self.cohort_size is not None and self.cohort_size < 1:
            raise TwinsimError(f"--cohort-size must be at least 1 (got {self.cohort_size}); e.g. 16384")


@dataclass
class Progress:
    """What a progress line shows: ``events`` sampled by this attempt (history included) in ``elapsed_s``,
    users alive in the current cohort, ``fraction`` of the whole run done."""

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


def simulate(model_dir: str | Path, config: SimulateConfig, out: str | Path, resume: bool = False,
             overwrite: bool = False, on_progress: Callable[[Progress], None] | None = None,
             workers: int | None = None, ray: str | None = None, decisions: DecisionSpec | None = None) -> dict:
    """Simulate ``config`` with the model in ``model_dir`` into run directory ``out`` (a path, or a URI pyarrow
    opens: ``s3://bucket/run``); returns the manifest. The cohorts run in ``workers`` processes (default 1:
    this one), or with ``ray`` (an address, ``auto``, or ``local``: a new instance of ``workers`` CPUs, default
    every core) as Ray tasks (``parallel.py``); the output is the same bits either way. ``decisions``: a policy
    in the loop from the start (``decisions.py``), its decisions in ``decisions/``."""
    config.validate()
    if workers is not None and workers < 1:
        raise TwinsimError(f"--workers must be at least 1 (got {workers}); e.g. --workers 4")
    if ray is not None:
        parallel.require_ray()
    output = sink.Output(out)
    model_dir = Path(model_dir)
    model, schema, _ = load_model(model_dir)
    population = (history_population(Path(config.history), schema, config.observed_until) if config.history
                  else new_population(model_dir, schema, int(config.users), config.seed))
    start = _start(config, population)
    scenario = load_scenario(config.scenario, schema, start.tz_localize(None))
    _check_inside(scenario, start.tz_localize(None), config.days)
    if decisions is not None:
        decisions.check(schema)
        _check_policy(decisions, scenario)
    start_s = start.timestamp()
    if population.history is not None:
        first = pd.Timestamp(population.history.time_s.min(), unit="s", tz="UTC").normalize()
        begin_s = min(first.timestamp(), start_s)
    else:
        begin_s = start_s - config.history_days * DAY_S
    model_sha256 = model_hash(model_dir)
    identity = {"config": asdict(config), "start": start.isoformat(), **_history_identity(population, start),
                "model": str(model_dir),
                "model_sha256": model_sha256, "scenario": scenario.to_json(),
                "scenario_sha256": hashlib.sha256(json.dumps(scenario.to_json(), sort_keys=True).encode()).hexdigest()}
    if decisions is not None:
        identity["policy"] = asdict(decisions)
    manifest = _open_run(output, identity, resume, overwrite)
    if ray is not None and workers is None:
        workers = parallel.default_workers()  # the CPUs of a --ray local instance
    # how this attempt ran: information only, not the run's identity (any count resumes to the same bits)
    manifest["execution"] = {"workers": (workers or 1) if ray in (None, "local") else None, "ray": ray,
                             "torch_threads": 1}
    # the cohorts of the first attempt, whatever this one's workers: a resumed run must cut the same ones
    size = config.cohort_size or manifest.get("cohort_size") or cohort_size_for(len(population), workers or 1)
    manifest["cohort_size"] = size
    output.write_json(manifest, "manifest.json")  # before any cohort: an attempt cut short keeps its cohorts
    spec = RunSpec(str(model_dir), model_sha256, config.seed, scenario, output, begin_s, start_s,
                   start_s + config.days * DAY_S, min(size, len(population)) + MIN_ROWS, len(population), decisions)
    if not output.exists("users.parquet"):
        output.write_parquet(without_profile(population.users), "users.parquet")
    cohorts = [np.arange(i, min(i + size, len(population))) for i in range(0, len(population), size)]
    done = {int(k): v for k, v in manifest["cohorts_done"].items()}
    todo = [(k, members) for k, members in enumerate(cohorts) if k not in done]
    for k, _ in todo:
        output.remove_cohort(k)  # whatever an interrupted attempt left
    started, sampled = time.perf_counter(), 0  # events sampled by this attempt, in finished cohorts
    running: dict[int, tuple[int, float]] = {}  # cohort -> (events so far, share done), as last reported

    def report(k: int, date: pd.Timestamp, events: int, alive: int, fraction_of_cohort: float) -> None:
        if on_progress is None or k in done:  # (a worker's last day may come after its result)
            return
        running[k] = (events, fraction_of_cohort)
        finished = sum(len(cohorts[j]) for j in done) + sum(f * len(cohorts[j]) for j, (_, f) in running.items())
        on_progress(Progress(k, len(cohorts), date, sampled + sum(e for e, _ in running.values()), alive,
                             time.perf_counter() - started, finished / len(population)))

    loaded = Loaded(model, schema, read_table(model_dir, "context"))  # the in-process strategy's model
    with closing(parallel.run_cohorts(spec, population, todo, loaded, report, workers or 1, ray)) as results:
        for k, stats in results:
            done[k] = stats
            running.pop(k, None)
            sampled += stats["events"] + stats["history_events"]
            manifest["cohorts_done"] = {str(j): v for j, v in sorted(done.items())}
            output.write_json(manifest, "manifest.json")
    totals = {key: int(sum(v[key] for v in done.values())) for key in ("events", "history_events", "exposures",
                                                                       "ended")}
    if scenario.campaigns:
        manifest["campaigns"] = _campaign_totals(scenario, done.values())
    if decisions is not None:
        manifest["policy"] = {**asdict(decisions), "name": decisions.name,
                              **policy_totals([v["policy"] for v in done.values()])}
    seconds = time.perf_counter() - started
    manifest.update(status="complete", users=len(population), cohorts=len(cohorts), **totals,
                    seconds_this_attempt=round(seconds, 3),
                    events_per_second_this_attempt=round(sampled / max(seconds, 1e-9)))
    output.write_json(manifest, "manifest.json")
    return manifest


def _check_inside(scenario, start: pd.Timestamp, days: int) -> None:
    """Campaigns run inside the simulated days; shocks start inside them (and may last past the end)."""
    end = start + pd.Timedelta(days=days)
    for c in scenario.campaigns:
        if c.start < start or c.end > end:
            raise TwinsimError(f"{scenario.source}: campaign {c.name!r} runs {c.start.date()} to {c.end.date()}, "
                               f"outside the simulated days {start.date()} + {days} days; move it inside "
                               "or use day numbers of the run (start = 7)")
    for s in scenario.shocks:
        if s.start < start or s.start >= end:
            raise TwinsimError(f"{scenario.source}: the shock of {s.column} starts {s.start.date()}, outside the "
                               f"simulated days {start.date()} + {days} days; start it inside (start = 0 is the "
                               "first simulated day)")


def _check_policy(decisions: DecisionSpec, scenario) -> None:
    """A policy's controlled event type is the policy's alone: a campaign may not impose it too."""
    clash = [c.name for c in scenario.campaigns if c.event_type == decisions.event_type]
    if clash:
        raise TwinsimError(f"{scenario.source}: campaigns {clash} impose {decisions.event_type}, which the policy "
                           "controls in this run; run the policy with the baseline scenario, or give the campaigns "
                           "another event type")


def _campaign_totals(scenario, cohorts) -> dict:
    """Per campaign, over the cohorts: exposures, customers per arm, budgets and exposures per UTC day."""
    totals = {}
    for c in scenario.campaigns:
        counts = [stats["campaigns"][c.name] for stats in cohorts]
        per_day: dict[str, int] = {}
        for k in counts:
            for day, n in k["exposures_per_day"].items():
                per_day[day] = per_day.get(day, 0) + n
        totals[c.name] = {"exposures": sum(k["exposures"] for k in counts),
                          "treatment": sum(k["treatment"] for k in counts),
                          "control": sum(k["control"] for k in counts),
                          "budget_total": c.budget_total, "budget_per_day": c.budget_per_day,
                          "exposures_per_day": dict(sorted(per_day.items()))}
    return totals


MAX_COHORT = 16_384  # users: memory holds about 35 KB a user per cohort being simulated


def cohort_size_for(users: int, workers: int) -> int:
    """The default users per cohort: as few cohorts as fill every worker equally (larger cohorts spread a
    network step's fixed cost over more rows), none over ``MAX_COHORT`` users. A resumed run keeps the first
    attempt's size (the manifest's ``cohort_size``); a user's events do not depend on it anyway."""
    per_worker = -(-users // (workers * MAX_COHORT))
    return max(1, -(-users // (workers * per_worker)))


def _start(config: SimulateConfig, population: Population) -> pd.Timestamp:
    """The first simulated second: ``--start``, or with a history the start of the day its observation ends
    in (the next midnight if it ends at one). A continued customer is never simulated inside the observed
    window: what the log saw there is all that happened."""
    history = population.history
    if config.start is not None:
        start = as_utc(config.start)
    else:
        start = pd.Timestamp(history.observed_until_s, unit="s", tz="UTC").ceil("D")
    if history is not None and start.timestamp() < history.observed_until_s:
        until = pd.Timestamp(history.observed_until_s, unit="s", tz="UTC")
        raise TwinsimError(f"--start {start}: the history is observed until {until} (--observed-until, default the "
                           "end of the day of its last event), and a continued customer is not re-simulated inside "
                           f"it; start at or after it, e.g. --start {until.ceil('D').date()}")
    return start


def _history_identity(population: Population, start: pd.Timestamp) -> dict:
    """For a continued log: when its observation ended, and what ``history/`` holds (only events simulated
    between that end and ``start``, never the log's own or anything inside its window)."""
    if population.history is None:
        return {}
    until = pd.Timestamp(population.history.observed_until_s, unit="s", tz="UTC")
    return {"observed_until": until.isoformat(),
            "history_dataset": {"holds": "simulated", "from": until.isoformat(), "to": start.isoformat()}}


def model_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.json", "model.pt"):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()


def _open_run(out: sink.Output, identity: dict, resume: bool, overwrite: bool) -> dict:
    """The run's manifest: a new one, or with ``resume`` the interrupted run's (which must match)."""
    if resume:
        if not out.exists("manifest.json"):
            raise TwinsimError(f"--resume: {out} holds no run to resume (no manifest.json); start it without --resume")
        manifest = out.read_json("manifest.json")
        differs = [k for k in identity if k != "model"  # the path may be spelled otherwise; its hash may not
                   and json.dumps(manifest.get(k), sort_keys=True, default=str)
                   != json.dumps(identity[k], sort_keys=True, default=str)]
        if differs:
            raise TwinsimError(f"--resume: {out} was started with a different {', '.join(differs)}; rerun with the "
                               "same options, or use a new output directory")
        return manifest
    out.empty(overwrite, "is not empty; pass --overwrite to replace it, or --resume to finish an interrupted run")
    manifest = {"twinsim": "simulate", **identity, "status": "running", "cohorts_done": {}}
    out.write_json(manifest, "manifest.json")
    return manifest
