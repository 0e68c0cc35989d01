"""Off-policy estimators (simulator/recommend/ope.py): the world's own batches rebuilt from its logs, the
estimators on a hand-made bandit with known rewards, the per-show value, support, and the errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from twinsim.models.errors import TwinsimError
from twinsim.scenarios.policies import load_policy
from twinsim.scenarios.policy import Actions, Catalogue, Outcomes, as_actions
from twinsim.simulator.recommend import ope
from twinsim.simulator.recommend.metrics import measure_run
from twinsim.simulator.recommend.report import write_report
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws
from twinsim.simulator.whatif.runs import read_run

SMALL = WorldConfig(users=300, days=40, seed=7)
ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """Shows savings at every decision point and records every call, in a list the test shares."""

    calls: list = []

    def decide(self, batch):
        Recorder.calls.append(("decide", batch))
        return Actions(product=np.full(len(batch), "savings", dtype=object), propensity=np.ones(len(batch)))

    def feedback(self, outcomes):
        Recorder.calls.append(("feedback", outcomes))


class HalfSavings:
    """Savings where the request's first uniform is below 0.5, else nothing; no probabilities given."""

    def decide(self, batch):
        return [("savings" if u < 0.5 else None) for u in batch.uniforms[:, 0]]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ope") / "world"
    generate_reference_world(SMALL, out)
    return out


@pytest.fixture(scope="module")
def bandit(world) -> ope.LoggedBandit:
    return ope.logged_bandit(world)


def _decides(calls) -> list[tuple[object, set]]:
    """Each decide's batch with the request ids fed back before it."""
    out, fed = [], set()
    for kind, payload in calls:
        if kind == "feedback":
            fed |= set(payload.request_id)
        else:
            out.append((payload, set(fed)))
    return out


def test_the_batches_and_feedback_are_the_worlds_own(tmp_path):
    Recorder.calls.clear()
    generate_reference_world(SMALL, tmp_path / "w", policy=f"{__name__}:Recorder", policy_start=5)
    world_calls = _decides(Recorder.calls)
    Recorder.calls.clear()
    bandit = ope.logged_bandit(tmp_path / "w", policy="Recorder")
    target = ope.target_probabilities(f"{__name__}:Recorder", bandit)
    replay_calls = _decides(Recorder.calls)
    assert len(replay_calls) == len(world_calls) == SMALL.days - 5
    assert np.all(target[:, laws.PRODUCTS.index("savings")] == 1.0)
    for (w, w_fed), (r, r_fed) in zip(world_calls, replay_calls, strict=True):
        keep = np.isin(w.request_id, r.request_id)  # the world's batch may hold requests censored later
        assert keep.sum() == len(r) and keep.mean() > 0.9
        assert np.array_equal(w.request_id[keep], r.request_id)
        assert np.array_equal(w.user_id[keep], r.user_id)
        assert w.time[keep].equals(r.time)
        assert np.array_equal(w.uniforms[keep], r.uniforms)
        pd.testing.assert_frame_equal(w.attributes[keep].reset_index(drop=True), r.attributes)
        recent = w.recent[keep[w.recent["request"]]].reset_index(drop=True)
        recent["request"] = np.cumsum(keep)[recent["request"]] - 1
        pd.testing.assert_frame_equal(recent, r.recent, check_dtype=False)
        assert w_fed == r_fed  # the same outcomes fed back by then: the log in time order
    assert len(replay_calls[-1][1]) > 0.8 * len(bandit)
    fed = [p for k, p in Recorder.calls if k == "feedback"]
    rows = pd.Index(bandit.request_id).get_indexer(np.concatenate([f.request_id for f in fed]))
    assert np.array_equal(np.concatenate([f.clicked for f in fed]), bandit.clicked[rows].astype(bool))


