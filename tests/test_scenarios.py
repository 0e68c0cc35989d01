"""Scenario files and what they do in a simulation: the parser's errors, triggers, control arms, frequency
caps, budgets, eligibility and context shocks, and the paired-run guarantees (a zero-reach campaign changes
nothing, no customer differs before their first exposure or before a shock starts)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from twinsim.models.encoding import context_at, fit_schema
from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import load_model
from twinsim.scenarios.scenario import Vocabulary, builtin_names, load_scenario, pro_rata
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.interventions import shocked_context
from twinsim.simulator.sink import DATASETS

VOCAB = Vocabulary(event_types=["account_closed", "login", "offer_click", "offer_purchase", "offer_shown"],
                   terminal_types=["account_closed"], marks={"product": ["savings", "travel_card"],
                                                             "channel": ["app", "web"]},
                   categorical_attributes={"age_band": ["18-24", "25-34"]}, numeric_attributes=["tenure_months"],
                   context_columns=["macro_index"])
OK = '[[campaign]]\nname = "x"\nstart = 1\nend = 5\nevent_type = "offer_shown"\n'
COMMON = dict(users=120, start="2025-02-01", days=24, seed=5, history_days=3, cohort_size=60)
DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2025-02-01", tz="UTC")
TRIGGERED = """
name = "triggered"
[cap]
exposures = 1
days = 7

[[campaign]]
name = "login-offer"
start = 3
end = 21
every_days = 3
reach = 0.9
control = 0.3
at = "login"
event_type = "offer_shown"
marks = { product = "travel_card", channel = "app" }
budget = { total = 40, per_day = 4 }

