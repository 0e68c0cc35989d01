"""The reference world with policies, as the twin report reads it: logged = baseline, paired decision points."""

from __future__ import annotations

import pandas as pd
import pytest

from twinsim.models.errors import TwinsimError
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world, laws

CONFIG = WorldConfig(users=400, days=50, seed=5)
START = pd.Timestamp(CONFIG.start, tz="UTC") + pd.Timedelta(days=25)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("wp")
    out = {}
    for name, policy in (("baseline", None), ("logged", "logged"), ("random", "random"),
                         ("mortgage", "fixed:product=mortgage"), ("thompson", "thompson")):
        manifest = generate_reference_world(CONFIG, root / name, policy=policy, policy_start=25 if policy else None)
        out[name] = (manifest, pd.read_parquet(root / name / "events.parquet"),
                     pd.read_parquet(root / name / "decisions.parquet"))
    return out


def test_the_logged_policy_is_the_baseline_world_bit_for_bit(worlds):
    pd.testing.assert_frame_equal(worlds["baseline"][1], worlds["logged"][1])
    pd.testing.assert_frame_equal(worlds["baseline"][2], worlds["logged"][2])


def test_logging_propensities_are_the_worlds_targeting(worlds):
    _, _, decisions = worlds["baseline"]
    assert decisions["propensity"].between(0, 1, inclusive="right").all()
    assert set(decisions["product"].dropna()) <= set(laws.PRODUCTS)


def test_a_policy_acts_from_its_start_only_and_decision_points_are_paired(worlds):
    _, base_events, base = worlds["baseline"]
    manifest, events, decisions = worlds["mortgage"]
    before = lambda e: e[e.timestamp < START].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(before(base_events), before(events))
    late = decisions[decisions.timestamp >= START]
    assert (late["product"] == "mortgage").all() and len(late) == manifest["policy"]["policy_decisions"] > 100
    first = lambda d: d[d.timestamp >= START].groupby("user_id")["timestamp"].min()  # noqa: E731
    pd.testing.assert_series_equal(first(base), first(decisions))  # the same first decision point per customer
    shown = events[(events.event_type == "offer_shown") & (events.timestamp >= START)]
    assert (shown["product"] == "mortgage").all() and len(shown) == len(late)


def test_a_learning_policy_is_reproducible(worlds, tmp_path):
    generate_reference_world(CONFIG, tmp_path / "again", policy="thompson", policy_start=25)
    pd.testing.assert_frame_equal(worlds["thompson"][1], pd.read_parquet(tmp_path / "again" / "events.parquet"))


def test_bad_policy_options_are_named(tmp_path):
    with pytest.raises(TwinsimError, match="share"):
        generate_reference_world(CONFIG, tmp_path / "a", policy="random", share=1.5)
    with pytest.raises(TwinsimError, match="no_such"):
        generate_reference_world(CONFIG, tmp_path / "b", policy="no_such_policy")
