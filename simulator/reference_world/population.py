"""Customers of the reference world: observable static attributes and the latent traits behind them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world.streams import (
    POPULATION,
    Streams,
    categorical,
    exponential,
    gamma,
    integers,
    normal,
    uniform,
)


@dataclass
class Population:
    """Struct of arrays for one chunk of users (index ``i`` is user ``first_id + i``)."""

    first_id: int
    segment: np.ndarray
    age_band: np.ndarray
    region: np.ndarray
    tenure_months: np.ndarray
    channel: np.ndarray  # preferred channel
    monthly_income: np.ndarray
    biweekly: np.ndarray  # bool: paid every other Friday instead of monthly
    pay_option: np.ndarray  # index into PAYDAY_DAYS (monthly) or fortnight parity (bi-weekly)
    login_rate: np.ndarray
    spend_rate: np.ndarray
    amount_scale: np.ndarray  # multiplies every card amount of the user
    daily_outflow: np.ndarray  # rent, bills and savings that leave the account without card events
    affinity: np.ndarray  # (users, products) latent preference for each offer
    competitor_pull: np.ndarray  # standard normal; higher churns more
    start_balance: np.ndarray  # hidden balance on day 0

    def __len__(self) -> int:
        return len(self.segment)

    @property
    def income_band(self) -> np.ndarray:
        return np.searchsorted(laws.INCOME_BAND_EDGES, self.monthly_income)

    def user_ids(self) -> list[str]:
        return [f"u{self.first_id + i:07d}" for i in range(len(self))]


def sample_population(streams: Streams, first_id: int, n: int) -> Population:
    """Customers ``first_id`` to ``first_id + n - 1``, each from their own draws (``streams.POPULATION``)."""
    u = streams.draw(POPULATION, np.arange(n), 0, N_POPULATION_DRAWS)
    seg = categorical(u[:, 0], _cdf(laws.SEGMENT_SHARE))
    income = laws.MONTHLY_INCOME_MEDIAN[seg] * np.exp(normal(u[:, 1], 0, laws.MONTHLY_INCOME_SIGMA))
    biweekly = u[:, 2] < laws.BIWEEKLY_PAY_P[seg]
    pay_option = np.where(biweekly, integers(u[:, 3], 0, 2), categorical(u[:, 3], _cdf(laws.PAYDAY_DAY_P[seg])))
    spend_rate = laws.SPEND_RATE[seg] * gamma(u[:, 4], laws.SPEND_RATE_SHAPE, 1 / laws.SPEND_RATE_SHAPE)
    # Richer users pay more per purchase; the propensity term makes some users spend beyond their means.
    propensity = np.exp(normal(u[:, 5], 0, laws.SPEND_PROPENSITY_SD))
    amount_scale = (laws.SEGMENT_AMOUNT_SCALE[seg] * np.sqrt(income / laws.MONTHLY_INCOME_MEDIAN[seg])
                    * propensity)
    # The budget for non-card outflows leaves room for the card spending a user *plans* (their own rate,
    # their segment's prices); users whose propensity makes them pay more than planned drift into overdraft.
    planned_daily_spend = spend_rate * amount_scale / propensity * _mean_amount(seg)
    daily_outflow = np.maximum(0.0, laws.BUDGET_SHARE * income * 12 / 365 - planned_daily_spend)
    affinity = laws.AFFINITY_MEAN[seg] + normal(u[:, _AFFINITY:], 0, laws.AFFINITY_SD)
    return Population(
        first_id=first_id,
        segment=seg.astype(np.int8),
        age_band=categorical(u[:, 6], _cdf(laws.AGE_BAND_P[seg])).astype(np.int8),
        region=categorical(u[:, 7], _cdf(laws.REGION_SHARE)).astype(np.int8),
        tenure_months=np.clip(exponential(u[:, 8], laws.TENURE_MONTHS_MEAN[seg]), 1,
                              laws.MAX_TENURE_MONTHS).astype(np.int32),
        channel=categorical(u[:, 9], _cdf(laws.CHANNEL_P[seg])).astype(np.int8),
        monthly_income=income,
        biweekly=biweekly,
        pay_option=pay_option.astype(np.int8),
        login_rate=laws.LOGIN_RATE[seg] * gamma(u[:, 10], laws.LOGIN_RATE_SHAPE, 1 / laws.LOGIN_RATE_SHAPE),
        spend_rate=spend_rate,
        amount_scale=amount_scale,
        daily_outflow=daily_outflow,
        affinity=affinity,
        competitor_pull=normal(u[:, 11]),
        start_balance=income * uniform(u[:, 12], *laws.START_BALANCE_MONTHS),
    )


_AFFINITY = 13  # first of the affinity columns
N_POPULATION_DRAWS = _AFFINITY + len(laws.PRODUCTS)


def _cdf(probs: np.ndarray) -> np.ndarray:
    """Row-wise cumulative distributions whose last entry is exactly 1."""
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = 1.0
    return cdf


def _mean_amount(seg: np.ndarray) -> np.ndarray:
    """Expected card amount before the user's own scale, by segment (log-normal means, HNW tails)."""
    per_merchant = laws.AMOUNT_MEDIAN * np.exp(laws.AMOUNT_SIGMA**2 / 2)
    tail = np.isin(laws.MERCHANTS, laws.HNW_TAIL_MERCHANTS)
    hnw = laws.SEGMENTS.index("high_net_worth")
    pareto_mean = laws.HNW_PARETO_ALPHA / (laws.HNW_PARETO_ALPHA - 1)
    by_segment = np.array([
        (laws.MERCHANT_P[s] * per_merchant * np.where(tail & (s == hnw), pareto_mean, 1.0)).sum()
        for s in range(len(laws.SEGMENTS))
    ])
    return by_segment[seg]


def _labels(codes: np.ndarray, vocabulary: tuple[str, ...]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(vocabulary))


def attribute_codes(pop: Population) -> dict[str, tuple[np.ndarray, tuple[str, ...] | None]]:
    """The users table's attributes as (codes, vocabulary) for categorical ones, (values, None) for numeric."""
    return {
        "segment": (pop.segment, laws.SEGMENTS),
        "age_band": (pop.age_band, laws.AGE_BANDS),
        "income_band": (pop.income_band, laws.INCOME_BANDS),
        "region": (pop.region, laws.REGIONS),
        "tenure_months": (pop.tenure_months, None),
        "preferred_channel": (pop.channel, laws.CHANNELS),
    }


def users_table(pop: Population) -> pa.Table:
    """The observable users table (latent traits stay hidden, as they would in a bank's data)."""
    columns = {name: pa.array(codes) if vocabulary is None else _labels(codes, vocabulary)
               for name, (codes, vocabulary) in attribute_codes(pop).items()}
    return pa.table({"user_id": pa.array(pop.user_ids()), **columns})
