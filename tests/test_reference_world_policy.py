"""Policies at the reference world's logins: the ground truth of a recommender, paired with the baseline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from twinsim.cli import main
from twinsim.models.errors import TwinsimError
from twinsim.scenarios.policy import FEEDBACK_HOURS, Actions, PolicyError
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws
from twinsim.simulator.reference_world.population import sample_population
from twinsim.simulator.reference_world.streams import Streams

SMALL = WorldConfig(users=300, days=40, seed=7)
START_DAY = 10
START = pd.Timestamp("2025-01-11", tz="UTC")  # day START_DAY of SMALL


class FixedPolicy:
    """Shows ``product`` at every decision point."""

    def __init__(self, product: str = "savings") -> None:
        self.product = product

    def decide(self, batch):
        return Actions(product=np.full(len(batch), self.product, dtype=object), propensity=np.ones(len(batch)))


class AffinityOracle:
    """Shows each customer's highest-affinity product: reads the world's hidden traits (a 1-chunk world)."""

    def __init__(self, seed: int = SMALL.seed, users: int = SMALL.users) -> None:
        self.best = np.asarray(laws.PRODUCTS, dtype=object)[
            sample_population(Streams(seed, 0), 0, users).affinity.argmax(axis=1)]

    def decide(self, batch):
        return [self.best[int(u[1:])] for u in batch.user_id]


class Recorder(FixedPolicy):
    """Records every call in order, in a list shared by the test (the world makes one instance per chunk)."""

    calls: list = []

    def decide(self, batch):
        Recorder.calls.append(("decide", batch))
        return super().decide(batch)

    def feedback(self, outcomes):
        Recorder.calls.append(("feedback", outcomes))


class Learner:
    """Greedy on the click rate of each product from feedback, exploring with the request's own uniforms."""

    def bind(self, catalogue, seed):
        self.products = np.array(catalogue.products, dtype=object)
        self.shows, self.clicks = np.ones(len(self.products)), np.zeros(len(self.products))
        self.tie = np.random.default_rng(seed).random(len(self.products)) * 1e-6

    def decide(self, batch):
        k = len(self.products)
        explore = self.products[np.minimum((batch.uniforms[:, 0] * k).astype(int), k - 1)]
        greedy = self.products[np.argmax(self.clicks / self.shows + self.tie)]
        return np.where(batch.uniforms[:, 1] < 0.2, explore, greedy)

    def feedback(self, outcomes):
        index = [list(self.products).index(p) for p in outcomes.product]
        np.add.at(self.shows, index, 1.0)
        np.add.at(self.clicks, index, outcomes.clicked.astype(float))


class WrongLength(FixedPolicy):
    def decide(self, batch):
        return ["savings"] * (len(batch) + 1)


class UnknownProduct(FixedPolicy):
    def decide(self, batch):
        return ["gold_bar"] * len(batch)


class Crashing(FixedPolicy):
    def decide(self, batch):
        raise ValueError("model file missing")


def spec(cls: type, options: str = "") -> str:
    return f"{__name__}:{cls.__name__}" + (f":{options}" if options else "")


def run(tmp_path, name: str, config: WorldConfig = SMALL, **options) -> dict:
    out = tmp_path / name
    manifest = generate_reference_world(config, out, **options)
    tables = {t: pd.read_parquet(out / f"{t}.parquet") for t in ("events", "users", "decisions")}
    for frame in tables.values():
        frame["user_id"] = frame["user_id"].astype(str)
    tables["dir"], tables["manifest"] = out, manifest
    return tables


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return run(tmp_path_factory.mktemp("baseline"), "baseline")


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    return run(tmp_path_factory.mktemp("fixed"), "fixed", policy=spec(FixedPolicy, "product=travel_card"),
               policy_start=START_DAY)


def test_the_logged_policy_at_the_banks_share_is_the_baseline_bit_for_bit(tmp_path, baseline):
    world = run(tmp_path, "logged", policy="logged", policy_start="2025-01-11")
    for table in ("events", "users", "context", "decisions"):
        assert pq.read_table(world["dir"] / f"{table}.parquet").equals(
            pq.read_table(baseline["dir"] / f"{table}.parquet")), table
    p = world["manifest"]["policy"]
    assert (p["name"], p["start_day"], p["share"]) == ("logged", START_DAY, laws.OFFER_SHOW_P)
    assert p["decisions"] == len(baseline["decisions"]) == baseline["manifest"]["policy"]["decisions"] > 0


