"""The day-stepped agent-based simulation of one chunk of reference-world customers.

Every law in ``laws.py`` is applied here to all users of the chunk at once, one day at a time. Events
are collected as integer codes and turned into an Arrow table at the end of the chunk.

Randomness: every number is drawn from the customer's own stream (``streams.py``), keyed by the day, what
is drawn and which of the day's draws it is (the third login, the second card payment), so nothing one
customer does moves another customer's numbers. That pairs a baseline world with a scenario world
(customers a scenario never touches are identical in both) and makes the world prefix-stable: what day
t draws never depends on how many days the window has after t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world import streams as st
from twinsim.simulator.reference_world.calendar import Calendar
from twinsim.simulator.reference_world.population import Population
from twinsim.simulator.reference_world.streams import Streams

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


N_OFFER_DRAWS = 18  # columns of an OFFER / CAMPAIGN_OFFER draw (see Chunk.respond)


class EventBuffer:
    """Collects events as arrays of codes; ``-1`` marks an empty categorical, NaN an empty amount.

    Each event carries its own sub-second jitter (a uniform of the event's own draw, in microseconds) and
    the index of the campaign whose exposure it is (``-1`` for all other events).
    """

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, user, seconds, event: str, jitter, amount=None, channel=None, merchant=None, product=None,
            campaign: int = -1) -> None:
        n = len(user)
        if n == 0:
            return

        def codes(values):
            return np.full(n, -1, np.int8) if values is None else np.asarray(values, np.int8)

        self.parts.append((
            np.asarray(user, np.int64),
            np.asarray(seconds, np.int64),
            np.full(n, E[event], np.int8),
            np.full(n, np.nan) if amount is None else np.round(np.asarray(amount, np.float64), 2),
            codes(channel),
            codes(merchant),
            codes(product),
            (np.asarray(jitter) * 1_000_000).astype(np.int32),
            np.full(n, campaign, np.int8),
        ))

    def columns(self, since: int = 0) -> tuple[np.ndarray, ...]:
        """The events added since part number ``since``, column by column."""
        parts = self.parts[since:]
        if not parts:
            dtypes = (np.int64, np.int64, np.int8, np.float64, np.int8, np.int8, np.int8, np.int32, np.int8)
            return tuple(np.empty(0, dt) for dt in dtypes)
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _clock(day: int, u_hour: np.ndarray, u_second: np.ndarray, hour_cdf) -> np.ndarray:
    """Seconds since the window start for events on ``day`` with hours drawn from the given CDF (rows)."""
    return day * DAY + st.categorical(u_hour, hour_cdf) * 3600 + st.integers(u_second, 0, 3600)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class DayAgent(Protocol):
    """Something that acts on the chunk at the end of each day, after its own behaviour (a scenario)."""

    def on_day(self, chunk: Chunk, day: int, first_part: int) -> None: ...


class Logins(NamedTuple):
    """A day's logins in the order they are drawn: chunk-local ``user``, ``j`` (the login of the day),
    ``seconds`` since the window start, ``channel`` and ``u_show`` (the draw that makes it an offer slot)."""

    user: np.ndarray
    j: np.ndarray
    seconds: np.ndarray
    channel: np.ndarray
    u_show: np.ndarray


class Slots(NamedTuple):
    """Decision points (logins with an offer slot) in login order, with the draws of their offer
    (``u``: N_OFFER_DRAWS each, streams.OFFER) and the time the offer is shown (``seconds``; ``micros``
    adds the sub-second jitter the offer_shown event gets)."""

    user: np.ndarray
    seconds: np.ndarray
    micros: np.ndarray
    channel: np.ndarray
    u: np.ndarray


class Decisions:
    """Every decision point of a chunk: who, when, what was shown (product code, -1: nothing), with which
    propensity (NaN: not given), why a fallback was taken (None: the policy answered), the latency of a
    remote call (NaN: none) and which policy decided (an index into ``names``)."""

    def __init__(self, n: int) -> None:
        self.count = np.zeros(n, np.int64)  # decisions so far, per customer
        self.names: list[str] = []
        self.parts: list[tuple[np.ndarray, ...]] = []

    def number(self, user: np.ndarray, micros: np.ndarray) -> np.ndarray:
        """The run's decision number of each new decision point (per customer, in time order); counts them."""
        order = np.lexsort((micros, user))
        counts = np.bincount(user, minlength=len(self.count))
        n = np.empty(len(user), np.int64)
        n[order] = self.count[user[order]] + st.nth(counts[counts > 0])
        self.count += counts
        return n

    def add(self, slots: Slots, n: np.ndarray, product: np.ndarray, propensity: np.ndarray, policy: str,
            failure: np.ndarray | None = None, latency_ms: np.ndarray | None = None) -> None:
        if policy not in self.names:
            self.names.append(policy)
        k = len(slots.user)
        self.parts.append((slots.user, n, slots.micros, np.asarray(product, np.int8),
                           np.asarray(propensity, np.float64),
                           np.full(k, None, object) if failure is None else np.asarray(failure, object),
                           np.full(k, np.nan) if latency_ms is None else np.asarray(latency_ms, np.float64),
                           np.full(k, self.names.index(policy), np.int16)))

    def table(self, pop: Population, cal: Calendar, closed_at: np.ndarray) -> pa.Table:
        """The decisions table (docs/reference-world.md), sorted by user and time; censored like the events
        (nothing at or after the customer's closure, nothing past the window's end)."""
        empty = (np.int64, np.int64, np.int64, np.int8, np.float64, object, np.float64, np.int16)
        user, n, micros, product, propensity, failure, latency, policy = (
            tuple(np.concatenate(c) for c in zip(*self.parts, strict=True)) if self.parts
            else tuple(np.empty(0, dt) for dt in empty))
        seconds = micros // 1_000_000
        keep = (seconds < closed_at[user]) & (seconds < cal.days * DAY)
        order = np.lexsort((micros[keep], user[keep]))
        user, n, micros, product, propensity, failure, latency, policy = (
            c[keep][order] for c in (user, n, micros, product, propensity, failure, latency, policy))
        ids = np.asarray(pop.user_ids(), dtype=object)
        start_us = cal.dates[0].astype("datetime64[us]").astype(np.int64)
        return pa.table({
            "user_id": pa.DictionaryArray.from_arrays(pa.array(user.astype(np.int32)), pa.array(pop.user_ids())),
            "request_id": pa.array([f"{u}:{k}" for u, k in zip(ids[user], n, strict=True)], pa.string()),
            "timestamp": pa.array(start_us + micros, pa.timestamp("us", tz="UTC")),
            "product": pa.array(np.asarray(laws.PRODUCTS, dtype=object)[product], pa.string(), mask=product < 0),
            "propensity": pa.array(propensity, pa.float64(), from_pandas=True),
            "failure": pa.array(failure, pa.string()),
            "latency_ms": pa.array(latency, pa.float64(), from_pandas=True),
            "policy": pa.array(np.asarray(self.names or [""], dtype=object)[policy], pa.string()),
        })


class WorldOffers:
    """The bank's own logging policy: an offer at a share ``laws.OFFER_SHOW_P`` of logins (each login's own
    draw), its product drawn by segment (OFFER_CDF), logged with the probability the targeting gave it."""

    name = "logged"

    def at_logins(self, chunk: Chunk, day: int, logins: Logins) -> None:
        slots = chunk.slots(day, logins, laws.OFFER_SHOW_P)
        offer, propensity = chunk.targeted(slots)
        chunk.decisions.add(slots, chunk.decisions.number(slots.user, slots.micros), offer, propensity, self.name)
        chunk.respond(day, slots.user, slots.seconds, slots.channel, offer, slots.u)


class OfferPolicy(Protocol):
    """What shows offers at a day's logins (``WorldOffers``, or ``policy.PolicyOffers``)."""

    def at_logins(self, chunk: Chunk, day: int, logins: Logins) -> None: ...


class Chunk:
    """The hidden state of one chunk of customers, stepped a day at a time by ``step``; ``offers`` shows
    the offers at logins (default: the bank's own targeting)."""

    def __init__(self, pop: Population, cal: Calendar, streams: Streams, offers: OfferPolicy | None = None) -> None:
        n = len(pop)
        self.pop, self.cal, self.streams, self.n = pop, cal, streams, n
        self.offers = offers if offers is not None else WorldOffers()
        self.decisions = Decisions(n)
        self.idx = np.arange(n)
        self.out = EventBuffer()
        self.log_engagement = np.zeros(n)
        self.balance = pop.start_balance.copy()
        self.overdraft_limit = laws.OVERDRAFT_LIMIT_MONTHS * pop.monthly_income
        self.friction = np.zeros(n)
        self.fatigue = np.zeros((n, len(laws.PRODUCTS)))
        self.last_click = np.full((n, len(laws.PRODUCTS)), -10_000)
        self.affinity = pop.affinity.copy()
        self.chain_opened = np.full(n, -10_000)  # day of the last mortgage inquiry
        self.insurance_due = np.full(n, -1)  # day a chained home-insurance inquiry is due (-1: none)
        self.last_fee = np.full(n, -10_000)
        self.closed_at = np.full(n, np.iinfo(np.int64).max)
        self.alive = np.ones(n, dtype=bool)
        self.pay_amount = np.where(pop.biweekly, pop.monthly_income * 12 / 26, pop.monthly_income)

    def session_channel(self, users: np.ndarray, u_preferred: np.ndarray, u_other: np.ndarray) -> np.ndarray:
        other = st.categorical(u_other, CHANNEL_CDF[self.pop.segment[users]])
        return np.where(u_preferred < laws.PREFERRED_CHANNEL_USE, self.pop.channel[users], other)

    def step(self, day: int) -> None:
        """One day of every law, in the order of docs/reference-world.md."""
        pop, cal, out, idx, alive, seg = self.pop, self.cal, self.out, self.idx, self.alive, self.pop.segment
        wd = cal.weekday[day]
        macro = cal.macro_index[day] / 100.0
        u_noise, u_logins, u_payments, u_mortgage, u_insurance, u_churn = self.streams.draw(
            st.DAILY, idx, day, 6).T
        self.log_engagement += (-laws.ENGAGEMENT_REVERSION * self.log_engagement
                                + st.normal(u_noise, 0, laws.ENGAGEMENT_NOISE))
        engagement = np.exp(self.log_engagement)
        self.fatigue *= laws.FATIGUE_DECAY
        self.friction *= laws.FRICTION_DECAY

        # Income on the user's own payday.
        payday = np.where(pop.biweekly, cal.biweekly_payday[pop.pay_option.clip(0, 1), day],
                          cal.monthly_payday[pop.pay_option, day]) & alive
        paid = idx[payday]
        u_noise_i, u_second, u_jitter = self.streams.draw(st.INCOME, paid, day, 3).T
        income = self.pay_amount[paid] * (1 + st.normal(u_noise_i, 0, laws.INCOME_NOISE_SD))
        out.add(paid, day * DAY + st.integers(u_second, laws.INCOME_HOURS[0] * 3600, laws.INCOME_HOURS[1] * 3600),
                "income", u_jitter, amount=income)
        self.balance[paid] += income

        # Logins: personal rate x engagement x weekday rhythm, more on payday.
        rate = pop.login_rate * engagement * laws.LOGIN_WEEKDAY[wd] * np.where(payday, laws.PAYDAY_LOGIN_BOOST, 1.0)
        counts = st.poisson(rate, u_logins) * alive
        login_user, j = np.repeat(idx, counts), st.nth(counts)
        u_hour, u_second, u_pref, u_other, u_jitter, u_show = self.streams.draw(st.LOGIN, login_user, day, 6, j).T
        login_time = _clock(day, u_hour, u_second, LOGIN_HOUR_CDF[seg[login_user]])
        login_channel = self.session_channel(login_user, u_pref, u_other)
        out.add(login_user, login_time, "login", u_jitter, channel=login_channel)

        # Offers shown at login: the bank's own targeting by segment, or a policy under test (policy.py).
        self.offers.at_logins(self, day, Logins(login_user, j, login_time, login_channel, u_show))

        # Life-stage chain: spontaneous mortgage inquiries (the ones after a mortgage click are in respond).
        spontaneous = idx[alive & (u_mortgage < laws.MORTGAGE_INQUIRY_DAILY[seg])]
        u_hour, u_second, u_pref, u_other, u_jitter, u_follow, u_delay = self.streams.draw(
            st.MORTGAGE, spontaneous, day, 7).T
        self.mortgage_inquiry(day, spontaneous, _clock(day, u_hour, u_second, LOGIN_HOUR_CDF[seg[spontaneous]]),
                              self.session_channel(spontaneous, u_pref, u_other), u_jitter, u_follow, u_delay)
        insurer = idx[alive & ((self.insurance_due == day) | (u_insurance < laws.HOME_INSURANCE_INQUIRY_DAILY))]
        u_hour, u_second, u_pref, u_other, u_jitter = self.streams.draw(st.INSURANCE, insurer, day, 5).T
        out.add(insurer, _clock(day, u_hour, u_second, LOGIN_HOUR_CDF[seg[insurer]]), "product_inquiry", u_jitter,
                channel=self.session_channel(insurer, u_pref, u_other),
                product=np.full(len(insurer), P["home_insurance"]))

        # Card payments: weekday rhythm, seasons and the macro index; users in overdraft hold back.
        season = 1 if cal.gift_season[day] else 2 if cal.summer_season[day] else 0
        spend = (pop.spend_rate * laws.SPEND_WEEKDAY[wd] * macro**laws.MACRO_SPEND_EXPONENT
                 * engagement**laws.SPEND_ENGAGEMENT_EXPONENT
                 * np.where(self.balance < 0, laws.OVERDRAFT_SPEND_FACTOR, 1.0)
                 * (laws.GIFT_SEASON_SPEND if season == 1 else 1.0))
        counts = st.poisson(spend, u_payments) * alive
        tx_user = np.repeat(idx, counts)
        u_merchant, u_amount, u_tail, u_hour, u_second, u_decline, u_jitter = self.streams.draw(
            st.CARD, tx_user, day, 7, st.nth(counts)).T
        merchant = st.categorical(u_merchant, MERCHANT_CDF[season, seg[tx_user]])
        amount = (laws.AMOUNT_MEDIAN[merchant] * pop.amount_scale[tx_user]
                  * np.exp(st.normal(u_amount) * laws.AMOUNT_SIGMA[merchant]))
        tail = TAIL_MERCHANT[merchant] & (seg[tx_user] == HNW)
        amount[tail] *= np.minimum(st.pareto(u_tail[tail], laws.HNW_PARETO_ALPHA) + 1.0, laws.HNW_PARETO_CAP)
        tx_time = _clock(day, u_hour, u_second, SPEND_HOUR_CDF)
        declined = u_decline < (laws.DECLINE_P + laws.DECLINE_P_OVER_LIMIT
                                * (self.balance[tx_user] < -self.overdraft_limit[tx_user]))
        ok = ~declined
        out.add(tx_user[ok], tx_time[ok], "card_payment", u_jitter[ok], amount=amount[ok], merchant=merchant[ok])
        out.add(tx_user[declined], tx_time[declined], "card_declined", u_jitter[declined], amount=amount[declined],
                merchant=merchant[declined])
        self.balance -= np.bincount(tx_user[ok], weights=amount[ok], minlength=self.n) + pop.daily_outflow * alive
        self.friction += np.bincount(tx_user[declined], minlength=self.n)

        # An overdraft fee at the end of a day below zero, at most once a week.
        charged = idx[alive & (self.balance < 0) & (day - self.last_fee >= 7)]
        u_fee, u_second, u_jitter = self.streams.draw(st.FEE, charged, day, 3).T
        fee = st.uniform(u_fee, *laws.FEE_AMOUNT)
        out.add(charged, day * DAY + st.integers(u_second, 23 * 3600 + 1800, DAY), "fee", u_jitter, amount=fee)
        self.balance[charged] -= fee
        self.friction[charged] += laws.FEE_FRICTION
        self.last_fee[charged] = day

        # Churn: a hazard raised by disengagement, friction, competitor pull and macro stress.
        hazard = laws.CHURN_BASE_DAILY[seg] * np.exp(
            laws.CHURN_DISENGAGEMENT * np.maximum(0.0, -self.log_engagement)
            + laws.CHURN_FRICTION * np.minimum(self.friction, laws.CHURN_FRICTION_CAP)
            + laws.CHURN_COMPETITOR * pop.competitor_pull
            + laws.CHURN_MACRO_STRESS * max(0.0, 1.0 - macro))
        leaving = idx[alive & (u_churn < hazard)]
        u_hour, u_second, u_pref, u_other, u_jitter = self.streams.draw(st.CLOSE, leaving, day, 5).T
        leave_time = _clock(day, u_hour, u_second, LOGIN_HOUR_CDF[seg[leaving]])
        out.add(leaving, leave_time, "account_closed", u_jitter, channel=self.session_channel(leaving, u_pref, u_other))
        self.closed_at[leaving] = leave_time
        alive[leaving] = False

    def slots(self, day: int, logins: Logins, share: float) -> Slots:
        """The day's decision points: the logins whose slot draw is below ``share``, with their offer draws."""
        points = logins.u_show < share
        user = logins.user[points]
        u = self.streams.draw(st.OFFER, user, day, N_OFFER_DRAWS, logins.j[points])
        seconds = logins.seconds[points] + st.integers(u[:, 1], 1, 21)
        micros = seconds * 1_000_000 + (u[:, 6] * 1_000_000).astype(np.int32)  # as EventBuffer stamps offer_shown
        return Slots(user, seconds, micros, logins.channel[points], u)

    def targeted(self, slots: Slots) -> tuple[np.ndarray, np.ndarray]:
        """The bank's own choice at ``slots`` (by segment, OFFER_CDF) and the probability it had."""
        segment = self.pop.segment[slots.user]
        offer = st.categorical(slots.u[:, 0], OFFER_CDF[segment])
        return offer, laws.OFFER_TARGETING[segment, offer]

    def respond(self, day: int, users: np.ndarray, shown_time: np.ndarray, channel: np.ndarray, offer: np.ndarray,
                u: np.ndarray, campaign: int = -1) -> None:
        """Offers ``offer`` shown to ``users`` at ``shown_time``: the showing, then clicks and purchases drawn
        from preference, fatigue, recency and the life-stage chain (law 6), and the state they change.
        ``u`` holds each showing's N_OFFER_DRAWS uniforms (columns 0-1 and 16-17 are the caller's)."""
        (u_click, u_buy, u_click_delay, u_buy_delay, j_shown, j_click, j_buy, u_inquiry, u_inquiry_delay,
         u_pref, u_other, j_inquiry, u_follow, u_delay) = u[:, 2:16].T
        fatigue, last_click, affinity = self.fatigue, self.last_click, self.affinity
        logit = (laws.CLICK_BASE + affinity[users, offer]
                 - laws.CLICK_FATIGUE_SAME * fatigue[users, offer]
                 - laws.CLICK_FATIGUE_ANY * fatigue[users].sum(axis=1)
                 - laws.CLICK_RECENCY_PENALTY * (day - last_click[users, offer] < laws.RECENCY_DAYS)
                 + laws.HOME_INSURANCE_CHAIN_AFFINITY * ((offer == P["home_insurance"])
                                                         & (day - self.chain_opened[users] <= laws.CHAIN_WINDOW_DAYS)))
        click = u_click < _sigmoid(logit)
        buy_p = _sigmoid(laws.PURCHASE_BASE + laws.PURCHASE_AFFINITY * affinity[users, offer])
        buy = click & (u_buy < buy_p)
        click_time = shown_time + st.integers(u_click_delay, 5, 181)
        buy_time = click_time + st.integers(u_buy_delay, 60, 1801)
        out = self.out
        out.add(users, shown_time, "offer_shown", j_shown, channel=channel, product=offer, campaign=campaign)
        out.add(users[click], click_time[click], "offer_click", j_click[click], channel=channel[click],
                product=offer[click])
        out.add(users[buy], buy_time[buy], "offer_purchase", j_buy[buy], channel=channel[buy], product=offer[buy])
        np.add.at(fatigue, (users, offer), 1.0)
        last_click[users[click], offer[click]] = day
        affinity[users[buy], offer[buy]] -= laws.OWNED_AFFINITY_DROP
        # A mortgage click may lead to a mortgage inquiry, which opens the life-stage chain (law 7).
        ask = click & (offer == P["mortgage"]) & (u_inquiry < laws.MORTGAGE_INQUIRY_AFTER_CLICK)
        self.mortgage_inquiry(day, users[ask], click_time[ask] + st.integers(u_inquiry_delay[ask], 60, 601),
                              self.session_channel(users[ask], u_pref[ask], u_other[ask]), j_inquiry[ask],
                              u_follow[ask], u_delay[ask])

    def mortgage_inquiry(self, day: int, users: np.ndarray, time: np.ndarray, channel: np.ndarray,
                         u_jitter: np.ndarray, u_follow: np.ndarray, u_delay: np.ndarray) -> None:
        """A mortgage inquiry opens a window in which home-insurance interest follows (law 7)."""
        self.out.add(users, time, "product_inquiry", u_jitter, channel=channel,
                     product=np.full(len(users), P["mortgage"]))
        self.chain_opened[users] = day
        follows = u_follow < laws.HOME_INSURANCE_FOLLOW_P
        users = users[follows]
        delay = np.maximum(1, np.ceil(st.gamma(u_delay[follows], *laws.HOME_INSURANCE_DELAY_GAMMA)).astype(int))
        due = np.minimum(day + delay, day + laws.CHAIN_WINDOW_DAYS)
        pending = self.insurance_due[users]
        self.insurance_due[users] = np.where(pending > day, np.minimum(pending, due), due)


def simulate_chunk(pop: Population, cal: Calendar, streams: Streams, on_day: Callable[[int], None] | None = None,
                   agent: DayAgent | None = None,
                   offers: OfferPolicy | None = None) -> tuple[pa.Table, dict[str, np.ndarray], pa.Table]:
    """Simulate ``cal.days`` days of the users in ``pop``: their events sorted by user and time, the
    campaign exposures among them (``user`` local index, ``micros`` since the window start, ``campaign``)
    and the decisions table of the offers at login (``offers``: default the bank's own targeting)."""
    chunk = Chunk(pop, cal, streams, offers)
    for day in range(cal.days):
        first_part = len(chunk.out.parts)
        chunk.step(day)
        if agent is not None:
            agent.on_day(chunk, day, first_part)
        if on_day is not None:
            on_day(day)
    events, exposed = _to_table(chunk.out, pop, cal, chunk.closed_at)
    return events, exposed, chunk.decisions.table(pop, cal, chunk.closed_at)


def _to_table(out: EventBuffer, pop: Population, cal: Calendar,
              closed_at: np.ndarray) -> tuple[pa.Table, dict[str, np.ndarray]]:
    user, seconds, etype, amount, channel, merchant, product, jitter, campaign = out.columns()
    # Nothing follows account closure, and nothing spills past the end of the window (censoring).
    keep = (seconds <= closed_at[user]) & (seconds < cal.days * DAY)
    keep &= ~((seconds == closed_at[user]) & (etype != E["account_closed"]))
    user, seconds, etype, amount, channel, merchant, product, jitter, campaign = (
        c[keep] for c in (user, seconds, etype, amount, channel, merchant, product, jitter, campaign))
    # Sub-second jitter keeps two events of a user in the same second apart without reordering events
    # that are a second or more apart.
    micros = seconds * 1_000_000 + jitter
    order = np.lexsort((micros, user))
    user, micros, etype, amount, channel, merchant, product, campaign = (
        c[order] for c in (user, micros, etype, amount, channel, merchant, product, campaign))
    exposed = campaign >= 0
    exposures = {"user": user[exposed], "micros": micros[exposed], "campaign": campaign[exposed]}
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
    }), exposures
