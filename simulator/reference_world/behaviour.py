"""The day-stepped agent-based simulation of one chunk of reference-world customers.

Every law in ``laws.py`` is applied here to all users of the chunk at once, one day at a time. Events
are collected as integer codes and turned into an Arrow table at the end of the chunk.

Prefix stability: the chunk's random stream is consumed strictly day by day, and every draw an event
needs (its sub-second jitter included) is made on the day the event happens. What day t draws therefore
depends only on days 0..t, never on how many days the window has after t, so the first D days of a
longer world are exactly a D-day world. Per-user or per-day streams would give the same guarantee but
cost the vectorisation over users; one sequential stream per chunk keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world.calendar import Calendar
from twinsim.simulator.reference_world.population import Population

DAY = 86_400
E = {name: i for i, name in enumerate(laws.EVENT_TYPES)}
P = {name: i for i, name in enumerate(laws.PRODUCTS)}
M = {name: i for i, name in enumerate(laws.MERCHANTS)}


def _hour_cdf(bumps) -> np.ndarray:
    hours = np.arange(24) + 0.5
    density = 0.01 + sum(w * np.exp(-0.5 * ((hours - c) / s) ** 2) / s for c, s, w in bumps)
    return np.cumsum(density) / density.sum()


LOGIN_HOUR_CDF = np.stack([_hour_cdf(laws.LOGIN_HOUR_BUMPS[s]) for s in laws.SEGMENTS])
SPEND_HOUR_CDF = _hour_cdf(laws.SPEND_HOUR_BUMPS)


def _merchant_cdfs() -> np.ndarray:
    """(season: normal / gift / summer, segment, merchant) cumulative merchant mix."""
    normal = laws.MERCHANT_P.copy()
    gift = normal.copy()
    gift[:, M["gift_cards"]] *= laws.GIFT_CARD_BOOST
    gift[:, M["retail"]] *= laws.GIFT_SEASON_RETAIL_BOOST
    summer = normal.copy()
    summer[:, M["travel"]] *= laws.SUMMER_TRAVEL_BOOST
    mixes = np.stack([normal, gift, summer])
    return np.cumsum(mixes / mixes.sum(axis=2, keepdims=True), axis=2)


MERCHANT_CDF = _merchant_cdfs()
OFFER_CDF = np.cumsum(laws.OFFER_TARGETING, axis=1)
CHANNEL_CDF = np.cumsum(laws.CHANNEL_P, axis=1)
TAIL_MERCHANT = np.isin(laws.MERCHANTS, laws.HNW_TAIL_MERCHANTS)
HNW = laws.SEGMENTS.index("high_net_worth")


class EventBuffer:
    """Collects events as arrays of codes; ``-1`` marks an empty categorical, NaN an empty amount.

    Each event also gets its sub-second jitter (microseconds) from ``rng`` as it is added: drawn at the end
    of the chunk instead, it would depend on how many events the whole window has (not prefix-stable).
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, user, seconds, event: str, amount=None, channel=None, merchant=None, product=None) -> None:
        n = len(user)
        if n == 0:
            return

        def codes(values):
            return np.full(n, -1, np.int8) if values is None else np.asarray(values, np.int8)

        self._parts.append((
            np.asarray(user, np.int64),
            np.asarray(seconds, np.int64),
            np.full(n, E[event], np.int8),
            np.full(n, np.nan) if amount is None else np.round(np.asarray(amount, np.float64), 2),
            codes(channel),
            codes(merchant),
            codes(product),
            self._rng.integers(0, 1_000_000, n, dtype=np.int32),
        ))

    def columns(self) -> tuple[np.ndarray, ...]:
        if not self._parts:
            dtypes = (np.int64, np.int64, np.int8, np.float64, np.int8, np.int8, np.int8, np.int32)
            return tuple(np.empty(0, dt) for dt in dtypes)
        return tuple(np.concatenate(col) for col in zip(*self._parts, strict=True))


def _sample_cdf(rng: np.random.Generator, cdf_rows: np.ndarray) -> np.ndarray:
    """One draw per row from row-wise cumulative distributions."""
    return np.minimum((cdf_rows < rng.random(len(cdf_rows))[:, None]).sum(axis=1), cdf_rows.shape[1] - 1)


