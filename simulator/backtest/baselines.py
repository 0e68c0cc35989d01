"""Baseline forecasts of each customer's number of events of each type in the horizon ``[cut, cut + horizon)``.

- ``own_rate``: the customer's own past rate of the type, times the horizon. The rate is the count before the
  cut over the customer's observed time, from their first event of any type to the cut (at least one day).
- ``bg_nbd`` and ``pareto_nbd``: the BG/NBD and Pareto/NBD models ("buy till you die"), the standard for
  non-contractual purchase data, fitted per event type with the ``lifetimes`` package (the optional extra
  ``pip install 'twinsim[btyd]'``; without it they are reported missing, never dropped).

BTYD convention (time unit: days). A customer's *birth* is their first event of any type before the cut. Per
type, *frequency* is the number of events of that type after birth: one event of the type at the birth
instant is the "first purchase" and not counted. *Recency* is birth to the last event of the type (0 when
none is counted), *T* is birth to the cut. Each type is fitted separately; terminal (churn) types are not
forecast by BTYD. The forecast is ``conditional_expected_number_of_purchases_up_to_time(horizon, frequency,
recency, T)``.

A fit is tried with each penalizer of ``PENALIZERS`` in turn (lifetimes penalises the squared parameters,
on time scaled so that the longest T is 1) until one converges with finite, positive parameters and finite
forecasts; the report says which penalizer was used, or, for a type none fits, why. A failed type is
reported, never fatal.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from twinsim.simulator.backtest.score import DAY, per_customer_counts

BTYD_EXTRA = "pip install 'twinsim[btyd]'"
BTYD_MISSING = f"not run: the BG/NBD and Pareto/NBD baselines need the lifetimes package ({BTYD_EXTRA})"
BTYD_MODELS = {"bg_nbd": ("BetaGeoFitter", "BG/NBD"), "pareto_nbd": ("ParetoNBDFitter", "Pareto/NBD")}
PENALIZERS = (0.001, 0.01, 0.1)

Progress = Callable[[str], None]


@dataclass
class Forecast:
    """One method's forecast for the horizon.

    ``counts``: customers x forecast types, the expected count of each; a type the method does not forecast
    (failed fit, missing package, terminal type) has no column. ``weekly``: the expected total over customers
    in [cut, cut + d) for each week end d (index, days), one column per forecast type. ``status``: for every
    type asked for, {"status": "ok" | "failed" | "missing" | "not_forecast", ...} with the fit's details."""

    method: str
    counts: pd.DataFrame
    weekly: pd.DataFrame
    status: dict[str, dict[str, Any]] = field(default_factory=dict)


def week_ends(horizon_days: float) -> list[float]:
    """Days after the cut at which the weekly curves are read: 7, 14, ... and the horizon itself."""
    ends = [float(d) for d in range(7, int(np.ceil(horizon_days)), 7)]
    return ends + [float(horizon_days)]


def observed_history(events: pd.DataFrame, user_ids: Sequence[str], cut: pd.Timestamp) -> pd.DataFrame:
    """Each customer's birth (first event of any type before the cut) and T, birth to the cut in days.

    Raises ValueError for a customer without an event before the cut: there is no history to forecast from."""
    before = events.loc[(events["timestamp"] < cut) & events["user_id"].isin(user_ids)]
    birth = before.groupby("user_id")["timestamp"].min().reindex(pd.Index(user_ids, name="user_id"))
    if birth.isna().any():
        missing = birth.index[birth.isna()]
        raise ValueError(f"{len(missing)} customer(s) have no event before the cut, so no history to forecast "
                         f"from (e.g. {', '.join(map(str, missing[:3]))})")
    return pd.DataFrame({"birth": birth, "T": ((cut - birth) / DAY).astype(float)})


def own_rate(events: pd.DataFrame, user_ids: Sequence[str], types: Sequence[str], cut: pd.Timestamp,
             horizon_days: float) -> Forecast:
    """Each customer's own rate of each type before the cut, times the horizon (linear over the weeks)."""
    history = observed_history(events, user_ids, cut)
    calibration = per_customer_counts(events, user_ids, types, None, cut)
    # at least a day, so that a customer first seen just before the cut does not get an absurd rate
    rate = calibration.div(np.maximum(history["T"].to_numpy(), 1.0), axis=0)
    ends = week_ends(horizon_days)
    weekly = pd.DataFrame({t: rate[t].sum() * np.asarray(ends) for t in types}, index=pd.Index(ends, name="days"))
    return Forecast("own_rate", rate * horizon_days, weekly, {t: {"status": "ok"} for t in types})


def rfm_summary(events: pd.DataFrame, user_ids: Sequence[str], event_type: str, cut: pd.Timestamp,
                history: pd.DataFrame | None = None) -> pd.DataFrame:
    """frequency, recency and T (days) of one type for each customer, in the convention of the module docstring.

    ``history``: :func:`observed_history`'s frame, to share it between types."""
    history = observed_history(events, user_ids, cut) if history is None else history
    sel = events.loc[(events["timestamp"] < cut) & (events["event_type"] == event_type)
                     & events["user_id"].isin(history.index), ["user_id", "timestamp"]]
    offset = ((sel["timestamp"] - sel["user_id"].map(history["birth"])) / DAY).to_numpy(float)
    grouped = pd.DataFrame({"offset": offset, "at_birth": offset == 0}, index=sel["user_id"]).groupby(level=0)
    n = grouped.size().reindex(history.index, fill_value=0)
    at_birth = grouped["at_birth"].any().reindex(history.index, fill_value=False)
    frequency = n - at_birth.astype(np.int64)
    recency = grouped["offset"].max().reindex(history.index, fill_value=0.0).where(frequency > 0, 0.0)
    return pd.DataFrame({"frequency": frequency.astype(np.int64), "recency": recency.astype(float),
                         "T": history["T"]}, index=history.index)