def test_the_baseline_decisions_are_its_offers_with_the_targeting_propensity(baseline):
    d, events, users = baseline["decisions"], baseline["events"], baseline["users"]
    shown = events[events["event_type"] == "offer_shown"]
    assert d["product"].notna().all() and (d["policy"] == "logged").all()
    assert np.array_equal(d["timestamp"].to_numpy(), shown["timestamp"].to_numpy())
    assert np.array_equal(d["product"].to_numpy(dtype=object), shown["product"].astype(str).to_numpy(dtype=object))
    segment = d["user_id"].map(users.set_index("user_id")["segment"].astype(str))
    expected = laws.OFFER_TARGETING[[laws.SEGMENTS.index(s) for s in segment],
                                    [laws.PRODUCTS.index(p) for p in d["product"]]]
    assert np.allclose(d["propensity"].to_numpy(), expected)
    n = d.groupby("user_id").cumcount().astype(str)
    assert (d["request_id"] == d["user_id"] + ":" + n).all()
    assert d["failure"].isna().all() and d["latency_ms"].isna().all()


def test_a_fixed_policy_shows_only_its_product_from_start_and_nothing_changes_before(baseline, fixed):
    before = {name: w["events"][w["events"]["timestamp"] < START].reset_index(drop=True)
              for name, w in (("baseline", baseline), ("fixed", fixed))}
    pd.testing.assert_frame_equal(before["baseline"], before["fixed"])
    e = fixed["events"]
    after = e[(e["timestamp"] >= START) & (e["event_type"] == "offer_shown")]
    assert len(after) > 100 and (after["product"].astype(str) == "travel_card").all()
    d = fixed["decisions"]
    mine = d[d["timestamp"] >= START]
    assert (mine["product"] == "travel_card").all() and (mine["policy"] == "FixedPolicy[product=travel_card]").all()
    assert (mine["propensity"] == 1.0).all()
    pd.testing.assert_frame_equal(d[d["timestamp"] < START].reset_index(drop=True),
                                  baseline["decisions"].pipe(lambda b: b[b["timestamp"] < START]).reset_index(
                                      drop=True))
    assert fixed["manifest"]["policy"]["policy_shows"] == len(mine)


def test_decision_points_are_paired_across_policies(tmp_path):
    worlds = [run(tmp_path, name, policy=p, policy_start=START_DAY, share=0.5)
              for name, p in (("random", "random"), ("fixed", spec(FixedPolicy)), ("logged", "logged"))]
    keys = [w["decisions"][["user_id", "request_id", "timestamp"]] for w in worlds]
    for other in keys[1:]:
        pd.testing.assert_frame_equal(keys[0], other)
    d = worlds[0]["decisions"]
    after, before = d[d["timestamp"] >= START], d[d["timestamp"] < START]
    # half of the logins from the start, a quarter (the bank's offers) before it
    per_day = len(after) / (SMALL.days - START_DAY), len(before) / START_DAY
    assert 1.5 < per_day[0] / per_day[1] < 2.6
    products = worlds[0]["decisions"].loc[d["timestamp"] >= START, "product"]
    assert set(products) == set(laws.PRODUCTS)


def test_showing_each_customers_best_product_gets_more_clicks_than_random(tmp_path):
    """The world's law: clicks follow affinity. Compared at each customer's first decision from the start,
    where both policies meet the same history (fatigue, recency) and the same uniforms."""
    config = WorldConfig(users=1_000, days=14, seed=SMALL.seed)
    ctr = {}
    for name, p in (("random", "random"), ("oracle", spec(AffinityOracle, "users=1000"))):
        world = run(tmp_path, name, config, policy=p, policy_start=START_DAY)
        d, e = world["decisions"], world["events"]
        first = d[d["timestamp"] >= START].groupby("user_id").head(1)
        clicks = e[e["event_type"] == "offer_click"].merge(first, on=["user_id", "product"], suffixes=("", "_shown"))
        clicks = clicks[(clicks["timestamp"] > clicks["timestamp_shown"])
                        & (clicks["timestamp"] <= clicks["timestamp_shown"] + pd.Timedelta(hours=FEEDBACK_HOURS))]
        ctr[name] = clicks["request_id"].nunique() / len(first)
    assert ctr["oracle"] > 1.5 * ctr["random"]


