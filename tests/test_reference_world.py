"""The reference world's behavioural laws hold statistically at small scale (docs/reference-world.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from twinsim.models.event_log import load_event_log
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world
from twinsim.simulator.reference_world.calendar import build_calendar


def of_type(events: pd.DataFrame, event_type: str) -> pd.DataFrame:
    return events[events["event_type"] == event_type]


def test_output_meets_the_event_log_contract_cleanly(world_dir):
    log = load_event_log(world_dir)
    assert log.notes == []  # no duplicates, already sorted, time zone given
    assert set(log.amount_types) == {"income", "card_payment", "card_declined", "fee"}
    assert set(log.marks) == {"channel", "merchant_category", "product"}
    assert len(log.users) == 2_000


def test_same_seed_gives_identical_output_and_another_seed_does_not(tmp_path):
    config = WorldConfig(users=300, days=40, seed=5)
    for name in ("a", "b"):
        generate_reference_world(config, tmp_path / name)
    generate_reference_world(WorldConfig(users=300, days=40, seed=6), tmp_path / "c")
    for table in ("events", "users", "context"):
        a, b, c = (pq.read_table(tmp_path / d / f"{table}.parquet") for d in "abc")
        assert a.equals(b), table
        assert not a.equals(c), table



def test_a_longer_world_begins_with_the_shorter_one(tmp_path):
    """Prefix stability: a 400-day world's first 240 days are the 240-day world (events, users, context), so a
    longer world is the ground truth of a shorter one's future. 240 days reach into the first downturn and
    400 days into the second macro year, so both the behaviour and the macro index are covered."""
    short, long = (WorldConfig(users=300, days=days, seed=4) for days in (240, 400))
    for config in (short, long):
        generate_reference_world(config, tmp_path / str(config.days))

    def read(config, table):
        return pd.read_parquet(tmp_path / str(config.days) / f"{table}.parquet")

    def by_user_and_time(events):
        return events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)

    cutoff = pd.Timestamp(short.start, tz="UTC") + pd.Timedelta(days=short.days)
    events_short, events_long = read(short, "events"), read(long, "events")
    pd.testing.assert_frame_equal(by_user_and_time(events_short),
                                  by_user_and_time(events_long[events_long["timestamp"] < cutoff]))
    pd.testing.assert_frame_equal(read(short, "users"), read(long, "users"))
    context_short, context_long = read(short, "context"), read(long, "context")
    pd.testing.assert_frame_equal(context_short, context_long.iloc[:short.days])
    # not trivially true: the longer world goes on, and the shared days hold a downturn
    assert (events_long["timestamp"] >= cutoff).sum() > 0.3 * len(events_short)
    assert len(context_long) == long.days and context_short["macro_index"].min() < 95


def test_the_macro_index_of_a_longer_window_continues_the_shorter_one():
    start = pd.Timestamp("2025-01-01").date()
    longest = build_calendar(start, 3660, np.random.default_rng(2)).macro_index
    for days in (1, 100, 365, 366, 800):
        macro = build_calendar(start, days, np.random.default_rng(2)).macro_index
        np.testing.assert_array_equal(macro, longest[:days])
    # one downturn in each year counted from the window start, however long the window
    assert all(longest[k * 365:(k + 1) * 365].min() < 90 for k in range(10))

def test_all_events_lie_inside_the_window(world):
    ts = world["events"]["timestamp"]
    assert ts.min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert ts.max() < pd.Timestamp("2026-01-01", tz="UTC")


def test_customers_are_heterogeneous(world):
    users, events = world["users"], world["events"]
    assert set(users["segment"].astype(str)) == {"student", "young_professional", "family", "retiree",
                                                   "high_net_worth", "small_business"}
    logins = of_type(events, "login").groupby("user_id").size().reindex(users["user_id"], fill_value=0)
    assert logins.std() / logins.mean() > 0.5  # per-user return intervals differ widely
    seg_rate = logins.groupby(users.set_index("user_id")["segment"].astype(str)).mean()
    assert seg_rate["student"] > 1.8 * seg_rate["retiree"]


def test_income_arrives_on_a_per_user_payday_never_at_weekends(world):
    income = of_type(world["events"], "income")
    assert not income["timestamp"].dt.day_of_week.isin([5, 6]).any()
    assert income["timestamp"].dt.hour.between(2, 6).all()
    gaps = income.groupby("user_id")["timestamp"].diff().dropna().dt.days
    biweekly = gaps.between(13, 14)
    monthly = gaps.between(25, 35)
    assert (biweekly | monthly).mean() > 0.99
    # each user has one schedule and a stable salary
    per_user = income.assign(gap=income.groupby("user_id")["timestamp"].diff().dt.days).dropna(subset=["gap"])
    schedules = per_user.groupby("user_id")["gap"].agg(lambda g: g.between(13, 14).mean())
    assert ((schedules == 0) | (schedules == 1)).mean() > 0.99
    cv = income.groupby("user_id")["amount"].agg(lambda a: a.std() / a.mean()).dropna()
    assert cv.median() < 0.05


def test_logins_follow_weekly_and_daily_rhythms(world):
    logins = of_type(world["events"], "login")["timestamp"]
    per_weekday = logins.dt.day_of_week.value_counts().sort_index()
    assert per_weekday[[5, 6]].mean() < 0.85 * per_weekday[[0, 1, 2, 3, 4]].mean()
    hours = logins.dt.hour.value_counts(normalize=True)
    assert hours.reindex([2, 3, 4], fill_value=0).sum() < 0.03
    assert hours.reindex(range(19, 23)).sum() > 2 * hours.reindex(range(14, 18)).sum()


def test_card_spending_has_december_gift_cards_and_summer_travel(world):
    pay = of_type(world["events"], "card_payment")
    month = pay["timestamp"].dt.month
    gift = (pay["merchant_category"] == "gift_cards").groupby(month).mean()
    travel = (pay["merchant_category"] == "travel").groupby(month).mean()
    assert gift[12] > 4 * gift[3:10].mean()
    assert travel[7] > 2 * travel[[3, 4, 10]].mean()


def test_top_one_percent_of_card_amounts_comes_mostly_from_the_rare_wealthy_segment(world):
    pay = of_type(world["events"], "card_payment").merge(world["users"][["user_id", "segment"]], on="user_id")
    top = pay[pay["amount"] >= pay["amount"].quantile(0.99)]
    hnw_users = (world["users"]["segment"] == "high_net_worth").mean()
    assert hnw_users < 0.08
    assert (top["segment"] == "high_net_worth").mean() > 0.4


def test_offers_are_shown_at_login_and_responses_follow_them(world):
    ev = world["events"]
    shown, clicks, buys = (of_type(ev, t) for t in ("offer_shown", "offer_click", "offer_purchase"))
    logins = of_type(ev, "login")[["user_id", "timestamp"]].sort_values("timestamp")
    at_login = pd.merge_asof(shown.sort_values("timestamp"), logins, on="timestamp", by="user_id",
                             direction="backward", tolerance=pd.Timedelta(seconds=21))
    assert len(shown) > 0 and at_login.shape[0] == len(shown)
    prev = shown[["user_id", "timestamp", "product"]].rename(columns={"product": "shown_product"})
    matched = pd.merge_asof(clicks.sort_values("timestamp"), prev.sort_values("timestamp"), on="timestamp",
                            by="user_id", direction="backward", tolerance=pd.Timedelta(minutes=4))
    assert (matched["shown_product"].astype(str) == matched["product"].astype(str)).mean() > 0.99
    assert 0.03 < len(clicks) / len(shown) < 0.2
    assert 0.1 < len(buys) / len(clicks) < 0.5


def test_click_rate_falls_with_fatigue(world):
    shown = of_type(world["events"], "offer_shown").copy()
    clicks = of_type(world["events"], "offer_click")
    shown["nth"] = shown.groupby(["user_id", "product"], observed=True).cumcount()
    key = ["user_id", "product", "timestamp"]
    clicked = pd.merge_asof(clicks.sort_values("timestamp")[["user_id", "product", "timestamp"]]
                            .assign(click=1).astype({"product": str}),
                            shown.sort_values("timestamp")[key + ["nth"]].astype({"product": str}),
                            on="timestamp", by=["user_id", "product"], direction="backward")
    ctr = clicked.groupby("nth").size() / shown.groupby("nth").size()
    assert ctr.iloc[0] > 1.3 * ctr.iloc[5:15].mean()


def test_mortgage_inquiries_are_followed_by_home_insurance_interest_within_90_days(world):
    inq = of_type(world["events"], "product_inquiry")
    mortgage = inq[inq["product"] == "mortgage"]
    insurance = inq[inq["product"] == "home_insurance"]
    cutoff = pd.Timestamp("2025-10-01", tz="UTC")  # leave 90 days to observe the follow-up
    first = mortgage[mortgage["timestamp"] < cutoff].groupby("user_id")["timestamp"].min()
    assert len(first) > 40
    ins = insurance.groupby("user_id")["timestamp"].apply(list)
    followed = [any(t < s <= t + pd.Timedelta(days=90) for s in ins.get(u, [])) for u, t in first.items()]
    base_users = world["users"]["user_id"][~world["users"]["user_id"].isin(mortgage["user_id"])]
    background = insurance["user_id"].isin(base_users).sum() / len(base_users) * 90 / 365
    assert np.mean(followed) > 0.4
    assert background < 0.05


def test_account_closed_is_terminal_and_most_users_are_censored(world):
    ev = world["events"]
    closed = of_type(ev, "account_closed")
    assert closed["user_id"].is_unique
    last = ev.groupby("user_id").tail(1)
    assert set(closed.index) <= set(last.index)  # nothing after account_closed
    assert 0.03 < closed["user_id"].nunique() / len(world["users"]) < 0.3


def test_downturn_lowers_spending_and_raises_churn(world):
    macro = world["macro"].set_index("date")["macro_index"]
    assert macro.min() < 90 and (macro > 97).mean() > 0.5
    ev = world["events"]
    day = ev["timestamp"].dt.tz_localize(None).dt.normalize()
    closed_day = of_type(ev, "account_closed").assign(day=day).set_index("user_id")["day"]
    days = pd.DatetimeIndex(macro.index)
    payments = of_type(ev, "card_payment").assign(day=day).groupby("day").size().reindex(days, fill_value=0)
    closures = closed_day.value_counts().reindex(days, fill_value=0)
    alive = len(world["users"]) - closures.cumsum().shift(1, fill_value=0).to_numpy()  # closing day counts
    trough = macro.to_numpy() < 92
    calm = (macro.to_numpy() > 98) & ~((days.month == 12) | ((days.month == 11) & (days.day >= 25)))
    rate = payments.to_numpy() / alive
    assert rate[trough].mean() < 0.85 * rate[calm].mean()
    churn = closures.to_numpy() / alive
    assert churn[macro.to_numpy() < 95].mean() > 1.3 * churn[calm].mean()


@pytest.mark.parametrize("day,expected", [("2025-05-31", "2025-05-30"), ("2025-08-31", "2025-08-29")])
def test_weekend_paydays_move_back_to_friday(day, expected):
    cal = build_calendar(pd.Timestamp("2025-01-01").date(), 365, np.random.default_rng(0))
    last_day_option = 5  # PAYDAY_DAYS[5] == 31: last day of the month
    paid = cal.dates[cal.monthly_payday[last_day_option]]
    assert np.datetime64(expected) in paid and np.datetime64(day) not in paid


def test_the_pay_schedule_law_catches_a_customer_who_switches_schedule(world):
    from twinsim.simulator.reference_world.fidelity import compare_laws, law_statistics

    real = world["events"]
    assert law_statistics(real)["pay_schedule_kept_share"] == 1.0
    # a fortnightly customer who skips one payday (28 days) and is paid monthly from then on
    paydays = pd.Timestamp("2025-01-03 04:00", tz="UTC") + pd.to_timedelta(
        np.cumsum([0, 14, 14, 28, 30, 31, 30]), unit="D")
    steady = pd.Timestamp("2025-01-31 04:00", tz="UTC") + pd.to_timedelta([0, 28, 31, 30], unit="D")
    events = pd.DataFrame({"user_id": ["a"] * 7 + ["b"] * 4, "timestamp": paydays.append(steady),
                           "event_type": "income", "amount": 1000.0}).reindex(columns=real.columns)
    assert law_statistics(events)["pay_schedule_kept_share"] == 0.5
    check = next(c for c in compare_laws(real, events) if c.law == "pay_schedule_kept_share")
    assert not check.passed


def test_the_income_count_law_catches_customers_paid_once_too_often(world):
    """A customer who moves to a payday a day or two away mid-year gets 13 monthly incomes (or 11); every
    gap still looks monthly, so only the count per customer shows it."""
    from twinsim.simulator.reference_world.fidelity import compare_laws

    real = world["events"]
    same = next(c for c in compare_laws(real, real) if c.law == "income_count_tvd")
    assert same.synthetic == 0.0 and same.passed
    income = real[real["event_type"].astype(str) == "income"]
    extra = income.groupby("user_id", observed=True).head(1).assign(
        timestamp=lambda d: d["timestamp"] + pd.Timedelta(days=1))
    moved = pd.concat([real, extra], ignore_index=True)
    check = next(c for c in compare_laws(real, moved) if c.law == "income_count_tvd")
    assert check.synthetic > 0.5 and not check.passed


def test_the_short_gap_law_catches_events_that_come_too_soon(world):
    """A generator that lets one card payment in five follow another within two minutes (real customers
    rarely pay twice in ten minutes) fails the share of gaps under ten minutes."""
    from twinsim.simulator.reference_world.fidelity import compare_laws

    real = world["events"]
    same = next(c for c in compare_laws(real, real) if c.law == "short_gap_share")
    assert 0.0 < same.real < 1.0 and same.passed
    pay = real[real["event_type"].astype(str) == "card_payment"]
    echo = pay.iloc[::5].assign(timestamp=lambda d: d["timestamp"] + pd.Timedelta(minutes=2))
    check = next(c for c in compare_laws(real, pd.concat([real, echo], ignore_index=True))
                 if c.law == "short_gap_share")
    assert check.synthetic > 1.05 * check.real and not check.passed


def test_a_customer_is_the_same_whoever_else_is_in_the_world(tmp_path):
    """Every draw is the customer's own (streams.py): the first 300 customers of a 500-customer world are the
    300-customer world, events and users alike."""
    for users in (300, 500):
        generate_reference_world(WorldConfig(users=users, days=60, seed=3), tmp_path / str(users))
    small, large = ({t: pd.read_parquet(tmp_path / d / f"{t}.parquet") for t in ("events", "users")}
                    for d in ("300", "500"))
    for table in (small, large):
        for frame in table.values():
            frame["user_id"] = frame["user_id"].astype(str)
    first = set(small["users"]["user_id"])
    pd.testing.assert_frame_equal(small["users"], large["users"].iloc[:300])
    pd.testing.assert_frame_equal(small["events"],
                                  large["events"][large["events"]["user_id"].isin(first)].reset_index(drop=True))
    assert large["events"]["user_id"].nunique() > 450


def test_the_inverse_cdf_draws_follow_their_distributions():
    from scipy import stats

    from twinsim.simulator.reference_world import streams as st

    u = st.Streams(seed=9, first_id=0).draw(st.DAILY, np.arange(200_000), day=4, n=4)
    rate = np.full(len(u), 2.5)
    counts = st.poisson(rate, u[:, 0])
    assert abs(counts.mean() - 2.5) < 0.02 and abs(counts.var() - 2.5) < 0.05
    assert stats.kstest(st.normal(u[:, 1]), "norm").pvalue > 1e-3
    assert stats.kstest(st.gamma(u[:, 2], 3.0, 10.0), "gamma", args=(3.0, 0, 10.0)).pvalue > 1e-3
    assert stats.kstest(st.pareto(u[:, 3], 2.5), "lomax", args=(2.5,)).pvalue > 1e-3
    # two columns of one draw, and the same column of two days, are independent
    other_day = st.Streams(seed=9, first_id=0).draw(st.DAILY, np.arange(200_000), day=5, n=1)[:, 0]
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.01 and abs(np.corrcoef(u[:, 0], other_day)[0, 1]) < 0.01
