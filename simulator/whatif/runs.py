"""Reading a run for a what-if: a twin simulation run directory or a reference-world directory.

A twin run (``twinsim simulate``) holds ``manifest.json``, ``users.parquet``, ``events/`` partitioned by day,
``exposures/`` and, with a control share, ``assignments/`` (``simulator/sink.py``); its window is the
simulated days. A reference world (``twinsim reference-world``) holds ``world.json``, ``events.parquet``,
``users.parquet`` and, under a scenario, ``exposures.parquet`` and ``assignments.parquet``; its window is the
world's. Either way only the events inside the window [start, end) count. A run with a recommender policy
(``twinsim recommend``) also holds its decisions (twin: ``decisions/``, world: ``decisions.parquet``; one row per
decision point, :data:`DECISION_COLUMNS`) and its manifest a ``policy`` section (an HTTP policy's ``stats``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from twinsim.models.encoding import detect_terminal_types
from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import read_manifest

EVENT_COLUMNS = ("user_id", "timestamp", "event_type", "amount")
DECISION_COLUMNS = ("user_id", "request_id", "timestamp", "product", "propensity", "failure", "latency_ms", "policy")
WORLD_TERMINAL = ["account_closed"]  # the reference world's one terminal type (docs/reference-world.md)


@dataclass
class Run:
    """One run, its events cut to the window [start, end) (UTC)."""

    path: Path
    kind: str  # "twin" or "world"
    start: pd.Timestamp
    end: pd.Timestamp
    users: pd.DataFrame  # user_id (str) + static attributes
    events: pd.DataFrame  # user_id (str), timestamp, event_type (str), amount, marks
    exposures: pd.DataFrame | None  # user_id, timestamp, campaign
    assignments: pd.DataFrame | None  # user_id, campaign, arm
    scenario: dict | None  # the scenario the run was made with (its JSON form)
    terminal_types: list[str]
    model: str | None = None
    decisions: pd.DataFrame | None = None  # DECISION_COLUMNS, inside the window; None: the run had no policy
    policy: dict | None = None  # the manifest's policy section (name, spec, stats), if any

    @property
    def marks(self) -> list[str]:
        return [c for c in self.events.columns if c not in EVENT_COLUMNS]


def read_run(path: str | Path, start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None) -> Run:
    """The run in directory ``path`` over [start, end) (default: the run's own window)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        run = _twin_run(path)
    elif (path / "world.json").is_file():
        run = _world_run(path)
    else:
        raise TwinsimError(f"{path}: not a run directory (no manifest.json from `twinsim simulate`, no world.json from "
                           "`twinsim reference-world`); give the directory a simulate or reference-world run wrote")
    if start is not None:
        run.start = _utc(start)
    if end is not None:
        run.end = _utc(end)
    if run.end <= run.start:
        raise TwinsimError(f"{path}: the window's end {run.end} must come after its start {run.start}; "
                           "e.g. start 2025-06-01, end 2025-07-01")
    inside = (run.events["timestamp"] >= run.start) & (run.events["timestamp"] < run.end)
    run.events = run.events.loc[inside].reset_index(drop=True)
    if run.decisions is not None:
        inside = (run.decisions["timestamp"] >= run.start) & (run.decisions["timestamp"] < run.end)
        run.decisions = run.decisions.loc[inside].reset_index(drop=True)
    return run


def _twin_run(path: Path) -> Run:
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("status") != "complete":
        raise TwinsimError(f"{path}/manifest.json: the run's status is {manifest.get('status')!r}, not 'complete'; "
                           "finish it with the same command plus --resume")
    start = _utc(manifest["start"])
    end = start + pd.Timedelta(days=int(manifest["config"]["days"]))
    model = manifest.get("model")
    try:
        terminal = list(read_manifest(model)["schema"]["terminal_types"]) if model else None
    except TwinsimError:  # the model has moved: the run's own events say which types end a customer
        terminal = None
    events = _dataset(path / "events")
    return Run(path, "twin", start, end, _users(path / "users.parquet"), events,
               _optional(path / "exposures"), _optional(path / "assignments"), manifest.get("scenario"),
               terminal if terminal is not None else detect_terminal_types(events), model,
               _decisions(path / "decisions"), manifest.get("policy"))


def _world_run(path: Path) -> Run:
    world = json.loads((path / "world.json").read_text())
    window = world.get("window", {})
    if "start" not in window or "end_exclusive" not in window:
        raise TwinsimError(f"{path}/world.json: no window (start, end_exclusive); regenerate the world with "
                           "`twinsim reference-world`")
    events = _dataset(path / "events.parquet")
    return Run(path, "world", _utc(window["start"]), _utc(window["end_exclusive"]), _users(path / "users.parquet"),
               events, _optional(path / "exposures.parquet"), _optional(path / "assignments.parquet"),
               world.get("scenario"), list(WORLD_TERMINAL), None, _decisions(path / "decisions.parquet"),
               world.get("policy"))


def _utc(value) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _text(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Ids as strings and marks as categories of strings (missing stays missing), so runs compare by value."""
    for c in columns:
        if c not in frame:
            continue
        if c == "user_id":
            frame[c] = frame[c].astype(str)
        elif not pd.api.types.is_numeric_dtype(frame[c]) or isinstance(frame[c].dtype, pd.CategoricalDtype):
            values = frame[c].astype("category")
            frame[c] = values.cat.rename_categories([str(v) for v in values.cat.categories])
    return frame


def _dataset(path: Path) -> pd.DataFrame:
    """An events table (a file, or a directory partitioned by ``date=``), ids and marks as text."""
    if not path.exists():  # a twin run in which nothing happened has no events/ directory
        return pd.DataFrame({"user_id": pd.Series(dtype=object), "timestamp": pd.Series(dtype="datetime64[us, UTC]"),
                             "event_type": pd.Series(dtype=object), "amount": pd.Series(dtype=float)})
    frame = pd.read_parquet(path)
    frame = frame.drop(columns=[c for c in ("date",) if c in frame])
    missing = [c for c in ("user_id", "timestamp", "event_type") if c not in frame]
    if missing:
        raise TwinsimError(f"{path}: the events table has no column(s) {missing}; it must follow the data contract "
                           "(user_id, timestamp, event_type, optional amount and marks)")
    if "amount" not in frame:
        frame["amount"] = float("nan")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return _text(frame, [c for c in frame.columns if c not in ("timestamp", "amount")])


def _users(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TwinsimError(f"{path}: missing; a run directory holds users.parquet (user_id + static attributes)")
    users = pd.read_parquet(path)
    return _text(users, [c for c in users.columns if not pd.api.types.is_numeric_dtype(users[c])])


def _optional(path: Path) -> pd.DataFrame | None:
    """An exposures or assignments table, or None where the run has none."""
    if not path.exists() or (path.is_dir() and not any(path.rglob("*.parquet"))):
        return None
    frame = pd.read_parquet(path)
    return _text(frame.drop(columns=[c for c in ("date",) if c in frame]), ["user_id", "campaign", "arm"])


def _decisions(path: Path) -> pd.DataFrame | None:
    """A decisions table (a file or a dataset directory) with :data:`DECISION_COLUMNS`, or None where the run
    has none. Ids and products as text (missing stays None), times in UTC, numbers as float."""
    if not path.exists() or (path.is_dir() and not any(path.rglob("*.parquet"))):
        return None
    frame = pd.read_parquet(path)
    missing = [c for c in ("user_id", "request_id", "timestamp", "product") if c not in frame]
    if missing:
        raise TwinsimError(f"{path}: the decisions table has no column(s) {missing}; it holds one row per decision "
                           f"point with {list(DECISION_COLUMNS)}; rerun `twinsim recommend` to rewrite it")
    out = pd.DataFrame({"user_id": frame["user_id"].astype(str), "request_id": frame["request_id"].astype(str),
                        "timestamp": pd.to_datetime(frame["timestamp"], utc=True)})
    for c in ("product", "failure", "policy"):
        values = frame[c] if c in frame else pd.Series(None, index=frame.index, dtype=object)
        out[c] = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    for c in ("propensity", "latency_ms"):
        out[c] = pd.to_numeric(frame[c], errors="coerce").astype(float) if c in frame else float("nan")
    return out.sort_values(["timestamp", "request_id"], kind="stable").reset_index(drop=True)
