"""Fidelity statistics beyond binned accuracy: KS, correlation drift, rare events, volume, rhythm, calendar.

Each function compares a sample ``x`` (synthetic users, or the holdout for the ceiling) with the training
sample ``ref`` and returns plain numbers, so the same call gives both the figure and its ceiling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twinsim.models.event_log import TimeResolution
from twinsim.models.validation.accuracy import DECILES, tvd
from twinsim.models.validation.samples import DAY_S, Sample, Vocabulary

CALENDAR_BINS = {"hour": 24, "weekday": 7, "day_of_month": 32}
EVENTS_PER_USER = "events per user"
MIN_EVENTS_PER_TYPE = 200  # an event type needs this many events in both samples to be compared
RARE_RESAMPLES = 2000  # random same-size samples of training users behind the rare-event range
RARE_RANGE = (0.0005, 0.9995)  # the range that 99.9 % of those samples fall in
MIN_TAIL_USERS = 10  # rare events of fewer customers than this (expected in a sample) are too few to judge


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if len(a) == 0 or len(b) == 0:
        return float(len(a) != len(b))
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                                - np.searchsorted(b, grid, side="right") / len(b))))


def numeric_columns(sample: Sample, vocab: Vocabulary) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The numeric columns KS and rare-event coverage look at, each as (values, user index of each value):
    amount per amount-carrying type, hours since the user's previous event, and events per user."""
    types = sample.codes("event_type", vocab.event_types)
    out = {}
    for t in vocab.amount_types:
        rows = (types == vocab.event_types.index(t)) & np.isfinite(sample.amount)
        out[f"amount ({t})"] = (sample.amount[rows], sample.user[rows])
    rows = np.isfinite(sample.gap_h)
    out["hours since previous event"] = (sample.gap_h[rows], sample.user[rows])
    out[EVENTS_PER_USER] = (np.bincount(sample.user).astype(np.float64), np.arange(sample.n_users))
    return out


def effective_size(users: np.ndarray) -> float:
    """Kish's effective sample size of values clustered by user: (sum of counts)^2 / sum of squared counts.
    A customer with many values counts for less than that many independent ones."""
    counts = np.bincount(users).astype(np.float64)
    return float(counts.sum() ** 2 / max((counts**2).sum(), 1.0))


def ks_per_column(ref: dict, x: dict) -> dict[str, dict[str, float]]:
    """KS statistic per column, with the effective sample size behind the values."""
    return {c: {"ks": ks_statistic(ref[c][0], x[c][0]), "n_eff": effective_size(x[c][1])} for c in ref}


def effective_sizes(columns: dict) -> dict[str, float]:
    return {c: effective_size(users) for c, (_, users) in columns.items()}


def correlation_drift(ref: pd.DataFrame, x: pd.DataFrame) -> dict[str, float | str]:
    """Largest and mean absolute difference between the Spearman correlation matrices of per-user volume
    and amount features (pairs undefined in either sample are skipped)."""
    cols = [c for c in ref.columns if c.startswith(("count:", "amount_p50:", "log_gap_p50", "active_days"))]
    upper = np.triu_indices(len(cols), k=1)
    diff = np.abs(ref[cols].corr(method="spearman").to_numpy() - x[cols].corr(method="spearman").to_numpy())[upper]
    if not np.isfinite(diff).any():
        return {"max": 0.0, "mean": 0.0, "pair": ""}
    worst = int(np.nanargmax(diff))
    return {"max": float(np.nanmax(diff)), "mean": float(np.nanmean(diff)),
            "pair": f"{cols[upper[0][worst]]} ~ {cols[upper[1][worst]]}"}


def _rare_parts(ref: Sample, x: Sample, vocab: Vocabulary, quantile: float, ref_numeric: dict,
                x_numeric: dict) -> dict[str, tuple[np.ndarray, ...]]:
    """Per rare-event item: per-user (rare, total) counts in ref and in x, and the training share."""
    parts = {}
    for column, (values, users) in ref_numeric.items():
        if len(values) == 0:
            continue
        threshold = np.quantile(values, quantile)
        expected = float(np.mean(values > threshold))
        if expected == 0:
            continue
        x_values, x_users = x_numeric[column]
        parts[f"{column} above p{quantile * 100:g}"] = (
            np.bincount(users, weights=values > threshold, minlength=ref.n_users),
            np.bincount(users, minlength=ref.n_users),
            np.bincount(x_users, weights=x_values > threshold, minlength=x.n_users),
            np.bincount(x_users, minlength=x.n_users), expected)
    for column, values in {"event_type": vocab.event_types, **vocab.marks}.items():
        ref_codes, x_codes = ref.codes(column, values), x.codes(column, values)
        present = ref_codes < len(values)
        shares = np.bincount(ref_codes[present], minlength=len(values)) / max(present.sum(), 1)
        rare = np.flatnonzero((shares > 0) & (shares < 1 - quantile))
        if not len(rare):
            continue
        x_present = x_codes < len(values)
        parts[f"{column} values rarer than {(1 - quantile) * 100:g} %"] = (
            np.bincount(ref.user[present], weights=np.isin(ref_codes[present], rare), minlength=ref.n_users),
            np.bincount(ref.user[present], minlength=ref.n_users),
            np.bincount(x.user[x_present], weights=np.isin(x_codes[x_present], rare), minlength=x.n_users),
            np.bincount(x.user[x_present], minlength=x.n_users), float(shares[rare].sum()))
    return parts