def _clock(rng: np.random.Generator, day: int, hour_cdf_rows: np.ndarray) -> np.ndarray:
    """Seconds since the window start for events on ``day`` with hours drawn from the given CDF rows."""
    hour = _sample_cdf(rng, hour_cdf_rows)
    return day * DAY + hour * 3600 + rng.integers(0, 3600, len(hour))


def _session_channel(rng: np.random.Generator, pop: Population, users: np.ndarray) -> np.ndarray:
    preferred = pop.channel[users]
    other = _sample_cdf(rng, CHANNEL_CDF[pop.segment[users]])
    return np.where(rng.random(len(users)) < laws.PREFERRED_CHANNEL_USE, preferred, other)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_chunk(
    pop: Population, cal: Calendar, rng: np.random.Generator, on_day: Callable[[int], None] | None = None
) -> pa.Table:
    """Simulate ``cal.days`` days of the users in ``pop``; returns their events sorted by user and time."""
    n, n_products = len(pop), len(laws.PRODUCTS)
    idx = np.arange(n)
    seg = pop.segment
    out = EventBuffer(rng)
    log_engagement = np.zeros(n)
    balance = pop.monthly_income * rng.uniform(*laws.START_BALANCE_MONTHS, n)
    overdraft_limit = laws.OVERDRAFT_LIMIT_MONTHS * pop.monthly_income
    friction = np.zeros(n)
    fatigue = np.zeros((n, n_products))
    last_click = np.full((n, n_products), -10_000)
    affinity = pop.affinity.copy()
    chain_opened = np.full(n, -10_000)  # day of the last mortgage inquiry
    insurance_due = np.full(n, -1)  # day a chained home-insurance inquiry is due (-1: none)
    last_fee = np.full(n, -10_000)
    closed_at = np.full(n, np.iinfo(np.int64).max)
    alive = np.ones(n, dtype=bool)
    pay_amount = np.where(pop.biweekly, pop.monthly_income * 12 / 26, pop.monthly_income)

    for day in range(cal.days):
        wd = cal.weekday[day]
        macro = cal.macro_index[day] / 100.0
        log_engagement += -laws.ENGAGEMENT_REVERSION * log_engagement + rng.normal(0, laws.ENGAGEMENT_NOISE, n)
        engagement = np.exp(log_engagement)
        fatigue *= laws.FATIGUE_DECAY
        friction *= laws.FRICTION_DECAY

        # Income on the user's own payday.
        payday = np.where(pop.biweekly, cal.biweekly_payday[pop.pay_option.clip(0, 1), day],
                          cal.monthly_payday[pop.pay_option, day]) & alive
        paid = idx[payday]
        income = pay_amount[paid] * (1 + rng.normal(0, laws.INCOME_NOISE_SD, len(paid)))
        out.add(paid, day * DAY + rng.integers(laws.INCOME_HOURS[0] * 3600, laws.INCOME_HOURS[1] * 3600, len(paid)),
                "income", amount=income)
        balance[paid] += income

        # Logins: personal rate x engagement x weekday rhythm, more on payday.
        rate = pop.login_rate * engagement * laws.LOGIN_WEEKDAY[wd] * np.where(payday, laws.PAYDAY_LOGIN_BOOST, 1.0)
        login_user = np.repeat(idx, rng.poisson(rate) * alive)
        login_time = _clock(rng, day, LOGIN_HOUR_CDF[seg[login_user]])
        login_channel = _session_channel(rng, pop, login_user)
        out.add(login_user, login_time, "login", channel=login_channel)

        # Offers shown at login; click and purchase depend on preference, fatigue, recency and chains.
        shown = rng.random(len(login_user)) < laws.OFFER_SHOW_P
        su, st, sc = login_user[shown], login_time[shown] + rng.integers(1, 21, shown.sum()), login_channel[shown]
        offer = _sample_cdf(rng, OFFER_CDF[seg[su]])
        logit = (laws.CLICK_BASE + affinity[su, offer]
                 - laws.CLICK_FATIGUE_SAME * fatigue[su, offer]
                 - laws.CLICK_FATIGUE_ANY * fatigue[su].sum(axis=1)
                 - laws.CLICK_RECENCY_PENALTY * (day - last_click[su, offer] < laws.RECENCY_DAYS)
                 + laws.HOME_INSURANCE_CHAIN_AFFINITY * ((offer == P["home_insurance"])
                                                         & (day - chain_opened[su] <= laws.CHAIN_WINDOW_DAYS)))
        click = rng.random(len(su)) < _sigmoid(logit)
        buy_p = _sigmoid(laws.PURCHASE_BASE + laws.PURCHASE_AFFINITY * affinity[su, offer])
        buy = click & (rng.random(len(su)) < buy_p)
        click_time = st + rng.integers(5, 181, len(su))
        buy_time = click_time + rng.integers(60, 1801, len(su))
        out.add(su, st, "offer_shown", channel=sc, product=offer)
        out.add(su[click], click_time[click], "offer_click", channel=sc[click], product=offer[click])
        out.add(su[buy], buy_time[buy], "offer_purchase", channel=sc[buy], product=offer[buy])
        np.add.at(fatigue, (su, offer), 1.0)
        last_click[su[click], offer[click]] = day
        affinity[su[buy], offer[buy]] -= laws.OWNED_AFFINITY_DROP

        # Life-stage chain: mortgage inquiries (spontaneous or after a mortgage click) open a window in
        # which home-insurance interest follows.
        after_click = click & (offer == P["mortgage"]) & (rng.random(len(su)) < laws.MORTGAGE_INQUIRY_AFTER_CLICK)
        spontaneous = idx[alive & (rng.random(n) < laws.MORTGAGE_INQUIRY_DAILY[seg])]
        mortgage_user = np.concatenate([su[after_click], spontaneous])
        mortgage_time = np.concatenate([click_time[after_click] + rng.integers(60, 601, after_click.sum()),
                                        _clock(rng, day, LOGIN_HOUR_CDF[seg[spontaneous]])])
        out.add(mortgage_user, mortgage_time, "product_inquiry", channel=_session_channel(rng, pop, mortgage_user),
                product=np.full(len(mortgage_user), P["mortgage"]))
        chain_opened[mortgage_user] = day
        follows = mortgage_user[rng.random(len(mortgage_user)) < laws.HOME_INSURANCE_FOLLOW_P]
        delay = np.ceil(rng.gamma(*laws.HOME_INSURANCE_DELAY_GAMMA, len(follows))).astype(int)
        due = np.minimum(day + delay, day + laws.CHAIN_WINDOW_DAYS)
        insurance_due[follows] = np.where(insurance_due[follows] > day, np.minimum(insurance_due[follows], due), due)
        insurer = idx[alive & ((insurance_due == day) | (rng.random(n) < laws.HOME_INSURANCE_INQUIRY_DAILY))]
        out.add(insurer, _clock(rng, day, LOGIN_HOUR_CDF[seg[insurer]]), "product_inquiry",
                channel=_session_channel(rng, pop, insurer), product=np.full(len(insurer), P["home_insurance"]))

        # Card payments: weekday rhythm, seasons and the macro index; users in overdraft hold back.
        season = 1 if cal.gift_season[day] else 2 if cal.summer_season[day] else 0
        spend = (pop.spend_rate * laws.SPEND_WEEKDAY[wd] * macro**laws.MACRO_SPEND_EXPONENT
                 * engagement**laws.SPEND_ENGAGEMENT_EXPONENT * np.where(balance < 0, laws.OVERDRAFT_SPEND_FACTOR, 1.0)
                 * (laws.GIFT_SEASON_SPEND if season == 1 else 1.0))
        tx_user = np.repeat(idx, rng.poisson(spend) * alive)
        merchant = _sample_cdf(rng, MERCHANT_CDF[season, seg[tx_user]])
        amount = (laws.AMOUNT_MEDIAN[merchant] * pop.amount_scale[tx_user]
                  * np.exp(rng.normal(0, 1, len(tx_user)) * laws.AMOUNT_SIGMA[merchant]))
        tail = TAIL_MERCHANT[merchant] & (seg[tx_user] == HNW)
        amount[tail] *= np.minimum(rng.pareto(laws.HNW_PARETO_ALPHA, tail.sum()) + 1.0, laws.HNW_PARETO_CAP)
        tx_time = _clock(rng, day, np.broadcast_to(SPEND_HOUR_CDF, (len(tx_user), 24)))
        declined = rng.random(len(tx_user)) < (laws.DECLINE_P + laws.DECLINE_P_OVER_LIMIT
                                               * (balance[tx_user] < -overdraft_limit[tx_user]))
        ok = ~declined
        out.add(tx_user[ok], tx_time[ok], "card_payment", amount=amount[ok], merchant=merchant[ok])
        out.add(tx_user[declined], tx_time[declined], "card_declined", amount=amount[declined],
                merchant=merchant[declined])
        balance -= np.bincount(tx_user[ok], weights=amount[ok], minlength=n) + pop.daily_outflow * alive
        friction += np.bincount(tx_user[declined], minlength=n)

        # An overdraft fee at the end of a day below zero, at most once a week.
        charged = idx[alive & (balance < 0) & (day - last_fee >= 7)]
        fee = rng.uniform(*laws.FEE_AMOUNT, len(charged))
        out.add(charged, day * DAY + rng.integers(23 * 3600 + 1800, DAY, len(charged)), "fee", amount=fee)
        balance[charged] -= fee
        friction[charged] += laws.FEE_FRICTION
        last_fee[charged] = day

        # Churn: a hazard raised by disengagement, friction, competitor pull and macro stress.
        hazard = laws.CHURN_BASE_DAILY[seg] * np.exp(
            laws.CHURN_DISENGAGEMENT * np.maximum(0.0, -log_engagement)
            + laws.CHURN_FRICTION * np.minimum(friction, laws.CHURN_FRICTION_CAP)
            + laws.CHURN_COMPETITOR * pop.competitor_pull
            + laws.CHURN_MACRO_STRESS * max(0.0, 1.0 - macro))
        leaving = idx[alive & (rng.random(n) < hazard)]
        leave_time = _clock(rng, day, LOGIN_HOUR_CDF[seg[leaving]])
        out.add(leaving, leave_time, "account_closed", channel=_session_channel(rng, pop, leaving))
        closed_at[leaving] = leave_time
        alive[leaving] = False
        if on_day is not None:
            on_day(day)

    return _to_table(out, pop, cal, closed_at)


