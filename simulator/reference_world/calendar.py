"""Calendar of the simulated window: weekdays, paydays, seasons and the macro index, one entry a day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from twinsim.simulator.reference_world import laws


@dataclass(frozen=True)
class Calendar:
    """Per-day arrays for a window of ``len(dates)`` days starting at ``dates[0]``."""

    dates: np.ndarray  # datetime64[D]
    weekday: np.ndarray  # 0 = Monday
    macro_index: np.ndarray  # 100 = normal; below 100 = downturn
    gift_season: np.ndarray  # bool
    summer_season: np.ndarray  # bool
    monthly_payday: np.ndarray  # bool (len(laws.PAYDAY_DAYS), days): is it payday for that payday option?
    biweekly_payday: np.ndarray  # bool (2, days): Fridays of even / odd fortnights

    @property
    def days(self) -> int:
        return len(self.dates)


def build_calendar(start: date, days: int, rng: np.random.Generator) -> Calendar:
    dates = np.datetime64(start, "D") + np.arange(days)
    weekday = ((dates.astype("int64") + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday
    months = dates.astype("datetime64[M]")
    day_of_month = (dates - months.astype("datetime64[D]")).astype(int) + 1
    month = months.astype(int) % 12 + 1
    fortnight = (dates.astype("int64") - 1) // 7 % 2  # 1970-01-02 was a Friday
    return Calendar(
        dates=dates,
        weekday=weekday,
        macro_index=macro_index(days, rng),
        gift_season=_in_season(month, day_of_month, laws.GIFT_SEASON),
        summer_season=_in_season(month, day_of_month, laws.SUMMER_SEASON),
        monthly_payday=_monthly_paydays(dates),
        biweekly_payday=np.stack([(weekday == 4) & (fortnight == k) for k in (0, 1)]),
    )


def macro_index(days: int, rng: np.random.Generator) -> np.ndarray:
    """A daily index around 100 with one smooth downturn in each ``MACRO_CYCLE_DAYS`` block (a year).

    Each block, counted from the window start, holds one downturn that begins at a uniform
    ``MACRO_DOWNTURN_START`` fraction of it and lasts ``MACRO_DOWNTURN_DAYS``, ``MACRO_DOWNTURN_DEPTH``
    points deep at the trough; a window that ends before a block's downturn begins shows none of it.

    Prefix-stable: ``rng`` is consumed one whole block at a time (its daily shocks, then its downturn),
    and nothing is placed or scaled relative to ``days``, so day t's value never depends on how many days
    follow it. A longer window therefore continues a shorter one, which is what lets a longer world be
    the ground truth of a shorter one's future.
    """
    cycle, length = laws.MACRO_CYCLE_DAYS, laws.MACRO_DOWNTURN_DAYS
    blocks = -(-days // cycle)
    shocks = np.empty(blocks * cycle)
    dip = np.zeros(blocks * cycle + length)  # room for a downturn that runs past the last block
    offset = np.arange(length)
    for k in range(blocks):
        shocks[k * cycle:(k + 1) * cycle] = rng.normal(0.0, 0.3, cycle)
        begin = k * cycle + int(rng.uniform(*laws.MACRO_DOWNTURN_START) * cycle)
        depth = rng.uniform(*laws.MACRO_DOWNTURN_DEPTH)
        dip[begin + offset] += depth * 0.5 * (1 - np.cos(2 * np.pi * (offset + 0.5) / length))  # raised cosine
    noise = np.zeros(days)
    for i in range(1, days):  # AR(1) wiggle so the index is not a flat line outside the downturns
        noise[i] = 0.95 * noise[i - 1] + shocks[i]
    return 100.0 + noise - dip[:days]


def _in_season(month: np.ndarray, day: np.ndarray, window) -> np.ndarray:
    (m0, d0), (m1, d1) = window
    key = month * 100 + day
    return (key >= m0 * 100 + d0) & (key <= m1 * 100 + d1)


def _monthly_paydays(dates: np.ndarray) -> np.ndarray:
    """Paydays for each option in PAYDAY_DAYS: that day of the month (or its last day), moved back to
    Friday when it falls on a weekend."""
    first, last = dates[0], dates[-1]
    months = np.arange(first.astype("datetime64[M]") - 1, last.astype("datetime64[M]") + 2)
    month_start = months.astype("datetime64[D]")
    month_len = ((months + 1).astype("datetime64[D]") - month_start).astype(int)
    out = np.zeros((len(laws.PAYDAY_DAYS), len(dates)), dtype=bool)
    for k, dom in enumerate(laws.PAYDAY_DAYS):
        pay = month_start + np.minimum(dom, month_len) - 1
        wd = (pay.astype("int64") + 3) % 7
        pay = pay - np.where(wd == 5, 1, np.where(wd == 6, 2, 0))
        index = (pay - first).astype(int)
        index = index[(index >= 0) & (index < len(dates))]
        out[k, index] = True
    return out