def load_lifetimes() -> ModuleType | None:
    """The lifetimes module, or None when it is not installed.

    Imported inside catch_warnings because lifetimes changes the global warning filters on import (it
    ignores every FutureWarning) and warns on pandas 3 (it sets a removed option)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lifetimes
    except ImportError:
        return None
    return lifetimes


@contextlib.contextmanager
def _quiet():
    """lifetimes prints the optimiser's state on a failed fit, resets warning filters on every likelihood call
    and takes logs of zeros: keep all of that out of the user's terminal and the process's filters."""
    with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _fit(fitter_cls, rfm: pd.DataFrame, horizon_days: float, penalizers: Sequence[float]):
    """The first fit that works, its penalizer and the failures before it."""
    f, r, t = (rfm[c].to_numpy() for c in ("frequency", "recency", "T"))
    tried = []
    for penalizer in penalizers:
        try:
            with _quiet():
                fitter = fitter_cls(penalizer_coef=penalizer)
                # Pareto/NBD otherwise starts from a random point: the same data must give the same report
                extra = {"initial_params": np.ones(4)} if fitter_cls.__name__ == "ParetoNBDFitter" else {}
                fitter.fit(f, r, t, **extra)
                forecast = np.asarray(fitter.conditional_expected_number_of_purchases_up_to_time(
                    horizon_days, f, r, t), dtype=float)
            params = {k: float(v) for k, v in fitter.params_.items()}
            if not all(np.isfinite(v) and v > 0 for v in params.values()):
                raise ValueError(f"parameters not finite and positive: {params}")
            if not np.isfinite(forecast).all() or (forecast < 0).any():
                raise ValueError("the forecast is not finite and non-negative for every customer")
            return fitter, penalizer, params, forecast, tried
        except Exception as exc:  # a failed fit is reported per type, never fatal
            tried.append({"penalizer": penalizer, "error": f"{type(exc).__name__}: {str(exc).strip()}"})
    return None, None, None, None, tried


def btyd(events: pd.DataFrame, user_ids: Sequence[str], types: Sequence[str], cut: pd.Timestamp,
         horizon_days: float, model: str = "bg_nbd", terminal_types: Sequence[str] = (),
         penalizers: Sequence[float] = PENALIZERS, progress: Progress | None = None) -> Forecast:
    """BG/NBD (``model="bg_nbd"``) or Pareto/NBD (``"pareto_nbd"``) forecasts, one fit per type.

    Every type gets a status: "missing" (lifetimes not installed: the message names the extra),
    "not_forecast" (a terminal type), "failed" (no fit worked, with each penalizer's error) or "ok" (with the
    penalizer used, the fitted parameters and the penalizers that failed before it)."""
    class_name, label = BTYD_MODELS[model]
    ends = week_ends(horizon_days)
    counts = pd.DataFrame(index=pd.Index(user_ids, name="user_id"))
    weekly = pd.DataFrame(index=pd.Index(ends, name="days"))
    status: dict[str, dict[str, Any]] = {}
    lifetimes = load_lifetimes()
    if lifetimes is None:
        status = {t: {"status": "missing", "message": BTYD_MISSING} for t in types}
        return Forecast(model, counts, weekly, status)
    fitter_cls = getattr(lifetimes, class_name)
    history = observed_history(events, user_ids, cut)
    for i, t in enumerate(types, 1):
        if t in terminal_types:
            status[t] = {"status": "not_forecast", "message": f"{label} does not forecast a terminal type"}
            continue
        if progress:
            progress(f"{label}: fitting {t} ({i}/{len(types)})")
        rfm = rfm_summary(events, user_ids, t, cut, history)
        if not (rfm["frequency"] > 0).any():
            status[t] = {"status": "failed", "message": "no customer has an event of this type after their first "
                                                        "event before the cut: nothing to fit"}
            continue
        fitter, penalizer, params, forecast, tried = _fit(fitter_cls, rfm, horizon_days, penalizers)
        if fitter is None:
            status[t] = {"status": "failed", "message": f"no penalizer of {list(penalizers)} gave a usable fit",
                         "tried": tried}
            continue
        counts[t] = forecast
        f, r, T = (rfm[c].to_numpy() for c in ("frequency", "recency", "T"))
        with _quiet():
            weekly[t] = [float(np.sum(fitter.conditional_expected_number_of_purchases_up_to_time(d, f, r, T)))
                         for d in ends]
        status[t] = {"status": "ok", "penalizer": penalizer, "params": params, "tried": tried}
    return Forecast(model, counts, weekly, status)


def baselines(events: pd.DataFrame, user_ids: Sequence[str], types: Sequence[str], cut: pd.Timestamp,
              horizon_days: float, terminal_types: Sequence[str] = (), penalizers: Sequence[float] = PENALIZERS,
              progress: Progress | None = None) -> list[Forecast]:
    """Every baseline: own rate, BG/NBD and Pareto/NBD."""
    out = [own_rate(events, user_ids, types, cut, horizon_days)]
    for model in BTYD_MODELS:
        out.append(btyd(events, user_ids, types, cut, horizon_days, model, terminal_types, penalizers, progress))
    return out
