"""The metrics and the report of ``twinsim recommend``: small hand-made runs with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from twinsim.simulator.recommend.metrics import compare, measure, outcomes, paired
from twinsim.simulator.recommend.report import write_report
from twinsim.simulator.whatif.runs import read_run
from twinsim.simulator.whatif.uplift import Z95

START = pd.Timestamp("2025-01-01", tz="UTC")
VALUES = {"card": 10.0, "loan": 100.0, "savings": 5.0}


def at(day: float, hours: float = 0.0) -> pd.Timestamp:
    return START + pd.Timedelta(days=day, hours=hours)


def decisions(rows, policy: str = "p", latency: bool = True) -> pd.DataFrame:
    """(user, time, product[, latency_ms, failure]) rows as a decisions table, request ids numbered per user."""
    frame = pd.DataFrame([(*r, *[None] * (5 - len(r))) for r in rows],
                         columns=["user_id", "timestamp", "product", "latency_ms", "failure"])
    frame["request_id"] = frame["user_id"] + ":" + frame.groupby("user_id").cumcount().astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[us, UTC]")
    frame["propensity"] = np.nan
    frame["latency_ms"] = frame["latency_ms"].astype(float)
    frame["policy"] = policy
    columns = ["user_id", "request_id", "timestamp", "product", "propensity", "failure", "latency_ms", "policy"]
    return frame[columns if latency else [c for c in columns if c not in ("latency_ms", "failure")]]


def events(rows) -> pd.DataFrame:
    """(user, time, event_type[, product]) rows as an events table."""
    frame = pd.DataFrame([(*r, *[None] * (4 - len(r))) for r in rows],
                         columns=["user_id", "timestamp", "event_type", "product"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[us, UTC]")
    frame["amount"] = np.nan
    frame["channel"] = np.where(frame["product"].notna(), "app", None)
    return frame[["user_id", "timestamp", "event_type", "amount", "channel", "product"]]


def with_shows(d: pd.DataFrame, e: pd.DataFrame) -> pd.DataFrame:
    """The events plus an offer_shown event at each show (as the environments write them), in time order."""
    shown = d[d["product"].notna()]
    shows = events([(u, t, "offer_shown", p) for u, t, p in shown[["user_id", "timestamp", "product"]].itertuples(
        index=False)])
    return pd.concat([e, shows], ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)


def test_outcome_matching_counts_the_same_product_within_24_hours_and_each_click_once():
    d = decisions([("a", at(0), "card"), ("b", at(0), "card"), ("b", at(0, 3), "card"), ("c", at(0), "card"),
                   ("c", at(0, 2), "card"), ("d", at(0), "card"), ("d", at(0, 1), None)])
    e = events([("a", at(0, 1), "offer_click", "loan"),       # another product: no click of the card
                ("a", at(0, 25), "offer_click", "card"),      # after 24 hours: too late
                ("b", at(0, 1), "offer_click", "card"), ("b", at(0, 2), "offer_click", "card"),  # two clicks, one show
                ("b", at(0, 5), "offer_purchase", "card"),    # after b's second show: that show's purchase
                ("c", at(0, 3), "offer_click", "card"),       # after c's second show: only that one is clicked
                ("d", at(0, 2), "offer_click", "savings"),    # d clicks a product d was not shown
                ("e", at(0, 1), "offer_click", "card")])      # e was shown nothing: matches no show
    out = outcomes(d, with_shows(d, e))
    assert list(out["request_id"]) == ["a:0", "b:0", "b:1", "c:0", "c:1", "d:0"]  # nothing shown: no row
    assert list(out["clicked"]) == [False, True, False, False, True, False]
    assert list(out["purchased"]) == [False, False, True, False, False, False]
    # a click at the show's own time and one at exactly 24 hours both count
    d2 = decisions([("a", at(0), "card"), ("b", at(0), "card")])
    e2 = events([("a", at(0), "offer_click", "card"), ("b", at(1), "offer_click", "card")])
    assert outcomes(d2, e2)["clicked"].tolist() == [True, True]
    assert outcomes(d2, e2, hours=23.0)["clicked"].tolist() == [True, False]


def known_run(latency: bool = True):
    """Five customers over 40 days with known answers (worked out in the test below)."""
    d = decisions([("u1", at(0), "card", 12.0), ("u1", at(1), "card", 20.0), ("u1", at(2), "card", 30.0, None),
                   ("u2", at(8), "loan", 40.0), ("u2", at(9), None, 1000.0, "timeout"), ("u3", at(0), None),
                   ("u4", at(10), "card", None, "http 503")], latency=latency)
    e = events([("u1", at(0, 1), "offer_click", "card"), ("u1", at(0, 2), "offer_purchase", "card"),
                ("u1", at(2, 1), "offer_click", "card"), ("u2", at(8, 1), "offer_click", "loan"),
                ("u3", at(20), "account_closed"), ("u4", at(35), "account_closed"),
                ("u5", at(-5), "account_closed")])  # u5 had left before the run: not a customer alive at its start
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4", "u5"],
                          "segment": ["retail", "retail", "premium", "premium", "premium"]})
    return d, with_shows(d, e), users


def test_one_policys_figures_have_their_known_values():
    d, e, users = known_run()
    m = measure(d, e, users, VALUES, START, at(40), stats={"calls": 6, "calls_per_s": 3.5}).metrics
    assert (m["customers"], m["decisions"], m["shows"], m["clicks"], m["purchases"]) == (5, 7, 5, 3, 1)
    assert m["show_rate"] == pytest.approx(5 / 7)
    assert m["ctr"]["value"] == pytest.approx(0.6)
    # clustered by customer: z = clicks - 0.6 shows per customer = (0.2, 0.4, 0, -0.6, 0), var(z) / 5
    assert m["ctr"]["se"] == pytest.approx(math.sqrt(0.14 / 5))
    assert m["ctr"]["ci"] == pytest.approx([0.6 - Z95 * m["ctr"]["se"], 0.6 + Z95 * m["ctr"]["se"]])
    assert m["purchases_per_show"]["value"] == pytest.approx(0.2)
    assert m["revenue"] == 10.0 and m["revenue_per_decision"]["value"] == pytest.approx(10 / 7)
    assert m["coverage"]["products"] == pytest.approx(2 / 3) and m["coverage"]["customers"] == pytest.approx(0.6)
    assert m["mix"] == {"card": 4, "loan": 1, "savings": 0}
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(3)
    assert m["diversity"]["entropy"] == pytest.approx(h)
    assert m["diversity"]["gini"] == pytest.approx(16 / 30)
    curve = {c["n"]: c for c in m["fatigue"]}
    assert len(curve) == 10 and "10+" in curve
    assert (curve["1"]["shows"], curve["1"]["clicks"]) == (3, 2)  # u1's first card, u2's loan, u4's card
    assert curve["2"]["ctr"] == 0.0 and curve["3"]["ctr"] == 1.0 and curve["4"]["ctr"] is None
    # churn: u1..u4 were customers at the start, u3 closed on day 20, u4 on day 35; 40 days: no 90-day figure
    assert m["churn_customers"] == 4
    assert m["churn_30"]["value"] == pytest.approx(0.25)
    assert m["churn_30"]["ci"][0] == 0.0 < m["churn_30"]["ci"][1] < 1.0  # a share's interval stays in [0, 1]
    assert m["churn_90"]["value"] is None
    weeks = m["drift"]["weeks"]
    assert len(weeks) == 6 and [w["shows"] for w in weeks] == [3, 2, 0, 0, 0, 0]
    assert weeks[0]["share"] == {"card": 1.0, "loan": 0.0, "savings": 0.0}
    assert weeks[1]["share"]["loan"] == 0.5 and weeks[2]["share"]["card"] is None
    assert m["drift"]["tvd_first_last"] == pytest.approx(0.5)
    assert m["segments"]["retail"]["ctr"]["value"] == pytest.approx(0.75)
    assert m["segments"]["premium"]["ctr"]["value"] == 0.0
    s = m["service"]
    assert s["remote"] and s["calls"] == 6 and s["calls_per_s"] == 3.5
    assert s["latency_ms"]["max"] == 1000.0 and s["latency_ms"]["p50"] == 30.0
    assert s["failures"] == {"http 503": 1, "timeout": 1}
    assert (s["fallbacks"], s["timeouts"], s["errors"]) == (2, 1, 1)


def test_a_run_without_latency_columns_reports_no_service_figures():
    d, e, users = known_run(latency=False)
    m = measure(d, e, users, VALUES, START, at(40)).metrics
    assert m["ctr"]["value"] == pytest.approx(0.6)
    assert not m["service"]["remote"] and m["service"]["latency_ms"] is None and m["service"]["fallbacks"] == 0


def test_policies_pair_by_customer_with_the_delta_method_interval():
    users = pd.DataFrame({"user_id": ["x", "y", "z"]})
    a = decisions([(u, at(0), "card") for u in ("x", "y", "z")])
    b = decisions([(u, at(0), "card") for u in ("z", "y", "x", "w")])  # another order, and w only in b
    clicks_a = events([("x", at(0, 1), "offer_click", "card")])
    clicks_b = events([("x", at(0, 1), "offer_click", "card"), ("y", at(0, 1), "offer_click", "card"),
                       ("w", at(0, 1), "offer_click", "card")])
    ma = measure(a, clicks_a, users, VALUES, START, at(7))
    mb = measure(b, clicks_b, users.iloc[::-1], VALUES, START, at(7))
    p = paired(ma, mb)
    assert p["customers"] == 3  # w is not in the reference run
    ctr = p["ctr"]
    assert ctr["reference"] == pytest.approx(1 / 3) and ctr["policy"] == pytest.approx(2 / 3)
    # per customer z_b - z_a = (-1/3, 2/3, -1/3): variance 1/3, over 3 customers 1/9
    assert ctr["difference"] == pytest.approx(1 / 3) and ctr["se"] == pytest.approx(1 / 3)
    assert ctr["ci"] == pytest.approx([1 / 3 - Z95 / 3, 1 / 3 + Z95 / 3])
    assert ctr["relative"] == pytest.approx(1.0) and not ctr["significant"]
    assert p["churn_30"]["difference"] is None  # a 7-day run has no 30-day churn
    report = compare({"a": ma, "b": mb})
    assert report["reference"] == "a" and list(report["paired"]) == ["b"]


def write_world(path, d, e, users, days=40, stats=None):
    path.mkdir(parents=True)
    world = {"window": {"start": START.isoformat(), "end_exclusive": at(days).isoformat()}}
    if stats:
        world["policy"] = {"name": "p", "stats": stats}
    (path / "world.json").write_text(json.dumps(world))
    e.to_parquet(path / "events.parquet")
    users.to_parquet(path / "users.parquet")
    d.to_parquet(path / "decisions.parquet")


def write_twin(path, d, e, users, days=40, stats=None):
    """The twin layout: events/ by day, decisions/ as a dataset, manifest.json (simulator/sink.py)."""
    path.mkdir(parents=True)
    manifest = {"status": "complete", "start": START.isoformat(), "config": {"days": days}, "model": None,
                "policy": {"name": "p", "stats": stats or {}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    users.to_parquet(path / "users.parquet")
    for day, part in e.groupby(e["timestamp"].dt.strftime("%Y-%m-%d")):
        (path / "events" / f"date={day}").mkdir(parents=True)
        part.to_parquet(path / "events" / f"date={day}" / "part-00000.parquet")
    (path / "decisions").mkdir()
    d.to_parquet(path / "decisions" / "part-00000.parquet")


def test_run_directories_of_both_layouts_load_with_their_decisions(tmp_path):
    d, e, users = known_run()
    write_world(tmp_path / "world", d, e, users, stats={"calls": 6})
    write_twin(tmp_path / "twin", d, e, users, stats={"calls_per_s": 2.0})
    world, twin = read_run(tmp_path / "world"), read_run(tmp_path / "twin")
    for run in (world, twin):
        assert run.decisions is not None and len(run.decisions) == len(d)
        got, want = (sorted(map(tuple, f[["request_id", "product"]].to_numpy()), key=str) for f in (run.decisions, d))
        assert got == want
        assert run.decisions["timestamp"].is_monotonic_increasing  # in time order
        assert str(run.decisions["timestamp"].dt.tz) == "UTC"
    assert world.policy["stats"] == {"calls": 6} and twin.policy["stats"] == {"calls_per_s": 2.0}
    assert read_run(tmp_path / "world", end=at(5)).decisions["timestamp"].max() < at(5)  # cut to the window
    # a run made without a policy has none
    (tmp_path / "world" / "decisions.parquet").unlink()
    assert read_run(tmp_path / "world").decisions is None


def test_the_report_is_written_as_valid_json_and_html_with_truth(tmp_path):
    d, e, users = known_run()
    write_world(tmp_path / "truth_a", d, e, users)
    write_twin(tmp_path / "twin_a", d, e, users, stats={"calls": 6, "calls_per_s": 3.0})
    # policy b: nothing but loans, clicked once, and no latency columns
    db = decisions([("u1", at(0), "loan"), ("u2", at(8), "loan"), ("u4", at(10), "loan")], latency=False)
    eb = with_shows(db, events([("u2", at(8, 1), "offer_click", "loan"), ("u3", at(20), "account_closed")]))
    write_world(tmp_path / "truth_b", db, eb, users)
    write_twin(tmp_path / "twin_b", db, eb, users)
    runs = {"a": read_run(tmp_path / "twin_a"), "b": read_run(tmp_path / "twin_b")}
    truth = {"a": read_run(tmp_path / "truth_a"), "b": read_run(tmp_path / "truth_b")}
    about = {"customers": 5, "days": 40, "start": "2025-01-01", "environment": "twin", "common_random_numbers": True,
             "seed": 3}
    report = write_report(runs, tmp_path / "out", VALUES, "Recommenders", about, truth=truth)
    text = (tmp_path / "out" / "report.json").read_text()
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))  # NaN is null
    assert back == report
    assert pd.read_json(tmp_path / "out" / "report.json", typ="series")["reference"] == "a"
    table = pd.DataFrame(back["table"])
    assert table.loc["ctr", "a"] == pytest.approx(0.6) and table.loc["ctr", "b"] == pytest.approx(1 / 3)
    assert "latency_p99" in back["table"]["a"] and "latency_p99" not in back["table"]["b"]
    assert back["paired"]["b"]["ctr"]["difference"] == pytest.approx(1 / 3 - 0.6)
    # truth and twin are the same runs here: no error, the truth inside every interval, the rankings agree
    errors = back["truth"]["errors"]
    assert errors["a"]["ctr"]["relative_error"] == pytest.approx(0.0) and errors["a"]["ctr"]["covered"]
    assert back["truth"]["kendall_tau"]["ctr"]["tau"] == pytest.approx(1.0)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "src='http" not in page
    assert "common random numbers" in page and "relative error" in page and "Kendall" in page


def test_the_report_of_a_short_run_without_truth_or_latency(tmp_path):
    d, e, users = known_run(latency=False)
    write_world(tmp_path / "w", d, e, users, days=10)
    report = write_report({"only": read_run(tmp_path / "w")}, tmp_path / "out", VALUES, "One", {"days": 10})
    assert report["truth"] is None and report["paired"] == {}
    assert report["policies"]["only"]["churn_30"]["value"] is None
    page = (tmp_path / "out" / "report.html").read_text()
    assert "shorter than 30 days" in page and "no latencies" in page
    with pytest.raises(ValueError, match="truth has no run of the policies"):
        write_report({"only": read_run(tmp_path / "w")}, tmp_path / "o2", VALUES, "One", {}, truth={})