def rare_coverage(ref: Sample, x: Sample, vocab: Vocabulary, quantile: float, ref_numeric: dict, x_numeric: dict,
                  rng: np.random.Generator) -> dict[str, dict]:
    """Share of ``x`` beyond the training ``quantile`` (numbers: above it; categories: values rarer than
    1 - quantile in training), relative to the training share: 1.0 means rare events are as common as in the
    training data.

    ``range`` is where 99.9 % of real samples of ``x``'s size would land: random samples of as many training
    users, their spread widened by sqrt(1 + n/N) because the training share is itself a sample of N users.
    It is None where the rare events belong to fewer than MIN_TAIL_USERS customers of such a sample.
    """
    out: dict[str, dict] = {"coverage": {}, "range": {}, "tail_users": {}}
    n, big_n = x.n_users, ref.n_users
    for name, (ref_rare, ref_total, x_rare, x_total, expected) in _rare_parts(
            ref, x, vocab, quantile, ref_numeric, x_numeric).items():
        if x_total.sum() == 0:
            continue
        out["coverage"][name] = float(x_rare.sum() / x_total.sum() / expected)
        tail_users = round(float(np.count_nonzero(ref_rare) * n / big_n), 1)
        out["tail_users"][name] = tail_users
        if tail_users < MIN_TAIL_USERS:
            out["range"][name] = None
            continue
        draws = rng.integers(0, big_n, size=(RARE_RESAMPLES, n))
        resampled = ref_rare[draws].sum(axis=1) / np.maximum(ref_total[draws].sum(axis=1), 1) / expected
        spread = 1 + (np.quantile(resampled, RARE_RANGE) - 1) * np.sqrt(1 + n / big_n)
        out["range"][name] = [float(max(spread[0], 0.0)), float(spread[1])]
    return out


def inter_event_time(ref: Sample, x: Sample, vocab: Vocabulary) -> dict[str, float]:
    """Per event type, 1 - TVD of the log time between consecutive events of that type of one user,
    binned at the training deciles."""
    out = {}
    ref_gaps, x_gaps = _type_gaps(ref, vocab), _type_gaps(x, vocab)
    for t in vocab.event_types:
        a, b = ref_gaps[t], x_gaps[t]
        if len(a) < MIN_EVENTS_PER_TYPE or len(b) < MIN_EVENTS_PER_TYPE:
            continue
        edges = np.unique(np.quantile(a, DECILES))
        size = len(edges) + 1
        out[t] = 1 - tvd(np.bincount(np.searchsorted(edges, a), minlength=size),
                         np.bincount(np.searchsorted(edges, b), minlength=size))
    return out


def _type_gaps(sample: Sample, vocab: Vocabulary) -> dict[str, np.ndarray]:
    types = sample.codes("event_type", vocab.event_types)
    out = {}
    for i, t in enumerate(vocab.event_types):
        rows = np.flatnonzero(types == i)
        same = sample.user[rows[1:]] == sample.user[rows[:-1]]
        out[t] = np.log1p(np.diff(sample.time_s[rows])[same] / 3600.0)
    return out


def calendar_profiles(ref: Sample, x: Sample, vocab: Vocabulary) -> dict[str, dict[str, float]]:
    """Per profile (hour, weekday, day of month) and event type: 1 - TVD of the two profiles."""
    out: dict[str, dict[str, float]] = {kind: {} for kind in CALENDAR_BINS}
    ref_types, x_types = ref.codes("event_type", vocab.event_types), x.codes("event_type", vocab.event_types)
    for i, t in enumerate(vocab.event_types):
        a, b = ref_types == i, x_types == i
        if a.sum() < MIN_EVENTS_PER_TYPE or b.sum() < MIN_EVENTS_PER_TYPE:
            continue
        for kind, size in CALENDAR_BINS.items():
            out[kind][t] = 1 - tvd(np.bincount(ref.calendar[kind][a], minlength=size),
                                   np.bincount(x.calendar[kind][b], minlength=size))
    return out


def mean_over_types(values: dict[str, float]) -> float:
    """Every event type that has enough events counts the same: rare but telling types (salaries, fees)
    weigh as much as the frequent ones."""
    return float(np.mean(list(values.values()))) if values else float("nan")


def off_time_of_day_share(sample: Sample, resolution: TimeResolution) -> float | None:
    """With day resolution, the share of ``sample``'s events at another time of day than the training log's
    (a generator that does not keep a log of dates shows here); None otherwise."""
    if not resolution.is_day:
        return None
    return float(np.mean(np.abs(np.mod(sample.time_s, DAY_S) - resolution.time_of_day_s) > 1e-3))


def calendar_histograms(sample: Sample) -> dict[str, list[float]]:
    """Share of all events per hour, weekday and day of month (for the report's plots)."""
    return {kind: (np.bincount(sample.calendar[kind], minlength=size) / len(sample.events)).tolist()
            for kind, size in CALENDAR_BINS.items()}
