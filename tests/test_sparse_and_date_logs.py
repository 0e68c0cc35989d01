"""Non-contractual logs (one purchase type, no churn event, no users table, most customers buying once or
twice) and logs of dates (day resolution) through inspect, train, generate and validate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_sparse_log

from twinsim.cli import main
from twinsim.models.encoding import detect_terminal_types, fit_schema
from twinsim.models.event_log import EventLog, TimeResolution, load_event_log
from twinsim.models.generate import GenerateConfig, events_frame, generate
from twinsim.models.rollout import Events
from twinsim.models.validation import run_validation, sabotage
from twinsim.models.validation.features import user_features
from twinsim.models.validation.samples import Sample, Vocabulary

WINDOW = ("--start", "2024-01-01", "--days", "365")  # the window of ``write_sparse_log``


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def check(report: dict, id_: str) -> dict:
    return next(c for c in report["checks"] if c["id"] == id_)


def count_shares(events: pd.DataFrame) -> np.ndarray:
    """Shares of customers (with events) with 1, 2, 3 and 4 or more events."""
    counts = events.groupby("user_id", observed=True).size().to_numpy()
    return np.array([np.mean(counts == 1), np.mean(counts == 2), np.mean(counts == 3), np.mean(counts >= 4)])


def sample(model_dir: Path, n: int = 1000) -> pd.DataFrame:
    return generate(model_dir, GenerateConfig(users=n, start=pd.Timestamp(WINDOW[1]), days=365, seed=0))[1]


def thirds(log: EventLog) -> list[EventLog]:
    ids = np.array(sorted(log.events["user_id"].unique()), dtype=object)
    return [log.of_users(set(ids[k::3])) for k in range(3)]


# ----------------------------------------------------------------------------------------- resolution
def test_a_log_of_dates_is_day_resolution_and_a_log_of_times_second(sparse_log, date_log, tmp_path):
    assert load_event_log(sparse_log).resolution == TimeResolution()
    day = load_event_log(date_log).resolution
    assert day == TimeResolution("day", 0.0)
    assert day.describe() == "day (dates only: every event at 00:00:00 UTC)"
    events = pd.read_parquet(date_log / "events.parquet")
    noon = events.assign(timestamp=events["timestamp"] + pd.Timedelta(hours=12))
    noon.to_csv(tmp_path / "noon.csv", index=False)
    assert load_event_log(tmp_path / "noon.csv").resolution == TimeResolution("day", 43_200.0)
    one_time = noon.copy()
    one_time.loc[3, "timestamp"] += pd.Timedelta(seconds=1)  # one real time among dates: times are information
    one_time.to_parquet(tmp_path / "mixed.parquet", index=False)
    assert load_event_log(tmp_path / "mixed.parquet").resolution.unit == "second"
    one_day = events.assign(timestamp=events["timestamp"].min())  # one day alone cannot tell dates from times
    one_day.to_parquet(tmp_path / "one_day.parquet", index=False)
    assert load_event_log(tmp_path / "one_day.parquet").resolution.unit == "second"


def test_inspect_prints_the_time_resolution(sparse_log, date_log):
    assert "time resolution: day (dates only: every event at 00:00:00 UTC)" in run("inspect", str(date_log)).output
    assert "time resolution: second" in run("inspect", str(sparse_log)).output
    summary = json.loads(run("inspect", str(date_log), "--json").stdout)
    assert summary["time_resolution"]["unit"] == "day" and summary["time_resolution"]["time_of_day_s"] == 0.0


def test_output_is_snapped_to_the_day_at_the_logs_time_of_day_and_keeps_its_order():
    stamps = pd.to_datetime(["2025-03-01T12:00Z", "2025-03-04T12:00Z", "2025-03-02T12:00Z"], utc=True)
    log = EventLog(events=pd.DataFrame({"user_id": ["a", "a", "b"], "timestamp": stamps,
                                        "event_type": pd.Categorical(["buy", "return", "buy"])}),
                   users=None, marks=(), amount_types=(), event_files=())
    schema = fit_schema(log)
    assert (schema.time_resolution, schema.time_of_day_s) == ("day", 43_200.0)
    day = pd.Timestamp("2025-03-05", tz="UTC").timestamp()
    # sampled times: 01:00, 13:30 and 23:59 of one day (user 0), 00:00:30 of the next (user 1)
    raw = Events(np.array([0, 0, 0, 1]), day + np.array([3600.0, 48_600.0, 86_340.0, 86_430.0]),
                 np.array([0, 1, 0, 0]), np.zeros((4, 0), np.int64), np.full(4, np.nan))
    frame = events_frame(raw, np.array(["s0", "s1"], dtype=object), schema)
    assert frame["timestamp"].tolist() == [pd.Timestamp("2025-03-05T12:00Z")] * 3 + [pd.Timestamp("2025-03-06T12:00Z")]
    assert frame["event_type"].tolist() == ["buy", "return", "buy", "buy"]  # same-day events keep their order
    second = fit_schema(EventLog(events=log.events.assign(timestamp=stamps + pd.to_timedelta([0, 5, 0], unit="min")),
                                 users=None, marks=(), amount_types=(), event_files=()))
    assert second.time_resolution == "second"
    assert events_frame(raw, np.array(["s0", "s1"], dtype=object), second)["timestamp"].iloc[1] == \
        pd.Timestamp(day + 48_600.0, unit="s", tz="UTC")


# ---------------------------------------------------------------------------------------- non-contractual
def test_a_log_where_every_customer_buys_once_has_no_terminal_type():
    once = pd.DataFrame({"user_id": [f"u{i}" for i in range(20)], "event_type": "purchase"})
    assert detect_terminal_types(once) == []
    closing = pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(6)], 2),
                            "event_type": ["purchase", "closed"] * 6})
    assert detect_terminal_types(closing) == ["closed"]


def test_a_sparse_log_trains_generates_and_validates_end_to_end(sparse_log, sparse_model, tmp_path):
    manifest = json.loads((sparse_model / "model.json").read_text())
    schema = manifest["schema"]
    assert schema["event_types"] == ["purchase"] and schema["terminal_types"] == []
    assert schema["time_resolution"] == "second"
    assert not schema["categorical_attributes"]  # no users table; purchases are too rare to profile
    result = run("generate", str(sparse_model), "-n", "400", *WINDOW, "-o", str(tmp_path / "syn"), "--quiet")
    assert result.exit_code == 0, result.output
    synthetic = load_event_log(tmp_path / "syn")
    assert set(synthetic.events["event_type"]) == {"purchase"}
    assert np.isfinite(synthetic.events["amount"]).all()
    result = run("validate", "--model", str(sparse_model), "--data", str(sparse_log), "--synthetic",
                 str(tmp_path / "syn"), "-o", str(tmp_path / "report"), "--quiet")
    assert result.exit_code in (0, 1), result.output  # a verdict, not an error
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    for id_ in ("churn_survival", "churn_utility", "response_utility"):
        assert check(report, id_)["passed"] is None and "not applicable" in check(report, id_)["note"]
    # 40 holdout customers make about 100 purchases: too few for a per-type profile, which is said, not failed
    for id_ in ("inter_event_time", "calendar_hour", "calendar_weekday", "calendar_day_of_month"):
        assert check(report, id_)["passed"] is None
        assert check(report, id_)["note"].startswith("not applicable: no event type has 200")
    for c in report["checks"]:
        assert c["passed"] is not None or c["note"], c["id"]  # whatever is not judged says why
    assert check(report, "events_per_user")["passed"] is not None


def test_generated_sparse_customers_keep_the_one_type_and_the_number_of_purchases(sparse_log, sparse_model):
    real, synthetic = load_event_log(sparse_log).events, sample(sparse_model)
    assert set(synthetic["event_type"]) == {"purchase"}
    shares = {name: count_shares(e) for name, e in (("real", real), ("synthetic", synthetic))}
    assert shares["real"][0] > 0.5 and shares["real"][:3].sum() > 0.75  # the log: most customers buy 1-3 times
    # The tiny model draws first purchases too early in the window, so its customers repeat more: one-time buyers
    # 0.42 against 0.60 real (docs/model.md, known limits); the four shares' TVD measured 0.19.
    assert 0.5 * np.abs(shares["real"] - shares["synthetic"]).sum() < 0.3
    assert shares["synthetic"][0] > 0.3 and shares["synthetic"][:3].sum() > 0.7
    per_customer = [len(e) / e["user_id"].nunique() for e in (real, synthetic)]
    assert per_customer[1] == pytest.approx(per_customer[0], rel=0.4)


# --------------------------------------------------------------------------------------------- dates
def test_a_model_of_dates_records_the_resolution_and_generates_dates_in_order(date_model):
    schema = json.loads((date_model / "model.json").read_text())["schema"]
    assert (schema["time_resolution"], schema["time_of_day_s"]) == ("day", 0.0)
    events = sample(date_model)
    assert len(events) > 500
    assert (events["timestamp"] == events["timestamp"].dt.floor("D")).all()
    ordered = events.groupby("user_id", observed=True)["timestamp"].apply(lambda t: t.is_monotonic_increasing)
    assert ordered.all()


def test_validate_on_dates_does_not_judge_the_hour_and_its_profile_does_not_read_it(date_log, date_model, tmp_path):
    synthetic = sample(date_model, 400)
    (tmp_path / "syn").mkdir()
    synthetic.to_parquet(tmp_path / "syn" / "events.parquet", index=False)
    result = run("validate", "--model", str(date_model), "--data", str(date_log), "--synthetic",
                 str(tmp_path / "syn"), "-o", str(tmp_path / "report"), "--quiet")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    hour = check(report, "calendar_hour")
    assert hour["passed"] is None
    assert hour["note"] == ("not applicable: the training data has dates only (every event at 00:00:00 UTC), so "
                            "there is no hour of day to compare; 0.0% of the synthetic events are at another time "
                            "of day")
    assert report["settings"]["time_resolution"]["unit"] == "day"
    assert "hour:" not in check(report, "discriminator")["note"]


def test_a_generator_that_spreads_dates_over_the_day_is_named_in_the_hour_note(date_log, sparse_log):
    train, holdout, _ = thirds(load_event_log(date_log))
    shifted = sabotage.shift_time(train)  # every event at 05:00
    report = run_validation(train, holdout, shifted)
    assert "100.0% of the synthetic events are at another time of day" in check(report, "calendar_hour")["note"]

    def hour_columns(vocab: Vocabulary) -> list[str]:
        return [c for c in user_features(Sample.from_log("s", shifted), vocab).columns if c.startswith("hour:")]

    assert hour_columns(Vocabulary.from_train(train)) == []  # the discriminator and privacy cannot read the hour
    assert len(hour_columns(Vocabulary.from_train(load_event_log(sparse_log)))) == 6  # a log of times: 4-hour blocks


def test_sparse_log_builder_makes_what_it_says(tmp_path):
    events = pd.read_parquet(write_sparse_log(tmp_path / "log", users=50, seed=3) / "events.parquet")
    assert events["user_id"].nunique() == 50 and set(events["event_type"]) == {"purchase"}
    assert (events["amount"] > 0).all() and not (tmp_path / "log" / "users.parquet").exists()