[[campaign]]
name = "scheduled"
start = 5
end = 20
every_days = 5
event_type = "offer_shown"
marks = { product = "savings" }
"""


def frame(run, dataset: str = "events") -> pd.DataFrame:
    data = pd.read_parquet(run / dataset).drop(columns="date", errors="ignore")
    data = data.astype({c: "object" for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)})
    return data.sort_values(list(data.columns), kind="stable").reset_index(drop=True)


def write(tmp_path, body: str, name: str = "scenario.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# -- the parser -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, table, key", [
    (OK + '[[campaign]]\nname = "second"\nstart = 1\nend = 5\nevent_type = "offer_shown"\nreach = 1.5',
     '[[campaign]] #2 "second"', "reach"),
    (OK.replace("start = 1", 'start = "2026-13-01"'), '[[campaign]] #1 "x"', "start"),
    (OK.replace("start = 1", 'start = "2026-01-08T10:00"'), '[[campaign]] #1 "x"', "start"),
    (OK.replace("end = 5", "end = 1.5"), '[[campaign]] #1 "x"', "end"),
    (OK.replace("start = 1", "start = 9"), '[[campaign]] #1 "x"', "end"),
    (OK.replace('name = "x"\n', ""), "[[campaign]] #1", "name"),
    (OK.replace('"offer_shown"', '"account_closed"'), '[[campaign]] #1 "x"', "event_type"),
    (OK + 'at = "logn"', '[[campaign]] #1 "x"', "at"),
    (OK + 'at = "account_closed"', '[[campaign]] #1 "x"', "at"),
    (OK + 'at = "login"\nhours = [9, 20]', '[[campaign]] #1 "x"', "hours"),
    (OK + "hours = [20, 9]", '[[campaign]] #1 "x"', "hours"),
    (OK + "control = 1.0", '[[campaign]] #1 "x"', "control"),
    (OK + "every_days = true", '[[campaign]] #1 "x"', "every_days"),
    (OK + "budget = 5", '[[campaign]] #1 "x"', "budget"),
    (OK + "budget = { totl = 5 }", '[[campaign]] #1 "x" budget', "unknown key"),
    (OK + "budget = { total = -1 }", '[[campaign]] #1 "x" budget', "total"),
    (OK + 'marks = { product = "yacht" }', '[[campaign]] #1 "x"', "marks"),
    (OK + 'marks = { colour = "red" }', '[[campaign]] #1 "x"', "marks"),
    (OK + 'segment = { age_band = ["old"] }', '[[campaign]] #1 "x"', "segment"),
    (OK + 'segment = { tenure_months = ["12"] }', '[[campaign]] #1 "x"', "segment"),
    (OK + "attributes = { age_band = [1, 2] }", '[[campaign]] #1 "x"', "attributes"),
    (OK + "attributes = { tenure_months = [120, 12] }", '[[campaign]] #1 "x"', "attributes"),
    (OK + 'attributes = { tenure_months = { least = 3 } }', '[[campaign]] #1 "x"', "attributes"),
    (OK + 'not_had = [{ product = "boat" }]', '[[campaign]] #1 "x"', "not_had"),
    (OK + 'not_had = [{ event_type = "teleport" }]', '[[campaign]] #1 "x"', "not_had"),
    (OK + "not_had = [{}]", '[[campaign]] #1 "x"', "not_had"),
    (OK + "active_days = 0", '[[campaign]] #1 "x"', "active_days"),
    (OK + "reech = 0.5", '[[campaign]] #1 "x"', "unknown key"),
    (OK + OK, "top level", "campaign"),  # the same name twice
    ("[cap]\nexposures = 0\ndays = 7", "[cap]", "exposures"),
    ("[cap]\nexposures = 1", "[cap]", "days"),
    ("[[cap]]\nexposures = 1\ndays = 7", "top level", "cap"),
    ('[[shock]]\ncolumn = "gdp"\nstart = 1\nend = 4\nshift = 1', "[[shock]] #1", "column"),
    ('[[shock]]\ncolumn = "macro_index"\nstart = 1\nend = 4\nshift = 1\nset = 3', "[[shock]] #1", "shift"),
    ('[[shock]]\ncolumn = "macro_index"\nstart = 4\nend = 4\nset = 3', "[[shock]] #1", "end"),
    ('[[shock]]\ncolumn = "macro_index"\nstart = 4\nend = 8\nshift = "down"', "[[shock]] #1", "shift"),
    ("campaign = 3", "top level", "campaign"),
    ('name = "x"\ncampaigns = 3', "top level", "unknown key"),
])
def test_a_bad_scenario_names_the_file_table_and_key_with_an_example(tmp_path, body, table, key):
    path = write(tmp_path, body, "bad.toml")
    with pytest.raises(TwinsimError) as error:
        load_scenario(path, VOCAB, pd.Timestamp("2026-01-01"))
    message = str(error.value)
    assert message.startswith(f"{path}: {table}: {key}"), message
    assert "e.g." in message or "allowed:" in message, message


def test_a_shock_needs_a_model_that_reads_daily_context(tmp_path):
    path = write(tmp_path, '[[shock]]\ncolumn = "macro_index"\nstart = 1\nend = 4\nshift = -10')
    assert load_scenario(path, VOCAB, pd.Timestamp("2026-01-01")).shocks[0].shift == -10.0
    with pytest.raises(TwinsimError, match="reads no daily context"):
        load_scenario(path, Vocabulary(**{**VOCAB.__dict__, "context_columns": []}), pd.Timestamp("2026-01-01"))


def test_the_downturn_builtin_is_refused_for_a_model_without_daily_context(sparse_model, tmp_path):
    with pytest.raises(TwinsimError, match=r"downturn.toml: \[\[shock\]\] #1: column: the model reads no daily"):
        simulate(sparse_model, SimulateConfig(users=10, start="2024-06-01", days=100, scenario="downturn"),
                 tmp_path / "run")


def test_every_field_reads_as_documented(tmp_path):
    path = write(tmp_path, """
        name = "all"
        [cap]
        exposures = 2
        days = 14
        [[campaign]]
        name = "full"
        start = "2026-01-08"
        end = 21
        every_days = 7
        reach = 0.6
        control = 0.1
        at = "login"
        event_type = "offer_shown"
        marks = { product = "travel_card", channel = "app" }
        budget = { total = 5000, per_day = 500 }
        segment = { age_band = "18-24" }
        attributes = { tenure_months = { min = 12 } }
        not_had = [{ event_type = "offer_purchase", product = "travel_card" }, { channel = "web" }]
        active_days = 30
        [[shock]]
        column = "macro_index"
        start = 2026-01-31
        end = 90
        set = 85
        """)
    s = load_scenario(path, VOCAB, pd.Timestamp("2026-01-01"))
    c = s.campaigns[0]
    assert (c.start, c.end) == (pd.Timestamp("2026-01-08"), pd.Timestamp("2026-01-22"))
    assert c.periods() == [(pd.Timestamp("2026-01-08"), pd.Timestamp("2026-01-15")),
                           (pd.Timestamp("2026-01-15"), pd.Timestamp("2026-01-22"))]
    assert (c.at, c.control, c.budget_total, c.budget_per_day, c.active_days) == ("login", 0.1, 5000, 500, 30)
    assert c.segment == {"age_band": ["18-24"]} and c.attributes == {"tenure_months": (12.0, None)}
    assert c.not_had == ({"event_type": "offer_purchase", "product": "travel_card"}, {"channel": "web"})
    assert (s.cap.exposures, s.cap.days) == (2, 14)
    assert (s.shocks[0].start, s.shocks[0].end, s.shocks[0].set) == (pd.Timestamp("2026-01-31"),
                                                                     pd.Timestamp("2026-04-01"), 85.0)
    json.dumps(s.to_json())  # goes into the manifest


def test_the_builtins_load_against_a_model_and_the_vocabulary_is_the_models(model_dir):
    _, schema, _ = load_model(model_dir)
    vocab = Vocabulary.from_schema(schema)
    assert vocab.marks["product"] == schema.marks["product"][1:] and "macro_index" in vocab.context_columns
    assert not [a for a in vocab.numeric_attributes if a.startswith("activity:")]
    for name in builtin_names():
        assert load_scenario(name, schema, START) == load_scenario(name, vocab, START)


# -- the pieces -------------------------------------------------------------------------------------------------
def test_cohorts_budget_shares_add_up_to_the_budget():
    for budget, population, size in [(5000, 100_000, 16_384), (7, 120, 50), (3, 10, 1)]:
        shares = [pro_rata(budget, first, min(size, population - first), population)
                  for first in range(0, population, size)]
        assert sum(shares) == budget and max(shares) - min(shares) <= budget * size // population + 1


def test_a_shocked_context_table_changes_only_the_shocked_days_also_past_the_table(small_log, tmp_path):
    schema = fit_schema(small_log)
    last = small_log.context["date"].max()
    path = write(tmp_path, f'[[shock]]\ncolumn = "macro_index"\nstart = "{(last - 5 * DAY).date()}"\n'
                           f'end = "{(last + 10 * DAY).date()}"\nset = 60.0')
    shock = load_scenario(path, Vocabulary.from_schema(schema), pd.Timestamp(last)).shocks
    begin = pd.Timestamp(small_log.context["date"].min(), tz="UTC") - 3 * DAY
    table = shocked_context(small_log.context, schema, shock, begin.timestamp(), (begin + 200 * DAY).timestamp())
    times = (begin + pd.to_timedelta(np.arange(0, 230 * 24, 5), unit="h")).map(pd.Timestamp.timestamp).to_numpy()
    before, after = context_at(times, small_log.context, schema), context_at(times, table, schema)
    day = pd.to_datetime(times, unit="s").normalize()
    shocked = (day >= shock[0].start) & (day < shock[0].end)
    np.testing.assert_array_equal(before[~shocked], after[~shocked])  # bit for bit
    expected = (60.0 - schema.context_mean[0]) / schema.context_std[0]
    assert shocked.sum() > 10 * 24 / 5 and np.allclose(after[shocked, 0], expected)


# -- simulations ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scenarios") / "baseline"
    simulate(model_dir, SimulateConfig(**COMMON), out)
    return out


@pytest.fixture(scope="module")
def triggered(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scenarios")
    manifest = simulate(model_dir, SimulateConfig(**COMMON, scenario=str(write(out, TRIGGERED))), out / "run")
    return out / "run", manifest


def first_exposure(run) -> pd.Series:
    return pd.read_parquet(run / "exposures").groupby("user_id")["timestamp"].min()


def assert_same_before(base, run, first: pd.Series) -> None:
    """Every event before each customer's ``first`` time (all of them where it is missing) is identical."""
    def before(events):
        return events[~(events["timestamp"] >= events["user_id"].map(first))].reset_index(drop=True)

    for dataset in ("history", "events"):
        pd.testing.assert_frame_equal(before(frame(base, dataset)), before(frame(run, dataset)), check_exact=True)