def test_feedback_arrives_once_each_window_has_closed_and_matches_the_events(tmp_path):
    Recorder.calls.clear()
    world = run(tmp_path, "recorder", policy=spec(Recorder), policy_start=START_DAY)
    window = pd.Timedelta(hours=FEEDBACK_HOURS)
    day_start = None
    fed = []
    for kind, payload in Recorder.calls:
        if kind == "decide":
            day_start = payload.time.min().floor("D")
            assert day_start >= START
            continue
        assert day_start is not None
        # the feedback comes at the start of the day after the latest decide: the windows closed by then
        assert (payload.shown_time + window <= day_start + pd.Timedelta(days=1)).all()
        assert (payload.shown_time >= START).all()
        fed.append(pd.DataFrame({"request_id": payload.request_id, "clicked": payload.clicked,
                                 "purchased": payload.purchased, "value": payload.value}))
    fed = pd.concat(fed, ignore_index=True)
    assert fed["request_id"].is_unique
    d, e = world["decisions"], world["events"]
    shows = d[(d["timestamp"] >= START) & d["product"].notna()].set_index("request_id")
    end = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=SMALL.days - 1)
    assert set(fed["request_id"]) == set(shows.index[shows["timestamp"] + window <= end])
    clicks = e[e["event_type"] == "offer_click"]
    following = shows.groupby(["user_id", "product"])["timestamp"].shift(-1).fillna(end + window)  # the next show
    expected = [((clicks["user_id"] == s.user_id) & (clicks["product"].astype(str) == s.product)
                 & (clicks["timestamp"] > s.timestamp) & (clicks["timestamp"] <= s.timestamp + window)
                 & (clicks["timestamp"] < following[s.Index])).any()
                for s in shows.loc[fed["request_id"]].itertuples()]
    assert np.array_equal(fed["clicked"].to_numpy(), np.array(expected))
    assert fed["clicked"].sum() > 0 and (fed["purchased"] <= fed["clicked"]).all()
    assert np.array_equal(fed["value"].to_numpy(), fed["purchased"].to_numpy(dtype=float))


def test_a_learning_policy_is_reproducible(tmp_path):
    a, b = (run(tmp_path, name, policy=spec(Learner), policy_start=5) for name in ("a", "b"))
    for table in ("events", "decisions"):
        assert pq.read_table(a["dir"] / f"{table}.parquet").equals(pq.read_table(b["dir"] / f"{table}.parquet"))
    d = a["decisions"]
    assert d.loc[d["timestamp"] >= pd.Timestamp("2025-01-06", tz="UTC"), "propensity"].isna().all()  # it gave none


@pytest.mark.parametrize("cls, message", [(WrongLength, "actions for"), (UnknownProduct, "gold_bar"),
                                          (Crashing, "decide\\(\\) raised ValueError: model file missing")])
def test_a_wrong_answer_names_the_policy(tmp_path, cls, message):
    with pytest.raises(PolicyError, match=f"--policy '{spec(cls)}'.*{message}"):
        generate_reference_world(WorldConfig(users=50, days=5, seed=1), tmp_path / "w", policy=spec(cls))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("options, message", [
    ({"policy": "random", "share": 0.0}, "--share must be a number in \\(0, 1\\]"),
    ({"policy": "random", "share": 1.5}, "--share must be"),
    ({"policy": "random", "policy_start": 40}, "--policy-start 40 is day 40, outside the window"),
    ({"policy": "random", "policy_start": "2024-12-31"}, "is day -1, outside"),
    ({"policy": "random", "policy_start": "soon"}, "neither a date"),
    ({"share": 0.5}, "--share 0.5 needs --policy"),
    ({"policy": "no_such_policy"}, "not a built-in policy"),
])
def test_bad_options_are_refused_naming_the_option(tmp_path, options, message):
    with pytest.raises(TwinsimError, match=message):
        generate_reference_world(SMALL, tmp_path / "w", **options)


def test_the_cli_runs_a_policy_and_refuses_a_bad_share(tmp_path):
    runner = CliRunner()
    base = ["reference-world", "--users", "60", "--days", "8", "--seed", "3", "--quiet", "-o"]
    ok = runner.invoke(main, [*base, str(tmp_path / "w"), "--policy", "random", "--policy-start", "2025-01-04",
                              "--share", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert "policy random:" in ok.output
    policy = json.loads((tmp_path / "w" / "world.json").read_text())["policy"]
    assert (policy["spec"], policy["start"], policy["share"]) == ("random", "2025-01-04", 0.5)
    assert policy["policy_decisions"] > 0
    bad = runner.invoke(main, [*base, str(tmp_path / "x"), "--policy", "random", "--share", "2"])
    assert bad.exit_code == 2 and "--share must be" in bad.output