def test_ipw_of_the_logging_policy_is_its_on_policy_mean(world, bandit):
    target = ope.target_probabilities("logged", bandit)
    num, den = ope.terms(bandit, target, bandit.clicked, np.zeros((len(bandit), len(bandit.products))))["ipw"]
    assert np.array_equal(num, bandit.clicked) and np.all(den == 1.0)  # every weight exactly 1
    got = ope.estimate(bandit, target, "ctr", counts=ope.resample(bandit, 50))
    report = measure_run(read_run(world), {p: 1.0 for p in laws.PRODUCTS}).metrics
    assert got["ipw"]["value"] == pytest.approx(bandit.clicked.mean(), rel=1e-12)
    assert got["ipw"]["value"] == pytest.approx(report["ctr"]["value"], rel=1e-12)
    assert got["snipw"]["value"] == pytest.approx(got["ipw"]["value"], rel=1e-12)
    assert got["ipw"]["ci"][0] < got["ipw"]["value"] < got["ipw"]["ci"][1]
    assert bandit.logging[:, -1].max() < 1e-9  # the bank shows something at every decision point


def test_the_bandit_holds_the_logged_shows_with_their_propensities_and_rewards(world, bandit):
    d = pd.read_parquet(world / "decisions.parquet")
    assert len(bandit) == d["product"].notna().sum()
    segment = bandit.attributes["segment"].map(laws.SEGMENTS.index).to_numpy()
    assert np.array_equal(bandit.propensity, laws.OFFER_TARGETING[segment, bandit.action])
    assert np.allclose(bandit.logging[:, :-1], laws.OFFER_TARGETING[segment])
    assert (bandit.purchased <= bandit.clicked).all() and 0 < bandit.clicked.mean() < 0.3
    later = ope.logged_bandit(world, start="2025-01-21")
    assert len(later) < len(bandit) and later.time.min() >= pd.Timestamp("2025-01-21", tz="UTC")


