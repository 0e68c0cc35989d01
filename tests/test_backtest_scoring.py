"""Backtest scoring, baselines and report, on logs simulated here from known processes (numpy, seeded)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from twinsim.simulator.backtest.baselines import BTYD_EXTRA, btyd, own_rate, rfm_summary, week_ends
from twinsim.simulator.backtest.report import backtest_report, write_report
from twinsim.simulator.backtest.score import (
    churn_by_horizon,
    forecast_metrics,
    per_customer_counts,
    score,
    weekly_cumulative,
)

START = pd.Timestamp("2024-01-01", tz="UTC")
CUT = START + pd.Timedelta(days=365)


def _log(rows: list[tuple[str, float, str]]) -> pd.DataFrame:
    """Events from (user, days after START, type)."""
    frame = pd.DataFrame(rows, columns=["user_id", "day", "event_type"])
    frame["timestamp"] = START + pd.to_timedelta(frame.pop("day"), unit="D")
    return frame[["user_id", "timestamp", "event_type"]]


def poisson_log(users: int, horizon: float, seed: int, churn: float = 0.0) -> pd.DataFrame:
    """Customers who sign up uniformly in the first 200 days, then pay by card as a Poisson process at their own
    (lognormal) rate until START + 365 + horizon; a share ``churn`` closes the account at a uniform time."""
    rng = np.random.default_rng(seed)
    end = 365 + horizon
    rows = []
    for i in range(users):
        user, birth = f"u{i}", rng.uniform(0, 200)
        rate = rng.lognormal(np.log(0.3), 0.8)
        stop = rng.uniform(birth, end) if rng.random() < churn else end
        rows.append((user, birth, "signup"))
        rows += [(user, d, "card_payment") for d in rng.uniform(birth, stop, rng.poisson(rate * (stop - birth)))]
        rows += [(user, d, "login") for d in rng.uniform(birth, stop, rng.poisson(0.1 * (stop - birth)))]
        if stop < end:
            rows.append((user, stop, "account_closed"))
    return _log(rows)


def bgnbd_log(users: int, horizon: float, seed: int, r=2.0, alpha=20.0, a=0.8, b=4.0) -> pd.DataFrame:
    """A BG/NBD process: the first purchase at birth (uniform in the first 180 days), then purchases at a
    gamma(r, alpha)-distributed rate; after each, the customer drops out with a beta(a, b) probability."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(users):
        rate, p, t = rng.gamma(r, 1 / alpha), rng.beta(a, b), rng.uniform(0, 180)
        rows.append((f"u{i}", t, "purchase"))
        while (t := t + rng.exponential(1 / rate)) < 365 + horizon:
            rows.append((f"u{i}", t, "purchase"))
            if rng.random() < p:
                break
    return _log(rows)


def test_per_customer_counts_is_half_open_ordered_and_zero_filled():
    start, end = START + pd.Timedelta(days=10), START + pd.Timedelta(days=20)
    events = _log([("b", 10, "x"), ("b", 15, "x"), ("b", 20, "x"), ("b", 9.999, "x"), ("b", 12, "y"),
                   ("a", 19.999, "x"), ("z", 15, "x"), ("a", 15, "other")])
    counts = per_customer_counts(events, ["c", "b", "a"], ["x", "y"], start, end)
    assert list(counts.index) == ["c", "b", "a"] and list(counts.columns) == ["x", "y"]
    # b: day 10 (= start) and 15 count, day 20 (= end) and before the start do not; z is not asked for
    assert counts.to_dict("index") == {"c": {"x": 0, "y": 0}, "b": {"x": 2, "y": 1}, "a": {"x": 1, "y": 0}}
    assert per_customer_counts(events, ["b"], ["x"], None, end).loc["b", "x"] == 3
    assert per_customer_counts(events, ["b"], ["x"], start, None).loc["b", "x"] == 3
    weekly = weekly_cumulative(events, ["a", "b", "c"], ["x"], start, [5.0, 10.0])
    assert weekly["x"].tolist() == [1.0, 3.0]  # [start, start + 5): b's day 10; to day 20: + b 15, a 19.999
    with pytest.raises(ValueError, match="duplicates"):
        per_customer_counts(events, ["a", "a"], ["x"], start, end)


def test_week_ends_end_at_the_horizon():
    assert week_ends(21) == [7.0, 14.0, 21.0]
    assert week_ends(30) == [7.0, 14.0, 21.0, 28.0, 30.0]
    assert week_ends(3) == [3.0]