def _to_table(out: EventBuffer, pop: Population, cal: Calendar, closed_at: np.ndarray) -> pa.Table:
    user, seconds, etype, amount, channel, merchant, product, jitter = out.columns()
    # Nothing follows account closure, and nothing spills past the end of the window (censoring).
    keep = (seconds <= closed_at[user]) & (seconds < cal.days * DAY)
    keep &= ~((seconds == closed_at[user]) & (etype != E["account_closed"]))
    user, seconds, etype, amount, channel, merchant, product, jitter = (
        c[keep] for c in (user, seconds, etype, amount, channel, merchant, product, jitter))
    # Sub-second jitter keeps two events of a user in the same second apart without reordering events
    # that are a second or more apart.
    micros = seconds * 1_000_000 + jitter
    order = np.lexsort((micros, user))
    user, micros, etype, amount, channel, merchant, product = (
        c[order] for c in (user, micros, etype, amount, channel, merchant, product))
    start_us = cal.dates[0].astype("datetime64[us]").astype(np.int64)

    def labels(codes, vocabulary):
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=codes < 0), pa.array(vocabulary))

    return pa.table({
        "user_id": pa.DictionaryArray.from_arrays(pa.array(user.astype(np.int32)), pa.array(pop.user_ids())),
        "timestamp": pa.array(start_us + micros, pa.timestamp("us", tz="UTC")),
        "event_type": labels(etype, laws.EVENT_TYPES),
        "amount": pa.array(amount, pa.float64(), from_pandas=True),
        "channel": labels(channel, laws.CHANNELS),
        "merchant_category": labels(merchant, laws.MERCHANTS),
        "product": labels(product, laws.PRODUCTS),
    })
