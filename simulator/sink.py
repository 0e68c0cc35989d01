"""Where a simulation run's output goes: Parquet datasets partitioned by day, written atomically.

Layout of a run directory::

    manifest.json                          config, seed, model hash, scenario, counts, timings, cohorts done
    users.parquet                          user_id + static attributes (the event-log contract)
    events/date=2026-01-08/part-00003.parquet   the simulated window, one file per (day, cohort)
    history/date=2025-12-20/part-00003.parquet  the sampled warm-up history (if any), same layout
    exposures/part-00003.parquet           every campaign exposure: user_id, timestamp, campaign
    assignments/part-00003.parquet         every customer a campaign assigned: user_id, campaign, arm
                                           ("treatment" or "control"; docs/scenarios.md)

Every file is written under a hidden temporary name and renamed into place, so a reader (or a resumed
run) never sees half a file; files of a cohort that did not finish are removed before it is redone.
``pandas.read_parquet(run / "events")``, ``polars.scan_parquet(run / "events/**/*.parquet",
hive_partitioning=True)`` and DuckDB's ``read_parquet('run/events/*/*.parquet', hive_partitioning=true)``
read the datasets directly.

A run directory is a local path, or a URI of any filesystem pyarrow opens (``s3://bucket/run``,
``gs://...``, ``file:///shared/run``): :class:`Output` writes the same layout through
``pyarrow.fs.FileSystem.from_uri`` (a hidden temporary name, then ``fs.move``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from twinsim.models.errors import OutputExistsError, TwinsimError

DATASETS = ("events", "history", "exposures", "assignments")


def part_name(cohort: int) -> str:
    return f"part-{cohort:05d}.parquet"


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


class Output:
    """A run directory: a local path (written with ``os.replace``, as the functions below) or a URI that
    pyarrow opens. Pickles as its location, so it travels to worker processes and Ray tasks."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        if is_uri(location):
            try:
                self.fs, root = pafs.FileSystem.from_uri(self.location)
            except (pa.ArrowException, ValueError, OSError) as exc:
                raise TwinsimError(f"-o {self.location}: pyarrow cannot open this location ({exc}); give a local "
                                   "path or a URI such as s3://bucket/run or file:///shared/run") from None
            self.root: str | Path = root.rstrip("/")
        else:
            self.fs, self.root = None, Path(location)

    def __reduce__(self):
        return Output, (self.location,)

    def __str__(self) -> str:
        return self.location

    def path(self, *parts: str) -> str | Path:
        return self.root.joinpath(*parts) if self.fs is None else "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        if self.fs is None:
            return self.path(*parts).exists()
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def write_parquet(self, frame: pd.DataFrame, *parts: str) -> None:
        if self.fs is None:
            write_atomic(frame, self.path(*parts))
            return
        path = self.path(*parts)
        parent, name = path.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f"{parent}/.{name}.tmp", filesystem=self.fs)
        self.fs.move(f"{parent}/.{name}.tmp", path)

    def write_json(self, data: dict, name: str) -> None:
        if self.fs is None:
            write_json_atomic(data, self.path(name))
            return
        with self.fs.open_output_stream(self.path(f".{name}.tmp")) as stream:
            stream.write(json.dumps(data, indent=2, default=str).encode())
        self.fs.move(self.path(f".{name}.tmp"), self.path(name))

    def read_json(self, name: str) -> dict:
        if self.fs is None:
            return json.loads(self.path(name).read_text())
        with self.fs.open_input_stream(self.path(name)) as stream:
            return json.loads(stream.read())

    def empty(self, overwrite: bool, refusal: str) -> None:
        """Make the run directory empty (see :func:`empty_dir`)."""
        if self.fs is None:
            empty_dir(self.root, overwrite, refusal)
            return
        if self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            if not overwrite:
                raise OutputExistsError(f"{self.location} {refusal}")
            self.fs.delete_dir_contents(self.root, missing_dir_ok=True)
        self.fs.create_dir(self.root, recursive=True)

    def remove_cohort(self, cohort: int) -> int:
        """Delete every file (and temporary file) a cohort wrote; returns how many were removed."""
        if self.fs is None:
            return remove_cohort(self.root, cohort)
        names, removed = {part_name(cohort), f".{part_name(cohort)}.tmp"}, 0
        for dataset in DATASETS:
            for info in self.fs.get_file_info(pafs.FileSelector(self.path(dataset), allow_not_found=True,
                                                                recursive=True)):
                if info.type == pafs.FileType.File and info.base_name in names:
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    def write_day(self, dataset: str, day: pd.Timestamp, cohort: int, events: pd.DataFrame) -> None:
        """One (day, cohort) partition file of ``dataset`` (nothing for a day without events)."""
        if len(events):
            self.write_parquet(events, dataset, f"date={day.strftime('%Y-%m-%d')}", part_name(cohort))


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
    Output(run_dir).write_day(dataset, day, cohort, events)


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
