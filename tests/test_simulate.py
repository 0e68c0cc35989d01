"""The simulation engine: equivalence with generate, common random numbers across scenarios, resume,
continuing a given event log, and scenario files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from twinsim import cli
from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import load_event_log
from twinsim.models.generate import GenerateConfig, generate
from twinsim.models.model_dir import load_model
from twinsim.scenarios.scenario import load_scenario
from twinsim.simulator.engine import SimulateConfig, simulate

CAMPAIGN = """
name = "test push"
[[campaign]]
name = "push"
start = 10
end = 24
every_days = 7
reach = 0.5
event_type = "offer_shown"
marks = {{ product = "travel_card", channel = "app" }}
segment = {{ {segment} }}
"""


def events_of(run, dataset="events") -> pd.DataFrame:
    frame = pd.read_parquet(run / dataset)
    frame = frame.drop(columns="date").astype({c: "object" for c in frame.columns if c != "date"
                                               and isinstance(frame[c].dtype, pd.CategoricalDtype)})
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def campaign_file(tmp_path, model_dir) -> tuple:
    _, schema, _ = load_model(model_dir)
    name, values = next(iter(schema.categorical_attributes.items()))
    path = tmp_path / "push.toml"
    path.write_text(CAMPAIGN.format(segment=f'{name} = {json.dumps(values[1:3])}'))
    return path, name, values[1:3]


def test_without_warm_up_the_engine_samples_exactly_what_generate_does(model_dir, tmp_path):
    start = pd.Timestamp("2025-02-01")
    _, expected, _ = generate(model_dir, GenerateConfig(users=150, start=start, days=30, seed=4, batch_size=150))
    config = SimulateConfig(users=150, start="2025-02-01", days=30, seed=4, history_days=0, cohort_size=40)
    manifest = simulate(model_dir, config, tmp_path / "run")
    got = events_of(tmp_path / "run")
    expected = expected.astype({c: "object" for c in expected.columns
                                if isinstance(expected[c].dtype, pd.CategoricalDtype)})
    pd.testing.assert_frame_equal(got, expected.sort_values(["user_id", "timestamp"]).reset_index(drop=True),
                                  check_dtype=False)
    assert manifest["cohorts"] == 4 and manifest["events"] == len(expected) and manifest["status"] == "complete"


def test_day_partitions_users_table_manifest_and_same_seed_same_run(model_dir, tmp_path):
    config = SimulateConfig(users=60, start="2025-02-01", days=10, seed=2, history_days=5, cohort_size=25)
    simulate(model_dir, config, tmp_path / "a")
    simulate(model_dir, config, tmp_path / "b")
    a, b = events_of(tmp_path / "a"), events_of(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b)
    for day in (tmp_path / "a" / "events").iterdir():
        part = pd.read_parquet(day)
        assert (part["timestamp"].dt.strftime("%Y-%m-%d") == day.name.removeprefix("date=")).all()
    history = events_of(tmp_path / "a", "history")
    assert history["timestamp"].min() >= pd.Timestamp("2025-01-27", tz="UTC")
    assert history["timestamp"].max() < pd.Timestamp("2025-02-01", tz="UTC") <= a["timestamp"].min()
    assert a["timestamp"].max() < pd.Timestamp("2025-02-11", tz="UTC")
    users = pd.read_parquet(tmp_path / "a" / "users.parquet")
    assert len(users) == 60 and set(a["user_id"]) <= set(users["user_id"])
    assert not [c for c in users.columns if c.startswith("activity:")]  # the model's profile, not the contract's
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["events"] == len(a) and manifest["history_events"] == len(history)
    assert len(manifest["model_sha256"]) == 64 and manifest["config"]["seed"] == 2
    assert not list((tmp_path / "a").rglob(".*.tmp"))
    log = load_event_log(tmp_path / "a")  # a run directory is an event log: inspect, train, validate read it
    assert len(log.events) == len(a) and len(log.users) == 60


def test_a_campaign_changes_only_the_users_it_reaches_and_only_from_their_exposure(model_dir, tmp_path):
    path, attribute, segment = campaign_file(tmp_path, model_dir)
    common = dict(users=200, start="2025-02-01", days=30, seed=5, history_days=3, cohort_size=70)
    simulate(model_dir, SimulateConfig(**common), tmp_path / "base")
    simulate(model_dir, SimulateConfig(**common, scenario=str(path)), tmp_path / "push")
    base, push = events_of(tmp_path / "base"), events_of(tmp_path / "push")
    exposures = pd.read_parquet(tmp_path / "push" / "exposures")
    users = pd.read_parquet(tmp_path / "push" / "users.parquet").set_index("user_id")
    reached = set(exposures["user_id"])
    in_segment = set(users.index[users[attribute].astype(str).isin(segment)])
    assert reached and reached <= in_segment and len(reached) < len(in_segment)  # reach 0.5
    days = exposures["timestamp"].dt.normalize().unique()
    assert set(days) <= {pd.Timestamp("2025-02-11", tz="UTC"), pd.Timestamp("2025-02-18", tz="UTC")}
    untouched = ~base["user_id"].isin(reached)
    pd.testing.assert_frame_equal(base[untouched].reset_index(drop=True),
                                  push[~push["user_id"].isin(reached)].reset_index(drop=True))
    first = exposures.groupby("user_id")["timestamp"].min()

    def before(frame):
        exposed = frame["timestamp"] >= frame["user_id"].map(first)  # False where never exposed (NaT)
        return frame[~exposed].reset_index(drop=True)

    pd.testing.assert_frame_equal(before(base), before(push))
    shown = push.merge(exposures, on=["user_id", "timestamp"])
    assert len(shown) == len(exposures)
    assert (shown["event_type"] == "offer_shown").all() and (shown["product"] == "travel_card").all()
    assert not base["user_id"].isin(reached).all()


def test_a_killed_run_resumes_to_the_same_output(model_dir, tmp_path):
    config = SimulateConfig(users=90, start="2025-02-01", days=12, seed=6, history_days=2, cohort_size=30)
    simulate(model_dir, config, tmp_path / "full")

    def crash(progress):
        if progress.cohort == 1 and progress.date >= pd.Timestamp("2025-02-05", tz="UTC"):
            raise KeyboardInterrupt

    seen = []

    def watch(progress):
        seen.append(progress)

    full = simulate(model_dir, config, tmp_path / "watched", on_progress=watch)
    assert seen[-1].fraction == 1.0 and seen[-1].events == full["events"] + full["history_events"]
    assert all(a.events <= b.events and a.fraction <= b.fraction for a, b in zip(seen[:-1], seen[1:], strict=True))
    with pytest.raises(KeyboardInterrupt):
        simulate(model_dir, config, tmp_path / "cut", on_progress=crash)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "running" and list(manifest["cohorts_done"]) == ["0"]
    assert list((tmp_path / "cut" / "events").rglob("part-00001.parquet"))  # cohort 1 had started writing
    with pytest.raises(TwinsimError, match="--resume"):
        simulate(model_dir, config, tmp_path / "cut")
    with pytest.raises(TwinsimError, match="different config"):
        simulate(model_dir, SimulateConfig(**{**config.__dict__, "seed": 7}), tmp_path / "cut", resume=True)
    simulate(model_dir, config, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(events_of(tmp_path / "full"), events_of(tmp_path / "cut"))
    pd.testing.assert_frame_equal(events_of(tmp_path / "full", "history"), events_of(tmp_path / "cut", "history"))


def test_continuing_an_event_log_starts_every_user_from_their_own_last_event(model_dir, small_log, tmp_path):
    cut = pd.Timestamp("2025-03-01", tz="UTC")
    ids = small_log.users["user_id"].iloc[:80]
    events = small_log.events[small_log.events["user_id"].isin(ids) & (small_log.events["timestamp"] < cut)]
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    events.to_parquet(log_dir / "events.parquet")
    small_log.users[small_log.users["user_id"].isin(ids)].to_parquet(log_dir / "users.parquet")
    manifest = simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), days=20, seed=1, cohort_size=32),
                        tmp_path / "run")
    assert manifest["start"] == cut.isoformat()  # default: the day after the log's last event
    # each customer's activity profile is read from their history; the users table written is theirs
    assert list(pd.read_parquet(tmp_path / "run" / "users.parquet").columns) == list(small_log.users.columns)
    bridged = pd.concat([events_of(tmp_path / "run", "history"), events_of(tmp_path / "run")]) \
        if (tmp_path / "run" / "history").exists() else events_of(tmp_path / "run")
    last = events.groupby("user_id", observed=True)["timestamp"].max()
    first_new = bridged.groupby("user_id")["timestamp"].min()
    assert set(first_new.index) <= set(last.index)
    assert (first_new > last.reindex(first_new.index)).all()
    closed = events.groupby("user_id", observed=True)["event_type"].last().astype(str) == "account_closed"
    assert not bridged["user_id"].isin(closed.index[closed]).any()
    # the future follows the user's own past: busier before the cut, busier after it - far more so than
    # for the same customers continued from their first event only
    first_only = tmp_path / "first"
    first_only.mkdir()
    events.groupby("user_id", observed=True).head(1).to_parquet(first_only / "events.parquet")
    (log_dir / "users.parquet").rename(first_only / "users.parquet")
    simulate(model_dir, SimulateConfig(users=None, history=str(first_only), start=str(cut.date()), days=20, seed=1),
             tmp_path / "blind")
    (first_only / "users.parquet").rename(log_dir / "users.parquet")
    before = events.groupby("user_id", observed=True).size()
    open_users = ~closed.reindex(before.index, fill_value=False)

    def follows(run) -> float:
        after = events_of(run).groupby("user_id").size().reindex(before.index, fill_value=0)
        return np.corrcoef(np.log1p(before[open_users]), np.log1p(after[open_users]))[0, 1]

    assert follows(tmp_path / "run") > follows(tmp_path / "blind") + 0.15
    with pytest.raises(TwinsimError, match="--start"):
        simulate(model_dir, SimulateConfig(users=None, history=str(log_dir), start="2025-02-01", days=5),
                 tmp_path / "early")


@pytest.mark.parametrize("body, message", [
    ('[[campaign]]\nname="x"\nstart=1\nend=5\nevent_type="teleport"', "event_type: event type 'teleport'"),
    ('[[campaign]]\nname="x"\nstart=1\nend=5\nevent_type="offer_shown"\nmarks={product="yacht"}', "product = 'yacht'"),
    ('[[campaign]]\nname="x"\nstart=1\nend=5\nevent_type="offer_shown"\nbudgett=3', "unknown key"),
    ('[[campaign]]\nname="x"\nstart=5\nend=1\nevent_type="offer_shown"', "must come after"),
    ('[[campaign]]\nname="x"\nstart=1\nend=5\nevent_type="account_closed"', "terminal"),
    ('name = "x"\ncampaigns = 3', "top level: unknown key"),
    ("[[campaign]\n", "not valid TOML"),
])
def test_bad_scenario_files_fail_clearly(model_dir, tmp_path, body, message):
    _, schema, _ = load_model(model_dir)
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(TwinsimError, match=message) as error:
        load_scenario(path, schema, pd.Timestamp("2025-02-01"))
    assert str(path) in str(error.value)


def test_builtin_scenarios_load_and_campaigns_must_fall_inside_the_run(model_dir, tmp_path):
    _, schema, _ = load_model(model_dir)
    assert load_scenario("baseline", schema, pd.Timestamp("2025-02-01")).campaigns == ()
    with pytest.raises(TwinsimError, match="built-in"):
        load_scenario("no_such_scenario", schema, pd.Timestamp("2025-02-01"))
    with pytest.raises(TwinsimError, match="outside the simulated days"):
        simulate(model_dir, SimulateConfig(users=10, start="2025-02-01", days=10, scenario="travel_card_push"),
                 tmp_path / "short")


def test_cli_simulate(model_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli.main, ["simulate", str(model_dir), "--users", "30", "--start", "2025-02-01",
                                      "--days", "5", "--history-days", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "simulated 30 users" in result.output and "events/s" in result.output
    again = runner.invoke(cli.main, ["simulate", str(model_dir), "--users", "30", "--start", "2025-02-01",
                                     "--days", "5", "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
