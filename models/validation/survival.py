"""Kaplan-Meier churn survival: the share of users still with the bank t days after their first event.

A user churns at their first terminal event (such as ``account_closed``); users who never churn are
censored at the end of their sample's observation window, which is the model's convention too (the end of
the window is not churn).
"""

from __future__ import annotations

import numpy as np

from twinsim.models.validation.samples import DAY_S, Sample, Vocabulary


def durations(sample: Sample, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(days from first event to churn or censoring, churned?) per user."""
    types = sample.codes("event_type", vocab.event_types)
    first_s = sample.time_s[sample.first]
    end_s = np.full(sample.n_users, sample.window[1])
    churn = np.isin(types, vocab.terminal_codes)
    churned = np.zeros(sample.n_users, dtype=bool)
    rows = np.flatnonzero(churn)
    users, first_churn = np.unique(sample.user[rows], return_index=True)
    end_s[users] = sample.time_s[rows[first_churn]]
    churned[users] = True
    return (end_s - first_s) / DAY_S, churned


def kaplan_meier(days: np.ndarray, churned: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The Kaplan-Meier survival estimate evaluated at each ``grid`` day."""
    times = np.unique(days[churned])
    at_risk = len(days) - np.searchsorted(np.sort(days), times, side="left")
    deaths = np.bincount(np.searchsorted(times, days[churned]), minlength=len(times))
    survival = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    index = np.searchsorted(times, grid, side="right") - 1
    return np.where(index >= 0, survival[np.maximum(index, 0)], 1.0)


def survival_curves(ref: Sample, x: Sample, vocab: Vocabulary) -> dict:
    """Both curves on a daily grid up to the shorter observation span, and their largest vertical gap."""
    (ref_days, ref_churned), (x_days, x_churned) = durations(ref, vocab), durations(x, vocab)
    horizon = int(np.floor(min(ref_days.max(), x_days.max())))
    grid = np.arange(horizon + 1, dtype=np.float64)
    a, b = kaplan_meier(ref_days, ref_churned, grid), kaplan_meier(x_days, x_churned, grid)
    gap = np.abs(a - b)
    return {"days": grid.tolist(), "reference": a.tolist(), "sample": b.tolist(),
            "largest_gap": float(gap.max()), "at_day": int(gap.argmax()),
            "churned_share": float(x_churned.mean()), "reference_churned_share": float(ref_churned.mean())}
