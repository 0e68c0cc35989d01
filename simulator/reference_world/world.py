"""Generate the reference world: chunks of users simulated independently, streamed to Parquet."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinsim.models.artifacts import atomic_output_dir, check_output_dir, write_json
from twinsim.models.errors import TwinsimError
from twinsim.scenarios.scenario import Scenario, load_scenario
from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world.behaviour import simulate_chunk
from twinsim.simulator.reference_world.calendar import build_calendar
from twinsim.simulator.reference_world.policy import DecisionTally, policy_setup
from twinsim.simulator.reference_world.population import sample_population, users_table
from twinsim.simulator.reference_world.scenario import ScenarioAgent, check_scenario, shocked_calendar
from twinsim.simulator.reference_world.streams import Streams

# Users are simulated in chunks of this size (memory, vectorisation). Every random number is a customer's own
# (streams.py: keyed by seed, customer, day, purpose), so the output depends on the seed and the options,
# never on this constant, the machine or timing. The keys hold no window length and the macro index is
# drawn a whole year at a time (calendar.macro_index), so the world is prefix-stable: its first D days are
# the same whatever longer --days it is generated with.
CHUNK_USERS = 10_000
MAX_DAYS = 3_660


@dataclass(frozen=True)
class WorldConfig:
    """Size, window and seed of a reference world."""

    users: int = 5_000
    days: int = 365
    start: date = date(2025, 1, 1)
    seed: int = 0

    def validate(self) -> None:
        if self.users < 1:
            raise TwinsimError(f"--users must be at least 1 (got {self.users}); e.g. --users 5000")
        if not 1 <= self.days <= MAX_DAYS:
            raise TwinsimError(f"--days must be between 1 and {MAX_DAYS} (got {self.days}); e.g. --days 365")
        if self.seed < 0:
            raise TwinsimError(f"--seed must be a non-negative integer (got {self.seed}); e.g. --seed 7")


def generate_reference_world(
    config: WorldConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    scenario: Scenario | str | Path | None = None,
    policy: str | None = None,
    policy_start: int | date | str | None = None,
    share: float | None = None,
) -> dict:
    """Write ``events.parquet``, ``users.parquet``, ``context.parquet`` and ``world.json`` to ``out_dir``.

    ``scenario`` (a ``Scenario``, a TOML file or a built-in name) is acted out by the world's own customers
    (``scenario.py``); its exposures and assignments go to ``exposures.parquet`` and ``assignments.parquet``.
    ``policy`` (a spec for ``scenarios.policies.load_policy``) decides which offer to show at a share ``share``
    (default ``laws.OFFER_SHOW_P``) of logins from day ``policy_start`` (a day number or a date; default 0) on
    (``policy.py``); every run writes ``decisions.parquet``, one row per decision point.
    ``progress`` is called with the number of user-days completed since its last call.
    Returns the manifest written to ``world.json``.
    """
    config.validate()
    if scenario is not None and not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, laws.world_vocabulary(), run_start=pd.Timestamp(config.start))
    if scenario is not None:
        check_scenario(scenario, scenario.source or scenario.name)
    setup = policy_setup(policy, policy_start, share, config.days, config.start)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    started = time.perf_counter()
    # The calendar's macro index draws from its own stream; the customers from theirs (streams.py).
    cal = build_calendar(config.start, config.days, np.random.default_rng(np.random.SeedSequence(config.seed,
                                                                                                   spawn_key=(0,))))
    if scenario is not None:
        cal = shocked_calendar(cal, scenario, config.start)
    counts = np.zeros(len(laws.EVENT_TYPES), dtype=np.int64)
    exposures, assignments = [], []
    with atomic_output_dir(out_dir, overwrite) as tmp:
        events_writer = users_writer = decisions_writer = None
        tally = DecisionTally(setup)
        try:
            for first in range(0, config.users, CHUNK_USERS):
                size = min(CHUNK_USERS, config.users - first)
                streams = Streams(config.seed, first)
                pop = sample_population(streams, first, size)
                agent = (ScenarioAgent(scenario, pop, cal, streams, config.users, config.start)
                         if scenario is not None and scenario.campaigns else None)
                events, exposed, decisions = simulate_chunk(
                    pop, cal, streams, (lambda _day, s=size: progress(s)) if progress else None, agent,
                    setup.offers(pop, streams, config.seed))
                if agent is not None:
                    exposures.append(_by_user_id(pop, exposed, cal.dates[0]))
                    assignments.append(_by_user_id(pop, agent.assignments(), None))
                users = users_table(pop)
                if events_writer is None:
                    events_writer = pq.ParquetWriter(tmp / "events.parquet", events.schema, compression="zstd")
                    users_writer = pq.ParquetWriter(tmp / "users.parquet", users.schema, compression="zstd")
                    decisions_writer = pq.ParquetWriter(tmp / "decisions.parquet", decisions.schema,
                                                        compression="zstd")
                events_writer.write_table(events)
                users_writer.write_table(users)
                decisions_writer.write_table(decisions)
                tally.add(decisions)
                codes = events.column("event_type").combine_chunks().indices.to_numpy()
                counts += np.bincount(codes, minlength=len(laws.EVENT_TYPES))
        finally:
            for writer in (events_writer, users_writer, decisions_writer):
                if writer is not None:
                    writer.close()
        pq.write_table(pa.table({"date": pa.array(cal.dates), "macro_index": pa.array(cal.macro_index)}),
                       tmp / "context.parquet")
        files = {"events": "events.parquet", "users": "users.parquet", "context": "context.parquet",
                 "decisions": "decisions.parquet"}
        extra = {}
        if scenario is not None:
            extra = _write_scenario_tables(tmp, scenario, exposures, assignments)
            files.update(exposures="exposures.parquet", assignments="assignments.parquet")
        seconds = time.perf_counter() - started
        manifest = {
            "generator": "twinsim reference-world",
            "config": {**asdict(config), "start": config.start.isoformat(), "chunk_users": CHUNK_USERS},
            "window": {"start": config.start.isoformat(),
                       "end_exclusive": str(cal.dates[-1] + np.timedelta64(1, "D"))},
            "files": files,
            "counts": {"users": config.users, "events": int(counts.sum()),
                       "users_closed": int(counts[laws.EVENT_TYPES.index("account_closed")]),
                       "events_by_type": {t: int(c) for t, c in zip(laws.EVENT_TYPES, counts, strict=True)}},
            "timing": {"seconds": round(seconds, 3), "events_per_second": round(counts.sum() / seconds)},
            "policy": tally.manifest(),
            "laws": "docs/reference-world.md",
            **extra,
        }
        write_json(tmp / "world.json", manifest)
    return manifest


def _by_user_id(pop, rows: dict[str, np.ndarray], start) -> pd.DataFrame:
    """A chunk's exposures (``start``: the window's first day) or assignments, keyed by user_id."""
    frame = pd.DataFrame({"user_id": np.asarray(pop.user_ids(), dtype=object)[rows["user"]],
                          "campaign": rows["campaign"].astype(np.int64)})
    if start is not None:
        start_us = np.datetime64(start, "us").astype(np.int64)
        frame.insert(1, "timestamp", pd.to_datetime(start_us + rows["micros"], unit="us", utc=True))
    else:
        frame["arm"] = np.where(rows["control"], "control", "treatment")
    return frame


def _write_scenario_tables(tmp: Path, scenario: Scenario, exposures: list, assignments: list) -> dict:
    """``exposures.parquet`` (user_id, timestamp, campaign), ``assignments.parquet`` (user_id, campaign, arm),
    sorted by user and time; returns the scenario and its per-campaign counts for ``world.json``."""
    names = [c.name for c in scenario.campaigns]
    empty = {"exposures": pd.DataFrame({"user_id": pd.Series(dtype=object), "timestamp": pd.Series(
        dtype="datetime64[us, UTC]"), "campaign": pd.Series(dtype=np.int64)}),
        "assignments": pd.DataFrame({"user_id": pd.Series(dtype=object), "campaign": pd.Series(dtype=np.int64),
                                     "arm": pd.Series(dtype=object)})}
    tables = {}
    for name, parts, order in (("exposures", exposures, ["user_id", "timestamp"]),
                               ("assignments", assignments, ["user_id", "campaign"])):
        frame = pd.concat(parts, ignore_index=True) if parts else empty[name]
        frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
        frame["campaign"] = pd.Categorical.from_codes(frame["campaign"].to_numpy(), categories=names)
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
        tables[name] = frame
    ex, asg = tables["exposures"], tables["assignments"]
    per_campaign = {}
    for c in scenario.campaigns:
        mine, arms = ex[ex["campaign"] == c.name], asg.loc[asg["campaign"] == c.name, "arm"]
        per_day = mine["timestamp"].dt.date.value_counts().sort_index()
        per_campaign[c.name] = {
            "exposures": len(mine), "customers_exposed": int(mine["user_id"].nunique()),
            "treatment": int((arms == "treatment").sum()), "control": int((arms == "control").sum()),
            "budget_total": c.budget_total, "budget_per_day": c.budget_per_day,
            "exposures_per_day": {str(d): int(k) for d, k in per_day.items()}}
    return {"scenario": scenario.to_json(), "exposures": per_campaign}