def _hand_made(n: int = 40_000, seed: int = 0) -> tuple[ope.LoggedBandit, np.ndarray, np.ndarray]:
    """Two segments, three products; the click chance rises with a numeric attribute (tenure) the reward
    model does not use for products 0 and 1, so DM is misspecified; logging by segment only."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["a", "b"], n)
    tenure = rng.random(n)
    q = np.stack([0.05 + 0.4 * tenure, 0.45 - 0.4 * tenure, np.full(n, 0.2)], axis=1)
    logging = np.where((segment == "a")[:, None], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5])
    action = (rng.random(n)[:, None] > np.cumsum(logging, axis=1)).sum(axis=1)
    clicked = (rng.random(n) < q[np.arange(n), action]).astype(float)
    bandit = ope.LoggedBandit(
        products=["p0", "p1", "p2"], user_id=np.array([f"c{i % (n // 4)}" for i in range(n)], dtype=object),
        time=pd.DatetimeIndex(pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min")),
        attributes=pd.DataFrame({"segment": segment, "tenure": tenure}), action=action,
        propensity=logging[np.arange(n), action], clicked=clicked, purchased=np.zeros(n),
        logging=np.concatenate([logging, np.zeros((n, 1))], axis=1))
    # the target shows p0 to long-standing customers, p1 to new ones, and nothing to a quarter of segment b
    target = np.zeros((n, 4))
    target[np.arange(n), np.where(tenure > 0.5, 0, 1)] = 1.0
    quiet = (segment == "b") & (rng.random(n) < 0.25)
    target[quiet] = [0, 0, 0, 1]
    return bandit, q, target


def test_ipw_and_dr_find_the_known_value_and_a_misspecified_dm_does_not():
    bandit, q, target = _hand_made()
    true = (target[:, :3] * q).sum() / (1 - target[:, 3]).sum()  # per show: the target's shows only
    got = ope.estimate(bandit, target, "ctr", counts=ope.resample(bandit, 100))
    for name in ("ipw", "snipw", "dr"):
        assert abs(got[name]["value"] - true) < 4 * got[name]["se"], (name, got[name], true)
        assert got[name]["ci"][0] < true < got[name]["ci"][1]
    assert true - got["dm"]["value"] > 0.08  # about 0.35 against 0.25: DM cannot see tenure
    assert got["dm"]["value"] < got["dm"]["ci"][1] < true
    with_q = ope.estimate(bandit, target, "ctr", q=q, counts=ope.resample(bandit, 100))
    assert abs(with_q["dm"]["value"] - true) < 1e-12  # with the true q(x, a), DM is exact on these contexts


def test_unsupported_mass_is_counted_and_reported():
    bandit, _, _ = _hand_made(4000)
    never = (bandit.attributes["segment"] == "b").to_numpy()
    keep = ~(never & (bandit.action == 2))  # segment b never shown p2 in this log
    groups, action, propensity = (bandit.attributes["segment"].to_numpy()[keep], bandit.action[keep],
                                  bandit.propensity[keep])
    logging = ope.logging_distribution(groups, action, propensity, bandit.products, "test")
    assert np.all(logging[groups == "b", 2] == 0) and np.allclose(logging[groups == "b", 3], 0.5)
    fixed = np.zeros((len(logging), 4))
    fixed[:, 2] = 1.0
    sub = ope.LoggedBandit(bandit.products, bandit.user_id[keep], bandit.time[keep],
                           bandit.attributes[keep].reset_index(drop=True), action, propensity, bandit.clicked[keep],
                           bandit.purchased[keep], logging)
    d = ope.diagnostics(sub, fixed)
    assert d["unsupported_share"] == pytest.approx((groups == "b").mean())
    assert d["unsupported_decisions"] == (groups == "b").sum()
    with pytest.raises(TwinsimError, match="varies"):
        ope.logging_distribution(np.array(["a", "a"]), np.array([0, 0]), np.array([0.5, 0.4]), ["p0"], "test")


def test_a_policy_without_probabilities_is_its_one_hot(bandit):
    target = ope.target_probabilities(f"{__name__}:HalfSavings", bandit)
    savings = laws.PRODUCTS.index("savings")
    u = np.concatenate([bandit.batch(rows).uniforms[:, 0] for _, _, rows in bandit.blocks()])
    assert np.array_equal(target[:, savings], (u < 0.5).astype(float))
    assert np.array_equal(target[:, -1], (u >= 0.5).astype(float))
    rnd = ope.target_probabilities("random", bandit)  # given probabilities are used as they are
    assert np.allclose(rnd[:, :-1], 1 / len(laws.PRODUCTS))
    got = ope.estimate(bandit, target, "ctr", counts=ope.resample(bandit, 0))
    assert got["ipw"]["ci"] is None and got["ipw"]["value"] > 0  # per show: normalised by the show share


def test_evaluate_every_policy_and_estimator(world, bandit):
    out = ope.evaluate(world, ["logged", "random", "thompson"], bootstrap=20, bandit=bandit)
    assert list(out["policies"]) == ["logged", "random", "thompson"]
    for p in out["policies"].values():
        for metric in ope.METRICS:
            assert set(p[metric]) == set(ope.ESTIMATORS)
            assert all(0 <= e["value"] < 1 for e in p[metric].values())
        assert p["diagnostics"]["unsupported_share"] == 0.0
    cmp = ope.against_truth(out, {n: {"ctr": 0.1, "purchases_per_show": 0.02} for n in out["policies"]},
                            {n: {"ctr": 0.1, "purchases_per_show": 0.02} for n in out["policies"]})
    assert cmp["summary"]["ctr"]["twin_median"] == 0.0 and cmp["summary"]["ctr"]["target_met"] is True
    assert cmp["summary"]["ctr"]["best"] in ope.ESTIMATORS


def test_a_learned_thompson_never_gives_probability_zero():
    catalogue = Catalogue(products=["a", "b", "c", "d", "e"])
    policy = load_policy("thompson:by=none")
    policy.bind(catalogue, 0)
    n = 50
    batch = pd.DataFrame({"segment": ["x"] * n})
    from twinsim.scenarios.policy import DecisionBatch

    b = DecisionBatch(request_id=np.array([f"{i}:0" for i in range(n)], dtype=object), user_id=np.arange(n),
                      time=pd.DatetimeIndex([pd.Timestamp("2025-01-01", tz="UTC")] * n), attributes=batch,
                      recent=pd.DataFrame({"request": np.empty(0, int)}), uniforms=np.full((n, 4), 0.5))
    policy.decide(b)
    shows = np.repeat(np.array(catalogue.products, dtype=object), 20_000)
    clicked = np.where(shows == "a", np.arange(len(shows)) % 2 == 0, np.arange(len(shows)) % 10 == 0)
    policy.feedback(Outcomes(request_id=np.arange(len(shows)).astype(str), user_id=np.zeros(len(shows), int),
                             product=shows, shown_time=pd.DatetimeIndex([b.time[0]] * len(shows)), clicked=clicked,
                             purchased=clicked, value=np.zeros(len(shows))))
    actions = as_actions(policy.decide(b), n, catalogue, "thompson")
    assert (actions.probabilities[:, :5] > 0).all() and (actions.propensity > 0).all()


def test_errors_name_the_file_and_column_and_the_fix(world, tmp_path):
    with pytest.raises(TwinsimError, match="world.json"):
        ope.logged_bandit(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(world, old)
    (old / "decisions.parquet").unlink()
    with pytest.raises(TwinsimError, match=r"decisions\.parquet: missing.*twinsim reference-world.*session 18"):
        ope.logged_bandit(old)
    table = pq.read_table(world / "decisions.parquet")
    pq.write_table(table.drop_columns(["propensity"]), old / "decisions.parquet")
    with pytest.raises(TwinsimError, match=r"decisions\.parquet: no column\(s\) \['propensity'\].*reference-world"):
        ope.logged_bandit(old)
    frame = table.to_pandas()
    frame.loc[3, "propensity"] = np.nan
    frame.to_parquet(old / "decisions.parquet")
    with pytest.raises(TwinsimError, match=r"column propensity is nan for 1 of .*request u\d+:\d+.*reference-world"):
        ope.logged_bandit(old)
    with pytest.raises(TwinsimError, match="no shown decisions of policy 'logged'"):
        ope.logged_bandit(world, start="2026-01-01")
    with pytest.raises(TwinsimError, match="made by hand"):
        ope.target_probabilities("random", _hand_made(100)[0])


def test_the_benchmark_runs_the_estimators_alone(tmp_path):
    world = tmp_path / "world"
    generate_reference_world(WorldConfig(users=200, days=30, seed=3), world)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recommender_fidelity.py"), "--world", str(world),
                          "--out", str(tmp_path / "out"), "--ope-only", "--days", "5", "--ope-days", "10",
                          "--bootstrap", "10", "--policies", "logged", "random"],
                         capture_output=True, text=True, check=True, timeout=120)
    summary = __import__("json").loads(out.stdout.strip().splitlines()[-1])["ope"]
    assert set(summary) == set(ope.METRICS)
    assert summary["ctr"]["best"] in ope.ESTIMATORS and summary["ctr"]["twin_median"] is None
    assert set(summary["ctr"]["policies"]) == {"logged", "random"}
    assert (tmp_path / "out" / "fidelity" / "ope.json").is_file()
    # the report's ope section and HTML table: the truth runs stand in for a twin (its error is 0)
    runs = {name: read_run(tmp_path / "out" / "truth" / "policies" / f"{k}-{name}", start="2025-01-31")
            for k, name in enumerate(("logged", "random"), start=1)}
    estimates = ope.evaluate(world, ["logged", "random"], start="2025-01-21", bootstrap=10)
    report = write_report(runs, tmp_path / "report", {p: 1.0 for p in laws.PRODUCTS}, "t", {}, truth=runs,
                          ope=estimates)
    assert report["ope"]["summary"]["ctr"]["twin_median"] == 0.0
    assert report["ope"]["policies"]["random"]["ctr"]["ipw"]["value"] == estimates["policies"]["random"]["ctr"][
        "ipw"]["value"]
    assert "Off-policy estimates from the logged data" in (tmp_path / "report" / "report.html").read_text()
