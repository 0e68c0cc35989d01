"""twinsim whatif: the report of a campaign, zero uplift for the baseline, the figures against a direct pandas
computation, what pairing buys, model uncertainty across models, the A/B readout, resume and bad options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from twinsim import cli
from twinsim.models.errors import TwinsimError
from twinsim.models.twin import TwinModel
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world
from twinsim.simulator.whatif import uplift_between
from twinsim.simulator.whatif.uplift import Z95

START, DAYS = "2025-02-01", 28  # travel_card_push exposes on days 7 and 14
OPTIONS = ["--users", "200", "--start", START, "--days", str(DAYS), "--seed", "3", "--history-days", "3",
           "--workers", "1"]
SHOWN = "offer_shown[product=travel_card]"
CLICKS = "offer_click[product=travel_card]"


@pytest.fixture(scope="module")
def push(model_dir, tmp_path_factory):
    """The built-in campaign's what-if, from the command line: (directory, command output)."""
    out = tmp_path_factory.mktemp("whatif") / "push"
    result = CliRunner().invoke(cli.main, ["whatif", str(model_dir), "--scenario", "travel_card_push", *OPTIONS,
                                           "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def second_model(small_log, tmp_path_factory):
    """The small world trained again with another seed (and fewer epochs): a second model of the same data."""
    from tests.conftest import TINY
    from twinsim.models.training import TrainConfig, train

    out = tmp_path_factory.mktemp("model2") / "m"
    train(small_log, out, model_overrides=TINY, config=TrainConfig(epochs=3, batch_size=32, seed=2))
    return out


def outcome(report: dict, name: str) -> dict:
    return next(o for o in report["outcomes"] if o["name"] == name)


def events(run) -> pd.DataFrame:
    frame = pd.read_parquet(run / "events").drop(columns="date")
    frame = frame.astype({c: "object" for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def test_the_builtin_campaign_what_if_writes_a_report_with_an_offer_uplift_whose_interval_excludes_zero(push):
    out, output = push
    report = json.loads((out / "uplift.json").read_text())
    assert (out / "baseline" / "manifest.json").exists() and (out / "scenario" / "manifest.json").exists()
    shown = outcome(report, SHOWN)
    assert shown["uplift"] > 0 and shown["ci"][0] > 0 and shown["significant"]
    assert shown["relative_ci"][0] > 0 and report["headline"][0] == SHOWN
    assert not report["includes_model_uncertainty"] and "do not include model uncertainty" in report["interval"]
    manifest = json.loads((out / "scenario" / "manifest.json").read_text())
    assert report["exposures"]["travel-push"]["exposures"] == manifest["exposures"] > 0
    assert set(report["exposures"]["travel-push"]["per_day"]) == {"2025-02-08", "2025-02-15"}
    curve = report["cumulative"][SHOWN]
    assert len(curve["days"]) == DAYS and curve["uplift"][:7] == [0.0] * 7  # nobody differs before day 7
    assert curve["uplift"][-1] == pytest.approx(shown["uplift"])
    assert set(report["segments"]) >= {"age_band", "segment"}
    young = report["segments"]["age_band"]
    assert young["18-24"]["outcomes"][SHOWN]["uplift"] > 0
    assert young["65+"]["outcomes"][SHOWN]["uplift"] == 0.0  # outside the campaign's segment: untouched
    page = (out / "uplift.html").read_text()
    assert "data:image/png;base64," in page and SHOWN in page and "Cumulative uplift" in page
    assert f"{SHOWN}: " in output and "report written to" in output


def test_the_uplift_equals_a_direct_pandas_computation_on_the_two_runs(push):
    out, _ = push
    report = json.loads((out / "uplift.json").read_text())
    users = pd.read_parquet(out / "baseline" / "users.parquet")["user_id"].astype(str)
    start = pd.Timestamp(START, tz="UTC")

    def clicks(run) -> pd.Series:
        e = events(run)
        e = e[(e["timestamp"] >= start) & (e["timestamp"] < start + pd.Timedelta(days=DAYS))
              & (e["event_type"] == "offer_click") & (e["product"] == "travel_card")]
        return e.groupby("user_id").size().reindex(users, fill_value=0).astype(float)

    b, s = clicks(out / "baseline"), clicks(out / "scenario")
    d = s - b
    got = outcome(report, CLICKS)
    assert got["baseline"] == pytest.approx(b.mean()) and got["scenario"] == pytest.approx(s.mean())
    assert got["uplift"] == pytest.approx(d.mean())
    assert got["variance"] == pytest.approx(d.var() / len(d))
    assert got["variance_unpaired"] == pytest.approx((b.var() + s.var()) / len(d))
    assert got["ci"] == pytest.approx([d.mean() - Z95 * d.std() / np.sqrt(len(d)),
                                       d.mean() + Z95 * d.std() / np.sqrt(len(d))])
    rel = s.mean() / b.mean() - 1
    grad = np.array([-s.mean() / b.mean() ** 2, 1 / b.mean()])  # delta method on mean(s) / mean(b)
    cov = np.cov(np.vstack([b, s])) / len(d)
    assert got["relative"] == pytest.approx(rel) and got["relative_variance"] == pytest.approx(grad @ cov @ grad)


def test_paired_variance_is_at_most_the_unpaired_one(push):
    report = json.loads((push[0] / "uplift.json").read_text())
    compared = [o for o in report["outcomes"] if o["variance_unpaired"]]
    assert len(compared) > 20
    assert all(o["variance"] <= o["variance_unpaired"] * (1 + 1e-9) for o in compared)
    assert outcome(report, "login")["variance_ratio"] < 0.5  # common random numbers cut the noise


def test_the_baseline_scenario_gives_bit_identical_runs_and_zero_uplift_with_zero_variance(model_dir, tmp_path):
    report = TwinModel(model_dir).whatif("baseline", tmp_path / "w", users=120, start=START, days=10, seed=2,
                                         history_days=2, workers=1)
    pd.testing.assert_frame_equal(events(tmp_path / "w" / "baseline"), events(tmp_path / "w" / "scenario"))
    assert len(report["outcomes"]) > 10 and report["exposures"] == {} and report["ab_test"] == {}
    for o in report["outcomes"]:
        assert o["uplift"] == 0.0 and o["variance"] == 0.0 and o["ci"] == [0.0, 0.0] and not o["significant"]
    assert json.loads((tmp_path / "w" / "uplift.json").read_text())["outcomes"] == report["outcomes"]


def test_two_models_pool_into_a_wider_interval_that_includes_model_uncertainty(model_dir, second_model, push,
                                                                               tmp_path):
    report = TwinModel(model_dir).whatif("travel_card_push", tmp_path / "w", users=200, start=START, days=DAYS,
                                         seed=3, history_days=3, models=[second_model], workers=1)
    assert (tmp_path / "w" / "models" / "2" / "scenario" / "manifest.json").exists()
    single = json.loads((push[0] / "uplift.json").read_text())  # model 1 alone, the same customers and seed
    first = uplift_between(tmp_path / "w" / "baseline", tmp_path / "w" / "scenario")
    assert outcome(first, SHOWN) == outcome(single, SHOWN)
    other = uplift_between(tmp_path / "w" / "models" / "2" / "baseline", tmp_path / "w" / "models" / "2" / "scenario")
    both = outcome(report, SHOWN)
    q = [outcome(first, SHOWN)["uplift"], outcome(other, SHOWN)["uplift"]]
    u = [outcome(first, SHOWN)["variance"], outcome(other, SHOWN)["variance"]]
    assert both["models"] == 2 and both["includes_model_uncertainty"] and both["per_model"] == q
    assert both["uplift"] == pytest.approx(np.mean(q))
    assert both["variance"] == pytest.approx(np.mean(u) + 1.5 * np.var(q, ddof=1))  # Rubin: W + (1 + 1/M) B
    pooled, alone = both["ci"], outcome(single, SHOWN)["ci"]
    assert pooled[1] - pooled[0] > alone[1] - alone[0]
    spread = [o for o in report["outcomes"] if o["between_variance"]]
    assert len(spread) > 20  # which outcomes the two models disagree on depends on the trained models
    for o in report["outcomes"]:
        if o.get("per_model") is not None:
            assert (o["between_variance"] > 0) == (len(set(o["per_model"])) > 1)
    assert outcome(report, CLICKS)["per_model"] == [outcome(first, CLICKS)["uplift"], outcome(other, CLICKS)["uplift"]]
    for o in spread:  # wider than an interval of the models' own noise alone, whatever each model's noise
        assert o["ci"][1] - o["ci"][0] > 2 * Z95 * np.sqrt(o["within_variance"])
    assert report["includes_model_uncertainty"] and "include model uncertainty" in report["interval"]
    assert "include model uncertainty" in (tmp_path / "w" / "uplift.html").read_text()
    assert report["exposures"]["travel-push"]["per_model"][0] == single["exposures"]["travel-push"]["exposures"]


def test_reference_world_runs_and_an_assignments_table_give_the_a_b_readout(tmp_path):
    for name in ("a", "b"):
        generate_reference_world(WorldConfig(users=300, days=40, seed=5), tmp_path / name)
    base = uplift_between(tmp_path / "a", tmp_path / "b")  # the same world twice: no effect at all
    assert base["runs"][0]["kind"] == "world" and base["terminal_types"] == ["account_closed"]
    assert all(o["uplift"] == 0.0 and o["variance"] == 0.0 for o in base["outcomes"])
    users = pd.read_parquet(tmp_path / "b" / "users.parquet")["user_id"].astype(str)
    arm = np.where(np.random.default_rng(0).random(len(users)) < 0.3, "control", "treatment")
    pd.DataFrame({"user_id": users, "campaign": "push", "arm": arm}).to_parquet(tmp_path / "b" / "assignments.parquet")
    report = uplift_between(tmp_path / "a", tmp_path / "b", headline=["login", "card_payment:amount"])
    ab = report["ab_test"]["push"]
    logins = pd.read_parquet(tmp_path / "b" / "events.parquet").query("event_type == 'login'")
    per = logins.groupby(logins["user_id"].astype(str)).size().reindex(users, fill_value=0).to_numpy(float)
    t, c = per[arm == "treatment"], per[arm == "control"]
    assert ab["treatment"] == len(t) and ab["control"] == len(c)
    readout = ab["readout"]["login"]
    assert readout["uplift"] == pytest.approx(t.mean() - c.mean())
    half = Z95 * np.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
    assert readout["ci"] == pytest.approx([t.mean() - c.mean() - half, t.mean() - c.mean() + half])
    assert ab["paired_treated"]["login"]["uplift"] == 0.0  # the same world: the treated did what they did anyway
    assert "A/B readout" in render(report)


def render(report: dict) -> str:
    from twinsim.simulator.whatif.report import render_html

    return render_html(report)


def test_an_interrupted_what_if_resumes_to_the_same_report(model_dir, push, tmp_path):
    out = tmp_path / "w"
    shutil.copytree(push[0], out)
    shutil.rmtree(out / "baseline")  # as if killed while the baseline ran
    (out / "uplift.json").unlink()
    runner = CliRunner()
    again = runner.invoke(cli.main, ["whatif", str(model_dir), "--scenario", "travel_card_push", *OPTIONS,
                                     "-o", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(cli.main, ["whatif", str(model_dir), "--scenario", "travel_card_push", *OPTIONS,
                                       "-o", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    got, want = (json.loads((d / "uplift.json").read_text()) for d in (out, push[0]))
    assert got["outcomes"] == want["outcomes"] and got["segments"] == want["segments"]


@pytest.mark.parametrize("extra, message", [
    (["--users", "10", "--start", START, "--history", "LOG"], "not both"),
    (["--days", "5"], "give the customers"),
    (["--users", "10", "--start", START, "--days", "0"], "--days must be at least 1"),
    (["--users", "10", "--start", START, "--days", "10"], "outside the simulated days"),
])
def test_bad_options_fail_clearly(model_dir, tmp_path, extra, message):
    result = CliRunner().invoke(cli.main, ["whatif", str(model_dir), "--scenario", "travel_card_push", *extra,
                                           "--workers", "1", "-o", str(tmp_path / "w")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w" / "baseline").exists()  # nothing was simulated


def test_other_models_must_share_the_vocabulary_and_runs_must_be_runs(model_dir, sparse_model, tmp_path):
    result = CliRunner().invoke(cli.main, ["whatif", str(model_dir), "--scenario", "baseline", "--users", "10",
                                           "--start", START, "--models", str(sparse_model), "-o", str(tmp_path / "w")])
    assert result.exit_code == 2 and "differ from" in result.output and "other seeds" in result.output
    twice = CliRunner().invoke(cli.main, ["whatif", str(model_dir), "--scenario", "baseline", "--users", "10",
                                          "--start", START, "--models", str(tmp_path), str(model_dir),
                                          "-o", str(tmp_path / "w")])  # --models M2 M3: both are taken
    assert twice.exit_code == 2 and "no model.json" in twice.output
    with pytest.raises(TwinsimError, match="not a run directory"):
        uplift_between(tmp_path, tmp_path)
    with pytest.raises(TwinsimError, match="one baseline run per scenario run"):
        uplift_between([tmp_path, tmp_path], [tmp_path])
