"""The reference world acts out scenarios with its own laws, paired with the baseline by common random numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from twinsim.models.errors import TwinsimError
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world
from twinsim.simulator.reference_world import world as world_module

SMALL = WorldConfig(users=300, days=60, seed=7)
START = pd.Timestamp("2025-01-01", tz="UTC")


def campaign(**fields) -> str:
    """A [[campaign]] table of offer_shown travel-card offers in the app, days 7 to 42, fields overriding."""
    entry = {"name": '"push"', "start": "7", "end": "42", "every_days": "7", "event_type": '"offer_shown"',
             "marks": '{ product = "travel_card", channel = "app" }', **fields}
    return "[[campaign]]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items())


def run(tmp_path, name: str, toml: str | None, config: WorldConfig = SMALL) -> dict:
    """Generate a world (with the scenario text ``toml``, or none) and read its tables back."""
    out = tmp_path / name
    scenario = None
    if toml is not None:
        scenario = tmp_path / f"{name}.toml"
        scenario.write_text(f'name = "{name}"\n' + toml)
    generate_reference_world(config, out, scenario=scenario)
    tables = {t: pd.read_parquet(out / f"{t}.parquet") for t in ("events", "users", "context")}
    if toml is not None:
        tables.update({t: pd.read_parquet(out / f"{t}.parquet") for t in ("exposures", "assignments")})
    for frame in tables.values():
        if "user_id" in frame:
            frame["user_id"] = frame["user_id"].astype(str)
    tables["dir"], tables["manifest"] = out, json.loads((out / "world.json").read_text())
    return tables


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return run(tmp_path_factory.mktemp("baseline"), "baseline", None)


def by_user(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {u: g.reset_index(drop=True) for u, g in events.groupby("user_id", sort=False)}


def test_a_zero_reach_campaign_gives_the_baseline_world_bit_for_bit(tmp_path, baseline):
    world = run(tmp_path, "zero", campaign(reach="0.0"))
    for table in ("events", "users", "context"):
        assert pq.read_table(world["dir"] / f"{table}.parquet").equals(
            pq.read_table(baseline["dir"] / f"{table}.parquet")), table
    assert len(world["exposures"]) == 0 and len(world["assignments"]) == 0
    assert world["manifest"]["exposures"]["push"]["exposures"] == 0


def test_customers_are_the_baseline_ones_until_their_first_exposure_and_never_exposed_ones_throughout(
        tmp_path, baseline):
    world = run(tmp_path, "half", campaign(reach="0.15"))  # each period's own draw: 1 - 0.85 ** 5 = 56 % reached
    first = world["exposures"].groupby("user_id")["timestamp"].min()
    assert 120 < len(first) < 220
    base, scen = by_user(baseline["events"]), by_user(world["events"])
    changed_after = 0
    for user in baseline["users"]["user_id"]:
        b, s = base.get(user), scen.get(user)
        if user not in first.index:
            pd.testing.assert_frame_equal(b, s)
            continue
        t = first[user]
        pd.testing.assert_frame_equal(b[b["timestamp"] < t], s[s["timestamp"] < t].reset_index(drop=True))
        changed_after += not b[b["timestamp"] >= t].reset_index(drop=True).equals(
            s[s["timestamp"] >= t].reset_index(drop=True))
    assert changed_after == len(first)  # the exposure itself is a new event in every exposed history
    # every exposure is an offer_shown of the campaign's product and channel, at exactly that time
    shown = world["events"][world["events"]["event_type"] == "offer_shown"]
    matched = world["exposures"].merge(shown, on=["user_id", "timestamp"])
    assert len(matched) == len(world["exposures"])
    assert (matched["product"] == "travel_card").all() and (matched["channel"] == "app").all()
    days = (world["exposures"]["timestamp"] - START).dt.days
    assert set(days.unique()) <= {7, 14, 21, 28, 35}
    assert world["exposures"]["timestamp"].dt.hour.between(9, 19).all()  # default hours [9, 20)


def test_exposed_customers_click_and_buy_the_product_more_than_control_customers(tmp_path):
    world = run(tmp_path, "ab", campaign(control="0.5"), WorldConfig(users=3000, days=60, seed=2))
    arms = world["assignments"].set_index("user_id")["arm"]
    assert abs((arms == "control").mean() - 0.5) < 0.05
    ev = world["events"]
    after = ev[(ev["product"] == "travel_card") & (ev["timestamp"] >= START + pd.Timedelta(days=7))]

    def share(event_type: str, arm: str) -> float:
        users = after.loc[after["event_type"] == event_type, "user_id"].unique()
        return arms[arms == arm].index.isin(users).mean()

    # the world's own response: organic travel-card offers reach some control customers too
    assert share("offer_click", "treatment") > share("offer_click", "control") + 0.10
    assert share("offer_purchase", "treatment") > 1.5 * share("offer_purchase", "control") + 0.01
    assert not world["exposures"]["user_id"].isin(arms[arms == "control"].index).any()


def test_control_customers_are_assigned_never_exposed_and_live_the_baseline_life(tmp_path, baseline):
    world = run(tmp_path, "control", campaign(control="0.3"))
    arms = world["assignments"]
    assert set(arms["arm"]) == {"treatment", "control"} and arms["user_id"].is_unique
    control = arms.loc[arms["arm"] == "control", "user_id"]
    assert 50 < len(control) < 130
    assert not world["exposures"]["user_id"].isin(control).any()
    base, scen = by_user(baseline["events"]), by_user(world["events"])
    for user in control:
        pd.testing.assert_frame_equal(base[user], scen[user])
    counts = world["manifest"]["exposures"]["push"]
    assert counts["control"] == len(control) and counts["treatment"] == len(arms) - len(control)


def test_the_frequency_cap_and_the_budgets_hold(tmp_path):
    daily = campaign(name='"a"', every_days="1") + campaign(name='"b"', every_days="1", hours="[6, 22]")
    world = run(tmp_path, "cap", "[cap]\nexposures = 2\ndays = 7\n" + daily)
    ex = world["exposures"].assign(day=lambda d: (d["timestamp"] - START).dt.days).sort_values(["user_id", "timestamp"])
    # at most 2 exposures, of either campaign, in any 7 days: the third-last one is at least 7 days back
    third = ex.groupby("user_id")["day"].shift(2)
    assert ((ex["day"] - third).dropna() >= 7).all()
    assert set(ex["campaign"]) == {"a", "b"} and len(ex) > 1000

    budgeted = run(tmp_path, "budget", campaign(every_days="1", budget="{ total = 1000, per_day = 60 }"))
    per_day = (budgeted["exposures"]["timestamp"] - START).dt.days.value_counts()
    assert per_day.max() == 60  # the daily budget binds (about 290 customers are alive every day) ...
    assert len(budgeted["exposures"]) == 1000  # ... until the total runs out after 17 days
    counts = budgeted["manifest"]["exposures"]["push"]
    assert counts["exposures"] == 1000 and max(counts["exposures_per_day"].values()) == 60


def test_budgets_are_shared_pro_rata_among_chunks_and_chunking_changes_nothing_else(tmp_path, monkeypatch):
    budget = campaign(every_days="1", budget="{ total = 1000, per_day = 60 }")
    whole = run(tmp_path, "one-chunk", budget)
    monkeypatch.setattr(world_module, "CHUNK_USERS", 70)  # 5 chunks: 70, 70, 70, 70, 20 customers
    chunked = run(tmp_path, "chunks", budget)
    baseline_chunked = run(tmp_path, "baseline-chunks", None)
    assert len(chunked["exposures"]) == 1000
    per_day = (chunked["exposures"]["timestamp"] - START).dt.days.value_counts()
    assert per_day.max() <= 60
    # each chunk gets its share of the daily budget: the first 70 customers get 14 of the 60 a day
    first_chunk = chunked["exposures"]["user_id"].str[1:].astype(int) < 70
    assert (chunked["exposures"][first_chunk]["timestamp"] - START).dt.days.value_counts().max() == 14
    assert len(whole["exposures"]) == 1000
    baseline = run(tmp_path, "baseline-one", None)
    pd.testing.assert_frame_equal(baseline["events"], baseline_chunked["events"])


def test_exposures_at_login_come_seconds_after_the_first_login_of_each_period(tmp_path):
    world = run(tmp_path, "login", campaign(at='"login"'))
    ex, ev = world["exposures"], world["events"]
    assert len(ex) > 300
    logins = ev[ev["event_type"] == "login"][["user_id", "timestamp"]].rename(columns={"timestamp": "login"})
    paired = pd.merge_asof(ex.sort_values("timestamp"), logins.sort_values("login"), left_on="timestamp",
                           right_on="login", by="user_id", direction="backward")
    gap = (paired["timestamp"] - paired["login"]).dt.total_seconds()
    assert ((gap > 1) & (gap < 11)).all()  # 2 to 10 s, each time with its own sub-second jitter
    # the first login of the period: no login of the customer between the period's start and that one
    paired["period"] = 7 + (paired["timestamp"] - START).dt.days.sub(7) // 7 * 7
    first_login = logins.assign(period=7 + ((logins["login"] - START).dt.days - 7) // 7 * 7).groupby(
        ["user_id", "period"])["login"].min()
    assert (paired.set_index(["user_id", "period"])["login"] == first_login.reindex(
        paired.set_index(["user_id", "period"]).index)).all()
    assert paired.groupby(["user_id", "period"]).size().max() == 1


def test_eligibility_attributes_not_had_and_active_days(tmp_path):
    world = run(tmp_path, "eligible", campaign(
        every_days="1", attributes="{ tenure_months = [24, 480] }",
        not_had='[{ event_type = "offer_purchase", product = "travel_card" }]', active_days="2"),
        WorldConfig(users=1000, days=60, seed=5))
    ex, ev, users = world["exposures"], world["events"], world["users"].set_index("user_id")
    assert len(ex) > 1000
    assert (users.loc[ex["user_id"], "tenure_months"] >= 24).all()
    assert (users.loc[world["assignments"]["user_id"], "tenure_months"] >= 24).all()
    bought = ev[(ev["event_type"] == "offer_purchase") & (ev["product"] == "travel_card")]
    first_buy = bought.groupby("user_id")["timestamp"].min()
    assert len(first_buy) > 10
    assert not (ex["timestamp"] > ex["user_id"].map(first_buy)).any()  # NaT (never bought) compares False
    # active_days = 2: an event of the customer's own (not an exposure) in the 2 days before each exposure
    own = ev.merge(ex, on=["user_id", "timestamp"], how="left", indicator=True)
    own = own.loc[own["_merge"] == "left_only", ["user_id", "timestamp"]].rename(columns={"timestamp": "t"})
    prior = ex.merge(own, on="user_id")
    prior = prior[(prior["t"] < prior["timestamp"]) & (prior["t"] >= prior["timestamp"] - pd.Timedelta(days=2))]
    assert prior.groupby(["user_id", "timestamp"]).ngroups == len(ex)
    # a customer is assigned at their first eligible opportunity: every assigned customer was exposed
    assert set(world["assignments"]["user_id"]) == set(ex["user_id"])


def test_a_macro_shock_shows_in_the_context_and_cuts_spending_and_raises_churn(tmp_path):
    config = WorldConfig(users=2000, days=120, seed=3)
    base = run(tmp_path, "calm", None, config)
    shocked = run(tmp_path, "shock", '[[shock]]\ncolumn = "macro_index"\nstart = 30\nend = 90\nset = 70.0\n', config)
    macro = shocked["context"]["macro_index"].to_numpy()
    assert (macro[30:90] == 70.0).all()
    np.testing.assert_array_equal(macro[:30], base["context"]["macro_index"].to_numpy()[:30])
    np.testing.assert_array_equal(macro[90:], base["context"]["macro_index"].to_numpy()[90:])
    cut = START + pd.Timedelta(days=30)
    before = [w["events"][w["events"]["timestamp"] < cut].reset_index(drop=True) for w in (base, shocked)]
    pd.testing.assert_frame_equal(*before)  # nothing differs before the shock starts

    def during(world, event_type):
        ev = world["events"]
        return ev[(ev["event_type"] == event_type) & (ev["timestamp"] >= cut)
                  & (ev["timestamp"] < START + pd.Timedelta(days=90))]

    spend = [during(w, "card_payment")["amount"].sum() for w in (base, shocked)]
    assert spend[1] < 0.7 * spend[0]  # (70 / 100) ** 2 = 0.49 of the payment rate
    closed = [len(during(w, "account_closed")) for w in (base, shocked)]
    assert closed[1] > 2 * closed[0]  # hazard x exp(6 * 0.3) = 6
    assert shocked["manifest"]["scenario"]["shocks"][0]["set"] == 70.0


def test_scenarios_are_deterministic_and_the_world_refuses_campaigns_it_cannot_respond_to(tmp_path):
    text = campaign(reach="0.7", control="0.2", at='"login"')
    a, b = run(tmp_path, "a", text), run(tmp_path, "b", text)
    for table in ("events", "exposures", "assignments"):
        assert pq.read_table(a["dir"] / f"{table}.parquet").equals(pq.read_table(b["dir"] / f"{table}.parquet"))
    with pytest.raises(TwinsimError, match="#1 .'push'.: event_type: 'login' cannot run in the reference world, "
                                           "which only responds to offer_shown"):
        run(tmp_path, "login-push", campaign(event_type='"login"', marks="{ channel = \"app\" }"))
    with pytest.raises(TwinsimError, match="marks: no product mark"):
        run(tmp_path, "no-product", campaign(marks='{ channel = "app" }'))


def test_the_command_line_runs_a_built_in_scenario_and_refuses_a_bad_one(tmp_path):
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()
    base, out = tmp_path / "base", tmp_path / "down"
    for path, extra in ((base, []), (out, ["--scenario", "downturn"])):
        result = runner.invoke(main, ["reference-world", "--users", "60", "--days", "40", "--seed", "2", "-o",
                                      str(path), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"events.parquet", "users.parquet", "context.parquet", "world.json",
                                               "exposures.parquet", "assignments.parquet", "decisions.parquet"}
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["scenario"]["name"] == "downturn" and manifest["exposures"] == {}
    shift = (pd.read_parquet(out / "context.parquet")["macro_index"]
             - pd.read_parquet(base / "context.parquet")["macro_index"]).to_numpy()
    np.testing.assert_allclose(shift, np.r_[np.zeros(30), np.full(10, -15.0)])
    bad = tmp_path / "bad.toml"
    bad.write_text(campaign(event_type='"fee"', marks='{ product = "travel_card" }'))
    result = runner.invoke(main, ["reference-world", "--users", "10", "--days", "20", "--scenario", str(bad), "-o",
                                  str(tmp_path / "never"), "--quiet"])
    assert result.exit_code == 2 and "only responds to offer_shown" in result.output
    assert not (tmp_path / "never").exists()


def test_a_scenario_world_is_prefix_stable(tmp_path):
    text = (campaign(at='"login"', control="0.2", budget="{ per_day = 40 }")
            + '[[shock]]\ncolumn = "macro_index"\nstart = 20\nend = 80\nshift = -10.0\n')
    short, long = (run(tmp_path, f"d{days}", text, WorldConfig(users=300, days=days, seed=7)) for days in (50, 90))
    cut = START + pd.Timedelta(days=50)
    for table in ("events", "exposures"):
        pd.testing.assert_frame_equal(short[table], long[table][long[table]["timestamp"] < cut].reset_index(drop=True))
    pd.testing.assert_frame_equal(short["assignments"], long["assignments"])
    pd.testing.assert_frame_equal(short["context"], long["context"].iloc[:50])


def test_every_built_in_scenario_speaks_the_world_vocabulary(baseline):
    from twinsim.scenarios.scenario import builtin_names, load_scenario
    from twinsim.simulator.reference_world import world_vocabulary
    from twinsim.simulator.reference_world.scenario import check_scenario

    vocabulary = world_vocabulary()
    assert vocabulary.terminal_types == ["account_closed"] and vocabulary.context_columns == ["macro_index"]
    users = baseline["users"]
    assert set(vocabulary.categorical_attributes) | set(vocabulary.numeric_attributes) == set(users) - {"user_id"}
    for name, values in vocabulary.categorical_attributes.items():
        assert set(users[name].astype(str)) <= set(values)
    for name in builtin_names():
        check_scenario(load_scenario(name, vocabulary, run_start=pd.Timestamp(SMALL.start)), name)