def test_a_zero_reach_campaign_gives_bit_identical_output(model_dir, baseline, tmp_path):
    body = TRIGGERED.replace("reach = 0.9", "reach = 0.0").replace('every_days = 5\n', 'every_days = 5\nreach = 0\n')
    simulate(model_dir, SimulateConfig(**COMMON, scenario=str(write(tmp_path, body))), tmp_path / "zero")
    for dataset in ("events", "history"):
        pd.testing.assert_frame_equal(frame(baseline, dataset), frame(tmp_path / "zero", dataset), check_exact=True)
    assert not (tmp_path / "zero" / "exposures").exists() and not (tmp_path / "zero" / "assignments").exists()


def test_triggered_exposures_follow_the_customers_first_login_of_the_period_within_seconds(triggered):
    run, _ = triggered
    events, exposures = frame(run), pd.read_parquet(run / "exposures")
    shown = exposures[exposures["campaign"] == "login-offer"]
    assert len(shown) > 10
    logins = events[events["event_type"] == "login"]
    for user, t in zip(shown["user_id"], shown["timestamp"], strict=True):
        mine = logins.loc[logins["user_id"] == user, "timestamp"]
        trigger = mine[(mine >= t - pd.Timedelta(seconds=10)) & (mine <= t - pd.Timedelta(seconds=2))]
        assert len(trigger) == 1, (user, t)
        period = START + (3 + 3 * ((trigger.iloc[0] - START - 3 * DAY) // (3 * DAY))) * DAY
        assert not ((mine >= period) & (mine < trigger.iloc[0])).any()  # the first login of its period
    both = events.merge(shown, on=["user_id", "timestamp"])
    assert len(both) == len(shown) and (both["product"] == "travel_card").all()


def test_control_customers_are_assigned_never_exposed_and_untouched_customers_equal_the_baseline(baseline,
                                                                                                   triggered):
    run, manifest = triggered
    assignments, exposures = pd.read_parquet(run / "assignments"), pd.read_parquet(run / "exposures")
    login = assignments[assignments["campaign"] == "login-offer"]
    control = set(login.loc[login["arm"] == "control", "user_id"])
    assert set(assignments["arm"]) == {"treatment", "control"} and 0.1 < len(control) / len(login) < 0.5
    shown = exposures[exposures["campaign"] == "login-offer"]
    assert control and not control & set(shown["user_id"])
    assert set(shown["user_id"]) <= set(login.loc[login["arm"] == "treatment", "user_id"])
    assert not login["user_id"].duplicated().any()
    counts = manifest["campaigns"]["login-offer"]
    assert (counts["control"], counts["exposures"]) == (len(control), len(shown))
    assert_same_before(baseline, run, first_exposure(run))  # the never exposed (controls too) are identical


def test_the_frequency_cap_holds_across_campaigns_and_budgets_per_cohort_and_day(triggered):
    run, manifest = triggered
    exposures = pd.read_parquet(run / "exposures").sort_values(["user_id", "timestamp"])
    gaps = exposures.groupby("user_id")["timestamp"].diff().dropna()
    assert len(gaps) and (gaps >= 7 * DAY).all()  # at most 1 in any 7 days, whatever the campaign
    assert set(exposures["campaign"]) == {"login-offer", "scheduled"}
    shown = exposures[exposures["campaign"] == "login-offer"]
    users = pd.read_parquet(run / "users.parquet")["user_id"].tolist()
    cohort = shown["user_id"].map({u: i // COMMON["cohort_size"] for i, u in enumerate(users)})
    per_day = shown.groupby([cohort, shown["timestamp"].dt.date]).size()
    assert per_day.max() == 2  # 4 a day pro rata to two cohorts of 60 of 120: binding
    assert cohort.value_counts().max() <= 20 and len(shown) <= 40
    for k, stats in manifest["cohorts_done"].items():
        counts = stats["campaigns"]["login-offer"]
        assert (counts["budget_total"], counts["budget_per_day"]) == (20, 2)
        assert sum(counts["exposures_per_day"].values()) == counts["exposures"] == (cohort == int(k)).sum()


def test_eligibility_rules_hold_at_each_exposure_over_a_given_history(model_dir, small_log, tmp_path):
    cut = pd.Timestamp("2025-03-01", tz="UTC")
    ids = small_log.users["user_id"].iloc[:100]
    log = small_log.events[small_log.events["user_id"].isin(ids) & (small_log.events["timestamp"] < cut)]
    (tmp_path / "log").mkdir()
    log.to_parquet(tmp_path / "log" / "events.parquet")
    small_log.users[small_log.users["user_id"].isin(ids)].to_parquet(tmp_path / "log" / "users.parquet")
    path = write(tmp_path, """
        [[campaign]]
        name = "rules"
        start = 1
        end = 16
        every_days = 3
        event_type = "offer_shown"
        marks = { product = "savings" }
        attributes = { tenure_months = [12, 120] }
        not_had = [{ event_type = "offer_click" }]
        active_days = 4
        """)
    simulate(model_dir, SimulateConfig(users=None, history=str(tmp_path / "log"), days=18, seed=2, scenario=str(path)),
             tmp_path / "run")
    exposures = pd.read_parquet(tmp_path / "run" / "exposures")
    events = pd.concat([log.astype({"user_id": str, "event_type": str}), frame(tmp_path / "run")])
    events["timestamp"] = events["timestamp"].astype("datetime64[us, UTC]")
    exposures["timestamp"] = exposures["timestamp"].astype("datetime64[us, UTC]")
    users = small_log.users.astype({"user_id": str}).set_index("user_id").loc[ids.astype(str)]
    assert len(exposures) > 5
    tenure = exposures["user_id"].map(users["tenure_months"])
    assert tenure.between(12, 120, inclusive="left").all() and not users["tenure_months"].between(12, 120).all()
    clicked_in_log = set(log.loc[log["event_type"] == "offer_click", "user_id"].astype(str))
    assert clicked_in_log and not clicked_in_log & set(exposures["user_id"])
    own = events.merge(exposures, on=["user_id", "timestamp"], how="left", indicator=True)
    own = own[own["_merge"] == "left_only"]
    for user, t in zip(exposures["user_id"], exposures["timestamp"], strict=True):
        mine = own[(own["user_id"] == user) & (own["timestamp"] < t)]
        assert not (mine["event_type"] == "offer_click").any()
        assert (mine["timestamp"] >= t - 4 * DAY).any()  # exposures do not count: the last came 3 days ago


def test_a_shock_past_the_models_context_table_changes_events_only_from_its_start_day(model_dir, tmp_path):
    config = dict(COMMON, start="2025-05-10", days=20)  # the small world's context table ends on 2025-04-30
    path = write(tmp_path, '[[shock]]\ncolumn = "macro_index"\nstart = 8\nend = 40\nset = 60.0')
    simulate(model_dir, SimulateConfig(**config), tmp_path / "base")
    simulate(model_dir, SimulateConfig(**config, scenario=str(path)), tmp_path / "shock")
    base, shocked = frame(tmp_path / "base"), frame(tmp_path / "shock")
    onset = pd.Series(pd.Timestamp("2025-05-18", tz="UTC"), index=pd.Index(base["user_id"].unique()))
    assert_same_before(tmp_path / "base", tmp_path / "shock", onset)
    after = base["timestamp"] >= onset.iloc[0]
    assert not base[after].reset_index(drop=True).equals(shocked[shocked["timestamp"] >= onset.iloc[0]]
                                                         .reset_index(drop=True))


def test_a_scenario_run_resumes_and_runs_on_two_workers_to_the_same_output(model_dir, tmp_path):
    body = TRIGGERED + '[[shock]]\ncolumn = "macro_index"\nstart = 10\nend = 20\nshift = -20.0\n'
    body = body.replace('marks = { product = "savings" }', 'marks = { product = "savings" }\n'
                        'not_had = [{ event_type = "offer_click" }]\nactive_days = 5')
    config = SimulateConfig(**{**COMMON, "cohort_size": 40, "scenario": str(write(tmp_path, body))})
    full = simulate(model_dir, config, tmp_path / "full")

    def crash(progress):
        if progress.fraction >= 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(model_dir, config, tmp_path / "cut", on_progress=crash)
    resumed = simulate(model_dir, config, tmp_path / "cut", resume=True)
    simulate(model_dir, config, tmp_path / "two", workers=2)
    for other in ("cut", "two"):
        for dataset in DATASETS:
            pd.testing.assert_frame_equal(frame(tmp_path / "full", dataset), frame(tmp_path / other, dataset),
                                          check_exact=True)
    assert resumed["campaigns"] == full["campaigns"] and full["campaigns"]["login-offer"]["exposures"] > 0


def test_a_budget_goes_to_the_first_opportunities_of_the_day(model_dir, tmp_path):
    path = write(tmp_path, """
        [[campaign]]
        name = "login-offer"
        start = 3
        end = 21
        every_days = 3
        at = "login"
        event_type = "offer_shown"
        budget = { per_day = 8 }
        """)
    simulate(model_dir, SimulateConfig(**COMMON, scenario=str(path)), tmp_path / "run")
    events, exposures = frame(tmp_path / "run"), pd.read_parquet(tmp_path / "run" / "exposures")
    users = pd.read_parquet(tmp_path / "run" / "users.parquet")["user_id"].tolist()
    cohort = {u: i // COMMON["cohort_size"] for i, u in enumerate(users)}
    logins = events[events["event_type"] == "login"].assign(period=lambda e: ((e["timestamp"] - START) // DAY - 3) // 3)
    logins = logins[logins["period"].between(0, 5)]
    # every customer is reached: each one's first login of a period is an opportunity
    first = logins.groupby(["user_id", "period"]).head(1)
    binding = 0
    for (k, day), chances in first.groupby([first["user_id"].map(cohort), first["timestamp"].dt.date]):
        got = exposures[exposures["user_id"].map(cohort).eq(k) & exposures["timestamp"].dt.date.eq(day)]
        assert len(got) == min(4, len(chances))  # 8 a day, pro rata to two cohorts of 60 of 120
        if len(chances) > 4:
            binding += 1
            assert set(got["user_id"]) == set(chances.nsmallest(4, "timestamp")["user_id"])  # first come, first served
    assert binding >= 5


def test_without_budgets_a_run_does_not_depend_on_the_cohort_size_and_an_ample_budget_changes_nothing(model_dir,
                                                                                                     tmp_path):
    shock = '[[shock]]\ncolumn = "macro_index"\nstart = 10\nend = 20\nshift = -20.0\n'
    unlimited = write(tmp_path, TRIGGERED.replace("budget = { total = 40, per_day = 4 }\n", "") + shock, "a.toml")
    ample = write(tmp_path, TRIGGERED.replace("total = 40, per_day = 4", "total = 1000, per_day = 200") + shock,
                  "b.toml")
    for name, size, path in (("60", 60, unlimited), ("25", 25, unlimited), ("ample", 60, ample)):
        simulate(model_dir, SimulateConfig(**{**COMMON, "cohort_size": size, "scenario": str(path)}), tmp_path / name)
    for other in ("25", "ample"):
        for dataset in DATASETS:
            pd.testing.assert_frame_equal(frame(tmp_path / "60", dataset), frame(tmp_path / other, dataset),
                                          check_exact=True)
