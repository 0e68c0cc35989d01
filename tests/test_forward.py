"""Running a customer base forward: continuing a log from the end of its observation (the silence after each
customer's last event is data), and periods or context the model never saw."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twinsim.models.encoding import context_at
from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import load_model
from twinsim.simulator.engine import SimulateConfig, simulate


def _events(run, dataset="events") -> pd.DataFrame:
    path = run / dataset
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["user_id", "timestamp"])


def _log_before(small_log, tmp_path, cut: pd.Timestamp, users: int = 80):
    ids = small_log.users["user_id"].iloc[:users]
    events = small_log.events[small_log.events["user_id"].isin(ids) & (small_log.events["timestamp"] < cut)]
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    events.to_parquet(log_dir / "events.parquet")
    small_log.users[small_log.users["user_id"].isin(ids)].to_parquet(log_dir / "users.parquet")
    return log_dir, events


def test_a_continued_customer_is_silent_until_the_observation_ends(model_dir, small_log, tmp_path):
    """Observed until 2025-03-15 though the log's events stop on 2025-02-28: nothing is drawn before the
    15th, and starting on the 20th the days in between are simulated into history/, marked in the manifest."""
    log_dir, events = _log_before(small_log, tmp_path, pd.Timestamp("2025-03-01", tz="UTC"))
    until, start = pd.Timestamp("2025-03-15", tz="UTC"), pd.Timestamp("2025-03-20", tz="UTC")
    manifest = simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until=str(until.date()),
                                                  start=str(start.date()), days=10, seed=2), tmp_path / "run")
    gap, future = _events(tmp_path / "run", "history"), _events(tmp_path / "run")
    assert len(gap) and len(future)
    assert gap["timestamp"].min() >= until and gap["timestamp"].max() < start <= future["timestamp"].min()
    assert manifest["observed_until"] == until.isoformat()
    assert manifest["history_dataset"] == {"holds": "simulated", "from": until.isoformat(), "to": start.isoformat()}
    # by default the run starts where the observation ends, and writes nothing before it
    simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until=str(until.date()), days=10,
                                       seed=2), tmp_path / "default")
    assert not (tmp_path / "default" / "history").exists()
    assert _events(tmp_path / "default")["timestamp"].min() >= until
    with pytest.raises(TwinsimError, match="observed until"):
        simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until=str(until.date()),
                                           start="2025-03-10", days=5), tmp_path / "early")
    with pytest.raises(TwinsimError, match="--observed-until 2025-02-20.*has events after it"):
        simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until="2025-02-20", days=5),
                 tmp_path / "before")
    with pytest.raises(TwinsimError, match="--observed-until 'soon'"):
        simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until="soon", days=5),
                 tmp_path / "bad")


def test_a_long_silence_makes_a_quieter_future(model_dir, small_log, tmp_path):
    """The same customers, told they were seen until two months after their last event, are drawn given
    that silence: over the same 30 days they do markedly less than customers seen until the day after."""
    log_dir, events = _log_before(small_log, tmp_path, pd.Timestamp("2025-03-01", tz="UTC"), users=200)
    open_users = events.groupby("user_id", observed=True)["event_type"].last().astype(str) != "account_closed"
    runs = {}
    for name, until in (("recent", "2025-03-01"), ("silent", "2025-05-01")):
        simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), observed_until=until,
                                           start="2025-05-01", days=30, seed=3), tmp_path / name)
        future = _events(tmp_path / name)
        runs[name] = future["user_id"].astype(str).value_counts().reindex(open_users.index[open_users], fill_value=0)
    assert runs["silent"].sum() < 0.8 * runs["recent"].sum()
    assert (runs["silent"] == 0).mean() > (runs["recent"] == 0).mean()


def test_a_log_without_users_table_is_continued_when_the_model_has_no_attributes(sparse_model, sparse_log, tmp_path):
    manifest = simulate(sparse_model, SimulateConfig(users=None, history=str(sparse_log), days=60, seed=1),
                        tmp_path / "run")
    log = pd.read_parquet(sparse_log / "events.parquet")
    assert manifest["users"] == log["user_id"].nunique()
    assert manifest["start"] == (log["timestamp"].max().floor("D") + pd.Timedelta(days=1)).isoformat()
    future = _events(tmp_path / "run")
    assert set(future["event_type"].astype(str)) == {"purchase"}
    assert not (tmp_path / "run" / "history").exists()


def test_calendar_outside_the_training_window_reads_as_the_nearest_seen_period(model_dir):
    """The small model saw January to April 2025: August reads as April, October as January (cyclically
    nearer), while the hour, weekday and every value inside the window stay as they are."""
    _, schema, _ = load_model(model_dir)
    assert schema.calendar_seen["month"] == [1, 2, 3, 4]
    times = pd.to_datetime(["2025-08-06 13:00", "2025-10-02 07:00", "2025-02-10 22:00"], utc=True)
    seconds = np.array([t.timestamp() for t in times])
    from twinsim.models import kernels

    raw, seen = kernels.calendar(seconds), schema.calendar(seconds)
    assert seen[:, 3].tolist() == [4, 1, 2]
    assert np.array_equal(seen[:, [0, 1]], raw[:, [0, 1]]) and np.array_equal(seen[2], raw[2])
    manifest = json.loads((model_dir / "model.json").read_text())
    assert manifest["seen"]["calendar"]["month"] == [1, 2, 3, 4]
    assert manifest["seen"]["window"] == [schema.window_start, schema.window_end]


def test_context_beyond_the_table_holds_its_last_day(model_dir):
    _, schema, _ = load_model(model_dir)
    assert schema.context_columns
    column = schema.context_columns[0]
    table = pd.DataFrame({"date": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-04"]),
                          column: [100.0, 90.0, 80.0]})
    times = pd.to_datetime(["2024-12-30", "2025-01-02 12:00", "2025-01-03 05:00", "2025-03-01"], utc=True,
                           format="ISO8601")
    z = context_at(np.array([t.timestamp() for t in times]), table, schema)[:, 0]
    raw = z * schema.context_std[0] + schema.context_mean[0]
    assert np.allclose(raw, [100.0, 90.0, 90.0, 80.0], atol=1e-3)


def test_a_calendar_input_held_off_reads_as_one_value_in_training_and_sampling(small_log, tmp_path):
    """``--calendar-off month``: every month reads as the window's first, in the encoded training log and when
    sampling; the other inputs are untouched; the choice travels with the model; a wrong name is refused."""
    from conftest import TINY

    from twinsim.models import kernels
    from twinsim.models.encoding import encode, fit_schema
    from twinsim.models.training import TrainConfig, train

    out = tmp_path / "m"
    train(small_log, out, model_overrides=TINY, config=TrainConfig(epochs=1, batch_size=32, seed=1,
                                                                    calendar_off=("month",)))
    _, schema, _ = load_model(out)
    assert schema.calendar_off == ["month"] and schema.calendar_seen["month"] == [1]
    encoded = encode(small_log, schema)
    raw = kernels.calendar(encoded.time_s)
    assert set(raw[:, 3]) == {1, 2, 3, 4} and set(encoded.calendar[:, 3]) == {1}
    assert np.array_equal(encoded.calendar[:, [0, 1, 2, 4]], raw[:, [0, 1, 2, 4]])
    seconds = np.array([pd.Timestamp("2025-08-06 13:00", tz="UTC").timestamp()])
    assert schema.calendar(seconds)[0, 3] == 1
    manifest = simulate(out, SimulateConfig(users=20, start="2025-05-01", days=3, seed=1, history_days=3),
                        tmp_path / "sim", overwrite=True)
    assert manifest["events"] > 0
    with pytest.raises(TwinsimError, match="--calendar-off season"):
        fit_schema(small_log, calendar_off=["season"])
