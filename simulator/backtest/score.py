"""Scoring a backtest: per-customer counts after the cut, forecast against actual, by calibration bucket.

One boundary everywhere: a window ``[start, end)`` holds the events with ``start <= timestamp < end``. The
calibration period is everything before the cut (``timestamp < cut``) and the horizon is
``[cut, cut + horizon)``, the same half-open convention as ``twinsim simulate --days`` ("events at or after
start + D days are not simulated"): an event at the cut instant belongs to the future.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)

# Calibration-frequency buckets (count of the type before the cut): single counts where BTYD models differ
# most (0 to 3), then doubling ranges, so that frequent bank events (daily card payments) are not lumped into
# one open "8+" bucket. The last bucket is open. Empty buckets are left out of the report.
BUCKETS: tuple[tuple[int, int | None], ...] = (
    (0, 0), (1, 1), (2, 2), (3, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, None))


def bucket_label(low: int, high: int | None) -> str:
    """``"0"``, ``"4-7"``, ``"128+"``."""
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


def in_window(timestamps: pd.Series, start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.Series:
    """Boolean mask of ``start <= timestamp < end``; a missing bound is open."""
    mask = pd.Series(True, index=timestamps.index)
    if start is not None:
        mask &= timestamps >= start
    if end is not None:
        mask &= timestamps < end
    return mask


def per_customer_counts(events: pd.DataFrame, user_ids: Sequence[str], types: Sequence[str],
                        start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
    """Events of each type per customer with ``start <= timestamp < end`` (None: unbounded).

    Indexed by ``user_ids`` in their order (customers without such events get zeros), one int column per type
    in ``types``; events of other customers or types are ignored."""
    index = pd.Index(user_ids, name="user_id")
    if index.has_duplicates:
        raise ValueError("user_ids holds duplicates")
    sel = events.loc[in_window(events["timestamp"], start, end)
                     & events["event_type"].isin(types) & events["user_id"].isin(index), ["user_id", "event_type"]]
    counts = sel.groupby(["user_id", "event_type"], observed=True).size().unstack(fill_value=0)
    counts = counts.reindex(index=index, columns=pd.Index(list(types), name="event_type"), fill_value=0)
    return counts.fillna(0).astype(np.int64)


def weekly_cumulative(events: pd.DataFrame, user_ids: Sequence[str], types: Sequence[str], start: pd.Timestamp,
                      days: Sequence[float]) -> pd.DataFrame:
    """Total events of each type of ``user_ids`` in ``[start, start + d)`` for each ``d`` in ``days``.

    Indexed by ``days`` (floats), one column per type."""
    days = np.asarray(days, dtype=float)
    end = start + pd.Timedelta(days=float(days.max())) if len(days) else start
    sel = events.loc[in_window(events["timestamp"], start, end) & events["user_id"].isin(user_ids)]
    offsets = ((sel["timestamp"] - start) / DAY).to_numpy(float)
    out = {}
    for t in types:
        mine = np.sort(offsets[(sel["event_type"] == t).to_numpy()])
        out[t] = np.searchsorted(mine, days, side="left")  # offsets < d: the window's end is open
    return pd.DataFrame(out, index=pd.Index(days, name="days"), columns=list(types)).astype(float)


def _num(x: float) -> float | None:
    """A JSON-friendly float: NaN and infinities as None."""
    x = float(x)
    return x if np.isfinite(x) else None


def forecast_metrics(forecast: np.ndarray, actual: np.ndarray) -> dict[str, float | None]:
    """Total and mean per customer, relative error of the total, MAE, RMSE and Pearson correlation.

    The relative error is (forecast total - actual total) / actual total, None when nothing happened; the
    correlation is None when either side is constant (it is undefined there)."""
    forecast, actual = np.asarray(forecast, float), np.asarray(actual, float)
    total, actual_total = forecast.sum(), actual.sum()
    error = forecast - actual
    corr = None
    if len(actual) > 1 and forecast.std() > 0 and actual.std() > 0:
        corr = _num(np.corrcoef(forecast, actual)[0, 1])
    return {"total": _num(total), "mean": _num(forecast.mean()) if len(forecast) else None,
            "relative_error": _num((total - actual_total) / actual_total) if actual_total > 0 else None,
            "mae": _num(np.abs(error).mean()) if len(error) else None,
            "rmse": _num(np.sqrt((error ** 2).mean())) if len(error) else None, "corr": corr}


def best_method(methods: dict[str, dict[str, Any]], metric: str = "mae") -> str | None:
    """The method with the lowest ``metric`` (first listed on a tie); None when no method has one."""
    scored = [(m[metric], name) for name, m in methods.items() if m.get(metric) is not None]
    return min(scored, key=lambda x: x[0])[1] if scored else None


def draw_spread(totals: Sequence[float], actual_total: float) -> dict[str, Any]:
    """The twin's total over its K draws: the simulation noise a user should read the twin's error against."""
    totals = np.asarray(totals, float)
    std = float(totals.std(ddof=1)) if len(totals) > 1 else 0.0
    return {"draws": [float(x) for x in totals], "mean": float(totals.mean()), "std": std,
            "min": float(totals.min()), "max": float(totals.max()),
            "std_relative": std / actual_total if actual_total > 0 else None,
            "actual_within_range": bool(totals.min() <= actual_total <= totals.max())}


def _aligned(frame: pd.DataFrame, index: pd.Index, what: str) -> pd.DataFrame:
    if not frame.index.equals(index):
        raise ValueError(f"{what} is not indexed by the same customers, in the same order, as actual")
    return frame


def score(actual: pd.DataFrame, forecasts: dict[str, pd.DataFrame], calibration: pd.DataFrame,
          draw_totals: pd.DataFrame | None = None, twin: str = "twin") -> dict[str, dict[str, Any]]:
    """Score every forecast against ``actual``, per type and per calibration bucket.

    ``actual``, every frame of ``forecasts`` ({method: expected counts}) and ``calibration`` (counts before
    the cut) are customers x types on the same index. A method without a column for a type (its fit failed)
    is left out of that type. ``draw_totals`` (K draws x types): the twin's per-draw totals, reported as
    ``twin_spread``; ``forecasts[twin]`` should be the mean over the same draws.

    Returns {type: {"customers", "actual_total", "methods": {method: metrics}, "best_mae", "twin_spread",
    "buckets": [{"bucket", "low", "high", "customers", "actual_total", "actual_mean", "methods", "best_mae"}]}}
    with the metrics of :func:`forecast_metrics`."""
    index = actual.index
    for name, frame in forecasts.items():
        _aligned(frame, index, f"the {name} forecast")
    calibration = _aligned(calibration, index, "calibration")
    out = {}
    for t in actual.columns:
        y = actual[t].to_numpy(float)
        predictions = {name: f[t].to_numpy(float) for name, f in forecasts.items() if t in f.columns}
        methods = {name: forecast_metrics(p, y) for name, p in predictions.items()}
        history = calibration[t].to_numpy()
        buckets = []
        for low, high in BUCKETS:
            mask = (history >= low) & (history <= (np.inf if high is None else high))
            if not mask.any():
                continue
            bucket_methods = {name: forecast_metrics(p[mask], y[mask]) for name, p in predictions.items()}
            buckets.append({"bucket": bucket_label(low, high), "low": low, "high": high,
                            "customers": int(mask.sum()), "actual_total": float(y[mask].sum()),
                            "actual_mean": float(y[mask].mean()), "methods": bucket_methods,
                            "best_mae": best_method(bucket_methods)})
        spread = None
        if draw_totals is not None and t in draw_totals.columns and len(draw_totals):
            spread = draw_spread(draw_totals[t].to_numpy(float), y.sum())
        out[t] = {"customers": len(y), "actual_total": float(y.sum()), "methods": methods,
                  "best_mae": best_method(methods), "twin_spread": spread if twin in methods else None,
                  "buckets": buckets}
    return out


def _terminated(events: pd.DataFrame, terminal: Sequence[str], start: pd.Timestamp | None,
                end: pd.Timestamp | None) -> pd.DataFrame:
    sel = events.loc[events["event_type"].isin(terminal) & in_window(events["timestamp"], start, end),
                     ["user_id", "event_type"]]
    return sel.drop_duplicates()


def _shares(events: pd.DataFrame, users: pd.Index, terminal: Sequence[str], start: pd.Timestamp,
            end: pd.Timestamp) -> dict[str, float]:
    """Share of ``users`` with a terminal event in [start, end): each terminal type, and "any"."""
    hit = _terminated(events, terminal, start, end)
    hit = hit[hit["user_id"].isin(users)]
    n = max(len(users), 1)
    shares = {"any": hit["user_id"].nunique() / n}
    shares.update({t: float((hit["event_type"] == t).sum()) / n for t in terminal})
    return shares


def churn_by_horizon(events: pd.DataFrame, draws: Sequence[pd.DataFrame], user_ids: Sequence[str],
                     terminal_types: Sequence[str], cut: pd.Timestamp, horizon_days: float) -> dict[str, Any] | None:
    """Share of customers with a terminal event in [cut, cut + horizon): actual, the twin (mean of its draws),
    and the naive "previous window" (the same share in the window of the same length just before the cut).

    A customer with a terminal event before the cut has churned already and is excluded. The previous window
    is computed on the customers who had an event before its start and had not churned by then. None when
    there are no terminal types."""
    terminal = list(terminal_types)
    if not terminal:
        return None
    horizon = pd.Timedelta(days=horizon_days)
    churned = set(_terminated(events, terminal, None, cut)["user_id"])
    users = pd.Index([u for u in user_ids if u not in churned])
    actual = _shares(events, users, terminal, cut, cut + horizon)
    per_draw = [_shares(d, users, terminal, cut, cut + horizon) for d in draws]

    before = cut - horizon
    seen = set(events.loc[events["timestamp"] < before, "user_id"])
    gone = set(_terminated(events, terminal, None, before)["user_id"])
    previous_users = pd.Index(sorted(seen - gone))
    previous = _shares(events, previous_users, terminal, before, cut) if len(previous_users) else None

    def entry(key: str) -> dict[str, Any]:
        draws_k = [s[key] for s in per_draw]
        return {"actual": actual[key], "twin": float(np.mean(draws_k)) if draws_k else None,
                "twin_draws": draws_k, "twin_min": min(draws_k, default=None), "twin_max": max(draws_k, default=None),
                "previous_window": previous[key] if previous else None}

    return {"customers": len(users), "excluded_churned_before_cut": len(user_ids) - len(users),
            "previous_window_customers": len(previous_users), "any": entry("any"),
            "by_type": {t: entry(t) for t in terminal}}
