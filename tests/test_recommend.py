"""A policy in the loop of the twin's cohort engine (simulator/decisions.py): decision points, controlled
events, feedback, pairing and reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinsim.scenarios.policy import FEEDBACK_HOURS, PolicyError
from twinsim.simulator.decisions import DecisionSpec
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.recommend.metrics import outcomes as show_outcomes

POLICIES = Path(__file__).parent / "policies" / "recording.py"
CONFIG = dict(users=150, start="2025-03-01", days=10, seed=3, history_days=7)


def run(model_dir, out, policy, share=0.5, **kw):
    config = SimulateConfig(**{**CONFIG, **kw.pop("config", {})})
    manifest = simulate(model_dir, config, out, overwrite=True, decisions=DecisionSpec(policy=policy, share=share),
                        **kw)
    read = lambda name: pd.read_parquet(out / name) if (out / name).exists() else None  # noqa: E731
    return manifest, read("events"), read("decisions"), read("history")


@pytest.fixture(scope="module")
def random_run(model_dir, tmp_path_factory):
    return run(model_dir, tmp_path_factory.mktemp("rec") / "random", "random")


def test_every_show_is_an_offer_event_and_the_model_draws_none_itself(random_run):
    manifest, events, decisions, _ = random_run
    shown = events[events.event_type == "offer_shown"]
    assert len(decisions) == manifest["policy"]["decisions"] > 50
    assert decisions["product"].notna().all()  # random shows at every decision
    key = ["user_id", "timestamp", "product"]
    a = shown[key].astype(str).sort_values(key).reset_index(drop=True)
    b = decisions[key].astype(str).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)  # no offer the policy did not choose, each at its decision's time
    assert decisions["request_id"].is_unique
    assert events[events.event_type == "offer_click"].shape[0] > 0  # customers answer


def test_decision_points_follow_logins_with_the_share(random_run):
    _, events, decisions, _ = random_run
    logins = events[events.event_type == "login"]
    assert 0.35 < len(decisions) / len(logins) < 0.65  # share 0.5 of the logins (responses add a few)
    first_login = logins.groupby("user_id")["timestamp"].min()
    first_decision = decisions.groupby("user_id")["timestamp"].min()
    lag = (first_decision - first_login.reindex(first_decision.index)).dt.total_seconds()
    assert (lag >= 1).all()  # 1 to 20 s after some login, never before the first


def test_warm_up_is_the_baseline_and_decision_points_are_paired(model_dir, tmp_path, random_run):
    _, _, decisions, history = random_run
    baseline = simulate(model_dir, SimulateConfig(**CONFIG), tmp_path / "base", overwrite=True)
    assert baseline["status"] == "complete"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "base" / "history"), history)
    _, _, other, _ = run(model_dir, tmp_path / "nothing", f"{POLICIES}:Nothing")
    assert other["product"].isna().all()
    first = lambda d: d[d.request_id.str.endswith(":0")].set_index("request_id")["timestamp"].sort_index()  # noqa
    pd.testing.assert_series_equal(first(decisions), first(other))  # the same customers' first decision points


def test_a_policy_that_shows_nothing_leaves_no_offer(model_dir, tmp_path):
    _, events, decisions, history = run(model_dir, tmp_path / "n", f"{POLICIES}:Nothing")
    assert len(decisions) > 0 and (events.event_type == "offer_shown").sum() == 0
    assert (history.event_type == "offer_shown").sum() > 0  # the warm-up's bank showed offers itself


def test_same_seed_same_run_and_workers_do_not_change_it(model_dir, tmp_path, random_run):
    _, events, decisions, _ = random_run
    _, events2, decisions2, _ = run(model_dir, tmp_path / "w2", "random", workers=2, config={"cohort_size": 75})
    _, events3, decisions3, _ = run(model_dir, tmp_path / "w3", "random", config={"cohort_size": 75})
    pd.testing.assert_frame_equal(events2, events3)
    pd.testing.assert_frame_equal(decisions2, decisions3)
    key = lambda d: d.sort_values(["user_id", "timestamp"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(decisions), key(decisions3))  # a stateless policy: cohorts do not matter


def test_feedback_only_for_closed_windows_and_outcomes_match_events(model_dir, tmp_path):
    from tests.policies.recording import Recording  # a module:Class spec, as a package's policy is named

    _, events, decisions, _ = run(model_dir, tmp_path / "r", "tests.policies.recording:Recording:product=savings",
                                  config={"users": 60})
    policy = Recording.last
    assert policy.feedback_seen, "a learning policy got no feedback"
    window = pd.Timedelta(hours=FEEDBACK_HOURS)
    for before, outcomes in policy.feedback_seen:
        if before < len(policy.batches):  # every window closed before the next decision asked
            assert (outcomes.shown_time + window <= policy.batches[before].time.min()).all()
    fed = pd.concat([pd.DataFrame({"request_id": o.request_id, "user_id": o.user_id, "shown": o.shown_time,
                                   "clicked": o.clicked}) for _, o in policy.feedback_seen])
    assert fed["request_id"].is_unique and fed["request_id"].isin(decisions["request_id"]).all()
    # the analysis's definition (metrics.outcomes): each click belongs to the latest show of its product
    # before it, so two shows of savings less than a day apart do not both earn the one click
    truth = show_outcomes(decisions, events).set_index("request_id")["clicked"]
    assert (fed.set_index("request_id")["clicked"] == truth.reindex(fed["request_id"])).all()
    assert fed["clicked"].any()


@pytest.mark.parametrize("cls, message", [("WrongShape", "actions for"), ("Unknown", "not products"),
                                          ("Missing", "has no 'Missing'")])
def test_bad_policies_get_clear_errors(model_dir, tmp_path, cls, message):
    with pytest.raises(PolicyError, match=message) as e:
        run(model_dir, tmp_path / cls, f"{POLICIES}:{cls}")
    assert "recording.py" in str(e.value)


def test_the_logged_policy_shows_what_the_model_would(model_dir, tmp_path):
    _, events, decisions, history = run(model_dir, tmp_path / "logged", "logged")
    assert decisions["propensity"].between(0, 1).all() and decisions["product"].notna().all()
    mix = decisions["product"].value_counts(normalize=True)
    bank = history.loc[history.event_type == "offer_shown", "product"].value_counts(normalize=True)
    assert np.abs(mix.reindex(bank.index, fill_value=0) - bank).sum() < 0.5  # the bank's mix, roughly


def test_an_http_policy_in_the_loop_counts_its_failures(model_dir, tmp_path):
    from twinsim.scenarios.policies.example_service import fetch_stats, serve_in_thread

    with serve_in_thread(error_share=0.1, stall_share=0.05, stall_s=2.0) as base:
        spec = DecisionSpec(policy=f"{base}/recommend", share=0.5,
                            http={"concurrency": 8, "timeout_s": 0.3, "fallback": "savings"})
        manifest = simulate(model_dir, SimulateConfig(**{**CONFIG, "users": 60}), tmp_path / "h", overwrite=True,
                            decisions=spec)
        served = fetch_stats(base)
    decisions = pd.read_parquet(tmp_path / "h" / "decisions")
    policy = manifest["policy"]
    assert policy["service"]["calls"] == len(decisions) == policy["decisions"] > 20
    failed = decisions["failure"].notna()
    assert failed.any() and (decisions.loc[failed, "product"] == "savings").all()  # the fallback, counted
    assert set(decisions.loc[failed, "failure"]) <= {"http 503", "timeout"}
    assert decisions.loc[failed, "failure"].value_counts().to_dict() == policy["failures"]
    assert decisions["latency_ms"].notna().all() and served["requests"] >= len(decisions)


def test_recommend_refuses_a_dead_url_before_simulating(model_dir, tmp_path):
    import socket

    from twinsim.simulator.recommend.run import RecommendConfig, recommend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PolicyError, match="nothing listens"):
        recommend(model_dir, [f"http://127.0.0.1:{port}/recommend"], RecommendConfig(users=20, start="2025-03-01",
                                                                                     days=2), tmp_path / "dead")
    assert not (tmp_path / "dead").exists()


def test_recommend_on_the_command_line_writes_the_side_by_side_report(model_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from twinsim.cli import main

    out = tmp_path / "rec"
    result = CliRunner().invoke(main, ["recommend", str(model_dir), "--policy", "random", "--policy",
                                       "fixed:product=savings", "--users", "60", "--start", "2025-03-01", "--days",
                                       "5", "--history-days", "3", "--share", "0.5", "--values",
                                       "savings=120", "--workers", "1", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["table"]) == ["random", "fixed[product=savings]"]
    fixed = report["table"]["fixed[product=savings]"]
    assert fixed["coverage_products"] == pytest.approx(1 / 5)  # one product of the five
    assert fixed["revenue"] == pytest.approx(120 * fixed["purchases"])
    assert "<html" in (out / "report.html").read_text()
    again = CliRunner().invoke(main, ["recommend", str(model_dir), "--policy", "random", "--policy", "random",
                                      "--users", "10", "--start", "2025-03-01", "-o", str(tmp_path / "x")])
    assert again.exit_code != 0 and "given twice" in again.output


def test_an_http_policy_gets_its_outcomes_at_the_feedback_url(model_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from twinsim.cli import main
    from twinsim.scenarios.policies.example_service import fetch_stats, serve_in_thread

    out = tmp_path / "fb"
    with serve_in_thread() as base:
        result = CliRunner().invoke(main, ["recommend", str(model_dir), "--policy", f"{base}/recommend",
                                           "--feedback-url", f"{base}/feedback", "--users", "60", "--start",
                                           "2025-03-01", "--days", "6", "--history-days", "3", "--workers", "1",
                                           "-o", str(out), "--quiet"])
        served = fetch_stats(base)
    assert result.exit_code == 0, result.output
    run_dir = next((out / "policies").iterdir())
    decisions = pd.read_parquet(run_dir / "decisions")
    last_update = pd.Timestamp("2025-03-06", tz="UTC")  # daily updates; the last one a day before the end
    shown = pd.to_datetime(decisions["timestamp"], utc=True)[decisions["product"].notna()]
    closed = (shown + pd.Timedelta(hours=FEEDBACK_HOURS) <= last_update).sum()
    # every shown offer whose 24-hour window closed by the last update was fed back, once
    assert served["feedback_posts"] >= 1 and served["outcomes"] >= closed > 0
    assert served["outcomes"] <= decisions["product"].notna().sum()
    service = json.loads((run_dir / "manifest.json").read_text())["policy"]["service"]
    assert service["feedback_posts"] == served["feedback_posts"] and service["feedback_failures"] == {}