def test_forecast_metrics_on_known_numbers():
    m = forecast_metrics(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0]))
    assert m["total"] == 6.0 and m["relative_error"] == 0.0
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert m["corr"] == pytest.approx(1.0)
    nothing = forecast_metrics(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert nothing["relative_error"] is None and nothing["corr"] is None


def test_buckets_count_customers_by_calibration_frequency():
    history = [0, 0, 1, 2, 3, 4, 7, 8, 15, 16, 200]
    users = [f"u{i}" for i in range(len(history))]
    calibration = pd.DataFrame({"x": history}, index=users)
    actual = pd.DataFrame({"x": [1.0] * len(users)}, index=users)
    forecast = pd.DataFrame({"x": [float(h) for h in history]}, index=users)
    result = score(actual, {"f": forecast}, calibration)["x"]
    buckets = {b["bucket"]: b["customers"] for b in result["buckets"]}
    assert buckets == {"0": 2, "1": 1, "2": 1, "3": 1, "4-7": 2, "8-15": 2, "16-31": 1, "128+": 1}
    four_to_seven = next(b for b in result["buckets"] if b["bucket"] == "4-7")
    assert four_to_seven["methods"]["f"]["mae"] == pytest.approx((3 + 6) / 2)
    with pytest.raises(ValueError, match="same customers"):
        score(actual, {"f": forecast.iloc[::-1]}, calibration)


def test_own_rate_recovers_poisson_totals_and_beats_a_constant():
    horizon = 60
    events = poisson_log(600, horizon, seed=1)
    users = sorted(events["user_id"].unique())
    forecast = own_rate(events, users, ["card_payment", "login"], CUT, horizon)
    actual = per_customer_counts(events, users, ["card_payment", "login"], CUT, CUT + pd.Timedelta(days=horizon))
    constant = pd.DataFrame({t: forecast.counts[t].mean() for t in actual.columns}, index=actual.index)
    calibration = per_customer_counts(events, users, ["card_payment", "login"], None, CUT)
    result = score(actual, {"own_rate": forecast.counts, "constant": constant}, calibration)
    for t in ("card_payment", "login"):
        assert abs(result[t]["methods"]["own_rate"]["relative_error"]) < 0.05, (t, result[t])
        # linear weekly curve that ends at the forecast total
        assert forecast.weekly[t].iloc[-1] == pytest.approx(forecast.counts[t].sum())
    # card payments differ between customers, so a customer's own rate beats the population's; logins have one
    # rate for everybody, where the constant is as good or better
    payments = result["card_payment"]
    assert payments["methods"]["own_rate"]["mae"] < 0.5 * payments["methods"]["constant"]["mae"]
    assert payments["best_mae"] == "own_rate"


def test_rfm_summary_follows_the_documented_convention():
    cut = START + pd.Timedelta(days=30)
    events = _log([("a", 0, "signup"), ("a", 0, "buy"), ("a", 3, "buy"), ("a", 10, "buy"), ("a", 31, "buy"),
                   ("b", 2, "login"), ("b", 5, "buy"), ("c", 4, "login"), ("c", 4, "buy"), ("c", 4, "buy")])
    rfm = rfm_summary(events, ["a", "b", "c"], "buy", cut)
    # a: the buy at birth is the first purchase; day 31 is after the cut. b: born by a login, so its first
    # buy counts. c: one of its two buys at the birth instant is the first purchase.
    assert rfm.loc["a"].tolist() == [2, 10.0, 30.0]
    assert rfm.loc["b"].tolist() == [1, 3.0, 28.0]
    assert rfm.loc["c"].tolist() == [1, 0.0, 26.0]


def test_bgnbd_recovers_the_total_of_a_bgnbd_process():
    pytest.importorskip("lifetimes")
    horizon = 90
    events = bgnbd_log(2000, horizon, seed=5)
    users = sorted(events.loc[events["timestamp"] < CUT, "user_id"].unique())
    actual = per_customer_counts(events, users, ["purchase"], CUT, CUT + pd.Timedelta(days=horizon))
    lines = []
    forecast = btyd(events, users, ["purchase"], CUT, horizon, "bg_nbd", progress=lines.append)
    status = forecast.status["purchase"]
    assert status["status"] == "ok" and status["penalizer"] == 0.001 and lines == ["BG/NBD: fitting purchase (1/1)"]
    assert set(status["params"]) == {"r", "alpha", "a", "b"}
    total = forecast.counts["purchase"].sum()
    assert abs(total / actual["purchase"].sum() - 1) < 0.10
    assert forecast.weekly["purchase"].iloc[-1] == pytest.approx(total)
    assert forecast.weekly["purchase"].is_monotonic_increasing
    pareto = btyd(events, users, ["purchase"], CUT, horizon, "pareto_nbd")
    assert abs(pareto.counts["purchase"].sum() / actual["purchase"].sum() - 1) < 0.15
    # Pareto/NBD would start from a random point without a fixed one: the same data must give the same report
    again = btyd(events, users, ["purchase"], CUT, horizon, "pareto_nbd")
    assert again.status == pareto.status and again.counts.equals(pareto.counts)


def test_btyd_reports_failures_and_terminal_types_per_type():
    pytest.importorskip("lifetimes")
    events = poisson_log(50, 30, seed=3, churn=0.3)
    users = sorted(events["user_id"].unique())
    # signup happens once, at birth: no repeat to fit
    forecast = btyd(events, users, ["signup", "account_closed"], CUT, 30, "bg_nbd", terminal_types=["account_closed"])
    assert forecast.status["signup"]["status"] == "failed" and "nothing to fit" in forecast.status["signup"]["message"]
    assert forecast.status["account_closed"]["status"] == "not_forecast"
    assert list(forecast.counts.columns) == []


def test_missing_lifetimes_is_reported_with_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lifetimes", None)  # import lifetimes now raises ImportError
    events = poisson_log(40, 30, seed=2)
    users = sorted(events["user_id"].unique())
    forecast = btyd(events, users, ["card_payment"], CUT, 30, "pareto_nbd")
    assert forecast.status == {"card_payment": {"status": "missing", "message": forecast.status["card_payment"][
        "message"]}}
    assert BTYD_EXTRA in forecast.status["card_payment"]["message"]
    report = backtest_report(events, CUT, 30, [], terminal_types=())
    assert any(BTYD_EXTRA in line for line in report["missing"])
    assert report["baselines"]["bg_nbd"]["card_payment"]["status"] == "missing"
    assert set(report["types"]["card_payment"]["methods"]) == {"own_rate"}


def test_churn_excludes_customers_churned_before_the_cut():
    cut, horizon = START + pd.Timedelta(days=10), 10
    events = _log([("a", 1, "login"), ("a", 5, "closed"), ("b", 1, "login"), ("b", 12, "closed"),
                   ("c", 1, "login"), ("c", 10, "closed"), ("d", 1, "login"), ("d", 20, "closed")])
    draws = [_log([("b", 15, "closed")]), _log([("b", 15, "closed"), ("c", 11, "closed"), ("d", 11, "closed")])]
    churn = churn_by_horizon(events, draws, ["a", "b", "c", "d"], ["closed"], cut, horizon)
    # a churned before the cut; c at the cut (inside the horizon); d at the horizon's end (outside)
    assert churn["customers"] == 3 and churn["excluded_churned_before_cut"] == 1
    assert churn["any"]["actual"] == pytest.approx(2 / 3)
    assert churn["any"]["twin_draws"] == pytest.approx([1 / 3, 1.0])
    assert churn["any"]["twin"] == pytest.approx(2 / 3)
    assert churn["by_type"]["closed"]["actual"] == pytest.approx(2 / 3)
    assert churn_by_horizon(events, draws, ["a"], [], cut, horizon) is None


def test_backtest_report_writes_json_and_html_for_every_type(tmp_path):
    horizon = 28
    events = poisson_log(150, horizon, seed=4, churn=0.2)
    future = events[(events["timestamp"] >= CUT) & (events["timestamp"] < CUT + pd.Timedelta(days=horizon))]
    # stand-in twin draws: thinned copies of the real future, plus an event outside the horizon to be ignored
    draws = [pd.concat([future.sample(frac=f, random_state=k), _log([("u0", 500.0, "login")])])
             for k, f in enumerate((0.8, 0.9, 1.0))]
    lines = []
    report = backtest_report(events, CUT, horizon, draws, terminal_types=["account_closed"], progress=lines.append)
    assert lines and lines[0].startswith("counting events")
    json.dumps(report, allow_nan=False)  # JSON as is: no NaN, no numpy types
    assert report["settings"]["types"] == ["card_payment", "login", "signup"]
    assert report["customers"]["churned_before_cut"] > 0
    assert report["churn"]["excluded_churned_before_cut"] == report["customers"]["churned_before_cut"]
    assert report["events"]["twin"]["ignored_outside_horizon"] == 3
    payments = report["types"]["card_payment"]
    spread = payments["twin_spread"]
    assert len(spread["draws"]) == 3 and spread["draws"][0] < spread["draws"][2]
    assert payments["methods"]["twin"]["total"] == pytest.approx(spread["mean"])
    assert payments["weekly"]["methods"]["twin"][-1] == pytest.approx(spread["mean"])
    assert payments["weekly"]["actual"][-1] == payments["actual_total"]
    assert report["winners"]["card_payment"] == payments["best_mae"]

    out = write_report(report, tmp_path / "report")
    loaded = json.loads((out / "report.json").read_text())
    assert set(loaded["types"]) == set(report["settings"]["types"])
    page = (out / "report.html").read_text()
    assert all(f"<h2>{t}</h2>" in page for t in report["settings"]["types"])
    assert page.count("data:image/png;base64,") == len(report["types"])
    assert "Churn by the horizon" in page
