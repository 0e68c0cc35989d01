"""``twinsim backtest``: cut a log, forecast past the cut with the twin, score it against what happened.

A backtest directory holds every stage, so each can be inspected or reused::

    calibration/     the log before the cut (events, users, context): what the twin may know
    model/           the model trained on it (absent when ``--model`` gave one)
    draws/seed=K/    one ``simulate --history calibration --observed-until CUT`` run per replication
    report.json      the scores (layout in docs/backtest.md), report.html the same with plots

Each customer is continued from the cut, not from their last event: the silence between the two is part of
what the log says (``simulate --observed-until``). Replications that finished are kept, so rerunning the
same command after an interruption redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import EventLog, load_event_log
from twinsim.models.model_dir import read_manifest
from twinsim.simulator import sink
from twinsim.simulator.backtest.report import backtest_report, render_html
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.population import as_utc


@dataclass
class BacktestConfig:
    cut: str  # first instant of the future (UTC): events before it are the calibration period
    horizon_days: int = 90
    replications: int = 10  # twin draws per customer; the forecast is their mean
    seed: int = 0  # replication k simulates with seed + k
    model: str | None = None  # a model trained on the calibration period; default: train one
    train_options: dict = field(default_factory=dict)  # TrainConfig fields for the model trained here
    cohort_size: int | None = None  # None: the engine's default (engine.cohort_size_for)

    def validate(self) -> None:
        if self.horizon_days < 1:
            raise TwinsimError(f"--horizon must be at least 1 day (got {self.horizon_days}); e.g. --horizon 90")
        if self.replications < 1:
            raise TwinsimError(f"--replications must be at least 1 (got {self.replications}); e.g. --replications 10")


def backtest(log_path: str | Path, config: BacktestConfig, out: str | Path, overwrite: bool = False,
             say: Callable[[str], None] = lambda _line: None) -> dict:
    """Run the backtest of ``config`` on the log at ``log_path`` into ``out``; return the report."""
    config.validate()
    log_path, out = Path(log_path), Path(out)
    log = load_event_log(log_path)
    cut = _cut(config.cut, log, log_path)
    end = cut + pd.Timedelta(days=config.horizon_days)
    _open(out, log_path, config, overwrite)
    calibration = out / "calibration"
    if not (calibration / "events.parquet").exists():
        _write_before(log, cut, calibration)
    model_dir = Path(config.model) if config.model else out / "model"
    if config.model:
        _check_model(model_dir, cut)
    elif not (model_dir / "model.json").exists():
        from twinsim.models.training import TrainConfig, train

        say(f"training on {calibration} (events before {cut.date()}) into {model_dir}")
        def on_event(kind: str, data: dict) -> None:
            if kind == "epoch_end":
                say(f"epoch {data['epoch'] + 1}: validation NLL/event {data['validation']['total']:.3f} "
                    f"({data['seconds']:.0f} s)")

        train(load_event_log(calibration), model_dir, config=TrainConfig(**config.train_options), overwrite=True,
              on_event=on_event)
    draws = []
    for k in range(config.replications):
        run = out / "draws" / f"seed={config.seed + k}"
        if not _complete(run):
            say(f"replication {k + 1}/{config.replications}: continuing every customer from {cut.date()} "
                f"for {config.horizon_days} days")
            simulate(model_dir, SimulateConfig(users=None, history=str(calibration), observed_until=cut.isoformat(),
                                               start=cut.isoformat(), days=config.horizon_days, seed=config.seed + k,
                                               cohort_size=config.cohort_size), run, overwrite=True)
        draws.append(_events(run / "events"))
    terminal = read_manifest(model_dir)["schema"]["terminal_types"]
    horizon_log = log.events[log.events["timestamp"] < end]
    report = backtest_report(horizon_log, cut, config.horizon_days, draws, terminal_types=terminal, progress=say)
    report["settings"].update(log=str(log_path), model=str(model_dir), seed=config.seed,
                              model_trained_here=config.model is None)
    sink.write_json_atomic(report, out / "report.json")
    tmp = out / ".report.html.tmp"
    tmp.write_text(render_html(report), encoding="utf-8")
    os.replace(tmp, out / "report.html")
    return report


def _cut(value: str, log: EventLog, path: Path) -> pd.Timestamp:
    try:
        cut = as_utc(value)
    except ValueError as exc:
        raise TwinsimError(f"--cut {value!r} is not a date ({exc}); write e.g. --cut 2026-01-01") from None
    first, last = log.events["timestamp"].min(), log.events["timestamp"].max()
    if not first < cut <= last:
        raise TwinsimError(f"--cut {cut.date()}: {path} runs from {first} to {last}; the cut must fall inside it, "
                           "with events on both sides (before: what the twin learns; after: what it is scored on)")
    return cut


def _write_before(log: EventLog, cut: pd.Timestamp, directory: Path) -> None:
    """The log as it stood at the cut: events before it, the users who had one, context up to it."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    events = log.events[log.events["timestamp"] < cut]
    events.to_parquet(tmp / "events.parquet", index=False)
    if log.users is not None:
        log.users[log.users["user_id"].isin(events["user_id"].unique())].to_parquet(tmp / "users.parquet",
                                                                                   index=False)
    if log.context is not None:
        log.context[pd.to_datetime(log.context["date"]) < cut.tz_localize(None)].to_parquet(
            tmp / "context.parquet", index=False)
    os.replace(tmp, directory)


def _check_model(model_dir: Path, cut: pd.Timestamp) -> None:
    """Refuse a model whose training window reaches past the cut's day: it has seen the future."""
    window_end = pd.Timestamp(read_manifest(model_dir)["schema"]["window_end"])
    if window_end > cut.ceil("D"):
        raise TwinsimError(f"--model {model_dir} was trained on events up to {window_end.date()}, after the cut "
                           f"{cut.date()}: it has seen what it would be scored on. Train one on the events before "
                           "the cut (leave out --model and backtest trains it)")


def _open(out: Path, log_path: Path, config: BacktestConfig, overwrite: bool) -> None:
    """A new backtest directory, or the same backtest's (same log and settings) to finish or rescore."""
    identity = {"log": str(log_path.resolve()), **asdict(config)}
    path = out / "backtest.json"
    if path.exists() and json.loads(path.read_text()) == identity:
        return
    sink.empty_dir(out, overwrite, "holds something else (another backtest or other files); pass --overwrite to "
                   "replace it")
    sink.write_json_atomic(identity, path)


def _complete(run: Path) -> bool:
    path = run / "manifest.json"
    return path.exists() and json.loads(path.read_text()).get("status") == "complete"


def _events(path: Path) -> pd.DataFrame:
    if not path.exists():  # nobody did anything in the horizon
        return pd.DataFrame({"user_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[us, UTC]"),
                             "event_type": pd.Series(dtype=str)})
    frame = pd.read_parquet(path, columns=["user_id", "timestamp", "event_type"])
    return frame.astype({"user_id": str, "event_type": str})

