"""Does a dataset obey the reference world's laws? Statistics per law, and real-vs-synthetic checks.

Used to show that a model trained on the reference world reproduces its behaviour (issue: generated
data must reproduce paydays, weekly rhythm, seasonal peaks, offer response rates, life-stage chains,
churn as a terminal event and the rare top-1 % amounts). Works on any events table in the contract
that uses the reference world's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _of(events: pd.DataFrame, event_type: str) -> pd.DataFrame:
    return events[events["event_type"].astype(str) == event_type]


def law_statistics(events: pd.DataFrame) -> dict[str, float]:
    """One number per law (see docs/reference-world.md); NaN where the data has no such events."""
    ev = events.assign(user_id=events["user_id"].astype(str))
    stats: dict[str, float] = {}
    income = _of(ev, "income").sort_values(["user_id", "timestamp"])
    gaps = income.groupby("user_id")["timestamp"].diff().dropna() / pd.Timedelta(days=1)
    fortnightly, monthly = gaps.between(12.5, 15.5), gaps.between(25.5, 35.5)
    stats["payday_gap_regular_share"] = float((fortnightly | monthly).mean())
    # a customer is paid fortnightly or monthly all year, never both (a fortnightly payday skipped makes a
    # monthly-length gap)
    user = income.loc[gaps.index, "user_id"]
    both = fortnightly.groupby(user).any() & monthly.groupby(user).any()
    kept = ~both[gaps.groupby(user).size() >= 2]
    stats["pay_schedule_kept_share"] = float(kept.mean()) if len(kept) else float("nan")
    # how many incomes a customer who kept their account gets in the window: one schedule's count, all year
    closed = _of(ev, "account_closed")
    counts = income.groupby("user_id").size().reindex(ev["user_id"].unique(), fill_value=0)
    kept_account = counts[~counts.index.isin(closed["user_id"])]
    stats["income_count_profile"] = kept_account.value_counts(normalize=True).to_dict()
    stats["income_at_night_share"] = float(income["timestamp"].dt.hour.between(2, 6).mean())
    stats["income_on_weekend_share"] = float(income["timestamp"].dt.day_of_week.isin([5, 6]).mean())
    logins = _of(ev, "login")["timestamp"]
    per_day = logins.dt.day_of_week.value_counts().reindex(range(7), fill_value=0)
    stats["weekend_login_ratio"] = float(per_day[[5, 6]].mean() / max(per_day[[0, 1, 2, 3, 4]].mean(), 1))
    stats["login_hour_profile"] = logins.dt.hour.value_counts(normalize=True).reindex(range(24), fill_value=0).tolist()
    pay = _of(ev, "card_payment")
    month = pay["timestamp"].dt.month
    merchant = pay["merchant_category"].astype(str)
    gift, travel = (merchant == "gift_cards").groupby(month).mean(), (merchant == "travel").groupby(month).mean()
    stats["december_gift_card_lift"] = _ratio(gift.get(12), gift.reindex(range(3, 11)).mean())
    stats["july_travel_lift"] = _ratio(travel.get(7), travel.reindex([3, 4, 10]).mean())
    shown, clicks, buys = (len(_of(ev, t)) for t in ("offer_shown", "offer_click", "offer_purchase"))
    stats["click_rate"] = _ratio(clicks, shown)
    stats["purchase_per_click"] = _ratio(buys, clicks)
    stats["home_insurance_after_mortgage"], stats["home_insurance_background"] = _chain(ev)
    ordered = ev.sort_values(["user_id", "timestamp"])
    last = ordered.groupby("user_id").tail(1)
    stats["closed_is_last_share"] = _ratio(closed.index.isin(last.index).sum(), len(closed))
    stats["closed_user_share"] = _ratio(closed["user_id"].nunique(), ev["user_id"].nunique())
    stats["events_per_user_median"] = float(ev.groupby("user_id").size().median())
    # how often a customer's next event comes within minutes (sessions: an offer seconds after a login)
    gaps = ordered.groupby("user_id")["timestamp"].diff().dropna()
    stats["short_gap_share"] = float((gaps < SHORT_GAP).mean()) if len(gaps) else float("nan")
    stats["card_amount_p99"] = float(pay["amount"].quantile(0.99)) if len(pay) else float("nan")
    by_merchant = pay.groupby(merchant)["amount"]
    stats["card_amount_median_by_merchant"] = by_merchant.median()[by_merchant.size() >= MIN_PAYMENTS].to_dict()
    return stats


MIN_PAYMENTS = 50  # merchant categories with fewer card payments are not judged on their median amount
SHORT_GAP = pd.Timedelta(minutes=10)


def _ratio(a, b) -> float:
    return float(a) / float(b) if b and not pd.isna(b) and a is not None and not pd.isna(a) else float("nan")


def _chain(ev: pd.DataFrame) -> tuple[float, float]:
    """P(home-insurance inquiry within 90 days of a user's first mortgage inquiry), and the background
    rate of a home-insurance inquiry in any 90 days for users without a mortgage inquiry."""
    inquiries = _of(ev, "product_inquiry")
    product = inquiries["product"].astype(str)
    mortgage, insurance = inquiries[product == "mortgage"], inquiries[product == "home_insurance"]
    end = ev["timestamp"].max()
    first = mortgage.groupby("user_id")["timestamp"].min()
    first = first[first <= end - pd.Timedelta(days=90)]
    if len(first) == 0:
        return float("nan"), float("nan")
    joined = insurance.merge(first.rename("mortgage_at"), left_on="user_id", right_index=True)
    delay = joined["timestamp"] - joined["mortgage_at"]
    followed = joined.loc[(delay > pd.Timedelta(0)) & (delay <= pd.Timedelta(days=90)), "user_id"].nunique()
    others = ev.loc[~ev["user_id"].isin(mortgage["user_id"]), "user_id"].nunique()
    span_days = (end - ev["timestamp"].min()) / pd.Timedelta(days=1)
    background = _ratio((~insurance["user_id"].isin(mortgage["user_id"])).sum(), others)
    return followed / len(first), background * 90 / max(span_days, 1)


def _tvd(p: dict, q: dict) -> float:
    """Total variation distance between two distributions given as {value: share}."""
    return 0.5 * float(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)))


def top_coverage(real: pd.Series, synthetic: pd.Series, quantile: float = 0.99) -> float:
    """Share of synthetic values above the real ``quantile``, relative to the real share (1.0 ideal)."""
    threshold = real.quantile(quantile)
    return float((synthetic > threshold).mean() / max((real > threshold).mean(), 1e-12))


@dataclass
class LawCheck:
    law: str
    real: float
    synthetic: float
    rule: str
    passed: bool


def compare_laws(real: pd.DataFrame, synthetic: pd.DataFrame) -> list[LawCheck]:
    """Each law's statistic on real and synthetic events, with the pass rule the project commits to."""
    r, s = law_statistics(real), law_statistics(synthetic)
    checks = []

    def rel(name: str, tolerance: float) -> None:
        ok = bool(abs(s[name] - r[name]) <= tolerance * abs(r[name]))
        checks.append(LawCheck(name, r[name], s[name], f"within +/-{tolerance:.0%} relative", ok))

    def at_least(name: str, share: float) -> None:
        checks.append(LawCheck(name, r[name], s[name], f">= {share:.0%} of real",
                               bool(s[name] >= share * r[name])))

    at_least("payday_gap_regular_share", 0.9)
    at_least("pay_schedule_kept_share", 0.95)
    count_tvd = _tvd(r["income_count_profile"], s["income_count_profile"])
    checks.append(LawCheck("income_count_tvd", 0.0, count_tvd, "<= 0.05", count_tvd <= 0.05))
    at_least("income_at_night_share", 0.9)
    rel("weekend_login_ratio", 0.1)
    hour_tvd = _tvd(dict(enumerate(r["login_hour_profile"])), dict(enumerate(s["login_hour_profile"])))
    checks.append(LawCheck("login_hour_tvd", 0.0, hour_tvd, "<= 0.10", hour_tvd <= 0.10))
    for name in ("december_gift_card_lift", "july_travel_lift"):
        checks.append(LawCheck(name, r[name], s[name], "> 2 and within +/-50% relative",
                               bool(s[name] > 2 and abs(s[name] - r[name]) <= 0.5 * r[name])))
    rel("click_rate", 0.1)
    rel("purchase_per_click", 0.1)
    lift = _ratio(s["home_insurance_after_mortgage"], s["home_insurance_background"])
    checks.append(LawCheck("home_insurance_after_mortgage", r["home_insurance_after_mortgage"],
                           s["home_insurance_after_mortgage"], "within +/-25% relative and > 3x background",
                           bool(abs(s["home_insurance_after_mortgage"] - r["home_insurance_after_mortgage"])
                                <= 0.25 * r["home_insurance_after_mortgage"] and lift > 3)))
    checks.append(LawCheck("closed_is_last_share", r["closed_is_last_share"], s["closed_is_last_share"], "== 1",
                           s["closed_is_last_share"] == 1.0))
    rel("closed_user_share", 0.25)
    rel("events_per_user_median", 0.15)
    rel("short_gap_share", 0.05)
    pay_r, pay_s = _of(real, "card_payment")["amount"], _of(synthetic, "card_payment")["amount"]
    coverage = top_coverage(pay_r, pay_s)
    checks.append(LawCheck("card_amount_top1_coverage", 1.0, coverage, "80-120 %", 0.8 <= coverage <= 1.2))
    real_median, syn_median = r["card_amount_median_by_merchant"], s["card_amount_median_by_merchant"]
    within = [abs(syn_median.get(m, np.nan) - v) <= 0.25 * v for m, v in real_median.items()]
    share = float(np.mean(within)) if within else float("nan")
    checks.append(LawCheck("merchant_amount_medians", 1.0, share,
                           ">= 80% of categories within +/-25%", bool(share >= 0.8)))
    return checks


def format_checks(checks: list[LawCheck]) -> str:
    lines = [f"{'law':<32}{'real':>10}{'synthetic':>11}  {'rule':<42}result"]
    for c in checks:
        lines.append(f"{c.law:<32}{c.real:>10.4g}{c.synthetic:>11.4g}  {c.rule:<42}{'pass' if c.passed else 'FAIL'}")
    return "\n".join(lines)
