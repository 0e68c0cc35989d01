"""Where a simulation run's output goes: Parquet datasets partitioned by day, written atomically.

Layout of a run directory::

    manifest.json                          config, seed, model hash, scenario, counts, timings, cohorts done
    users.parquet                          user_id + static attributes (the event-log contract)
    events/date=2026-01-08/part-00003.parquet   the simulated window, one file per (day, cohort)
    history/date=2025-12-20/part-00003.parquet  the sampled warm-up history (if any), same layout
    exposures/part-00003.parquet           every campaign exposure: user_id, timestamp, campaign

Every file is written under a hidden temporary name and renamed into place, so a reader (or a resumed
run) never sees half a file; files of a cohort that did not finish are removed before it is redone.
``pandas.read_parquet(run / "events")``, ``polars.scan_parquet(run / "events/**/*.parquet",
hive_partitioning=True)`` and DuckDB's ``read_parquet('run/events/*/*.parquet', hive_partitioning=true)``
read the datasets directly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinsim.models.errors import OutputExistsError

DATASETS = ("events", "history", "exposures")


def part_name(cohort: int) -> str:
    return f"part-{cohort:05d}.parquet"


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` via a hidden temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    os.replace(tmp, path)


def empty_dir(out: Path, overwrite: bool, refusal: str) -> None:
    """Make ``out`` an empty directory; one that holds something is replaced only with ``overwrite``, else
    refused with ``refusal`` (what to do instead)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} {refusal}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def write_day(run_dir: Path, dataset: str, day: pd.Timestamp, cohort: int, events: pd.DataFrame) -> None:
    """One (day, cohort) partition file of ``dataset`` (nothing for a day without events)."""
    if len(events):
        write_atomic(events, run_dir / dataset / f"date={day.strftime('%Y-%m-%d')}" / part_name(cohort))


def remove_cohort(run_dir: Path, cohort: int) -> int:
    """Delete every file (and temporary file) a cohort wrote; returns how many were removed."""
    removed = 0
    name = part_name(cohort)
    for dataset in DATASETS:
        root = run_dir / dataset
        if not root.exists():
            continue
        for path in [*root.rglob(name), *root.rglob(f".{name}.tmp")]:
            path.unlink()
            removed += 1
    return removed
