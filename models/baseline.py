"""A per-segment Markov / log-normal renewal baseline, scored in the same units as the transformer.

The next event type follows a Markov chain on the previous type (per segment); the gap to it is
log-normal given (segment, previous type, next type); marks are categorical given (segment, type); the
standardised log amount is Gaussian given (segment, type). Censoring enters as the survival of the gap
mixture, exactly as for the transformer, so held-out NLL per event compares like with like.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from twinsim.models.encoding import EncodedLog, Schema
from twinsim.models.windows import user_ended

SMOOTHING = 0.5  # additive smoothing of every categorical table
MIN_COUNT = 5  # gap and amount statistics with fewer observations fall back to the pooled ones


def _groups(log: EncodedLog, schema: Schema) -> tuple[np.ndarray, int]:
    """Per-user group: the `segment` attribute if there is one, else one group."""
    names = list(schema.categorical_attributes)
    if "segment" not in names:
        return np.zeros(log.n_users, np.int64), 1
    return log.static_cat[:, names.index("segment")], len(schema.categorical_attributes["segment"])


def _previous(log: EncodedLog, bos: int) -> np.ndarray:
    prev = np.empty_like(log.event_type)
    prev[1:] = log.event_type[:-1]
    prev[log.offsets[:-1]] = bos
    return prev


def _gaussian_table(keys: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``values`` per key (0..size-1), falling back to the pooled figures when sparse."""
    count = np.bincount(keys, minlength=size)
    total = np.bincount(keys, weights=values, minlength=size)
    square = np.bincount(keys, weights=values**2, minlength=size)
    pooled_mean, pooled_std = values.mean() if len(values) else 0.0, values.std() if len(values) > 1 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count >= MIN_COUNT, total / count, pooled_mean)
        std = np.sqrt(np.maximum(np.where(count >= MIN_COUNT, square / count - mean**2, pooled_std**2), 1e-4))
    return mean, std


def _norm_logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)


class MarkovBaseline:
    """Fit on a training log with :meth:`fit`, score any log with :meth:`nll`."""

    def fit(self, log: EncodedLog, schema: Schema) -> MarkovBaseline:
        self.n_types = len(schema.event_types)
        group, self.n_groups = _groups(log, schema)
        g = np.repeat(group, log.lengths)
        prev, nxt = _previous(log, self.n_types), log.event_type
        t1 = self.n_types + 1
        self.transition = np.bincount((g * t1 + prev) * self.n_types + nxt,
                                      minlength=self.n_groups * t1 * self.n_types
                                      ).reshape(self.n_groups, t1, self.n_types) + SMOOTHING
        self.transition /= self.transition.sum(axis=2, keepdims=True)
        self.gap_mean, self.gap_std = _gaussian_table((g * t1 + prev) * self.n_types + nxt, log.log_gap.astype(float),
                                                      self.n_groups * t1 * self.n_types)
        self.marks = []
        for j, size in enumerate(len(v) for v in schema.marks.values()):
            counts = np.bincount((g * self.n_types + nxt) * size + log.marks[:, j],
                                 minlength=self.n_groups * self.n_types * size).reshape(-1, size) + SMOOTHING
            self.marks.append(counts / counts.sum(axis=1, keepdims=True))
        has = ~np.isnan(log.amount)
        self.amount_mean, self.amount_std = _gaussian_table(
            (g * self.n_types + nxt)[has], log.amount_z[has].astype(float), self.n_groups * self.n_types)
        self.terminal = schema.terminal_codes
        return self

    def nll(self, log: EncodedLog, schema: Schema) -> dict[str, float]:
        """Summed NLL parts (nats) over all events of ``log``, plus censoring, and the event count."""
        group, _ = _groups(log, schema)
        g = np.repeat(group, log.lengths)
        prev, nxt = _previous(log, self.n_types), log.event_type
        t1 = self.n_types + 1
        cell = (g * t1 + prev) * self.n_types + nxt
        time = -_norm_logpdf(log.log_gap.astype(float), self.gap_mean[cell], self.gap_std[cell]).sum()
        type_ = -np.log(self.transition[g, prev, nxt]).sum()
        marks = -sum(np.log(table[g * self.n_types + nxt, log.marks[:, j]]).sum()
                     for j, table in enumerate(self.marks))
        has = ~np.isnan(log.amount)
        a_cell = (g * self.n_types + nxt)[has]
        amount = -_norm_logpdf(log.amount_z[has].astype(float), self.amount_mean[a_cell], self.amount_std[a_cell]).sum()
        # Censoring: users whose history ends without a terminal event survive to the window end.
        open_users = np.flatnonzero(~user_ended(log, self.terminal))
        last = log.offsets[open_users + 1] - 1
        log_c = np.log(np.maximum((log.window_end_s - log.time_s[last]) / 3600.0, 1.0 / 3600.0))
        gu, pu = group[open_users], log.event_type[last]
        cells = (gu[:, None] * t1 + pu[:, None]) * self.n_types + np.arange(self.n_types)[None, :]
        z = (log_c[:, None] - self.gap_mean[cells]) / self.gap_std[cells]
        log_surv = torch.special.log_ndtr(torch.from_numpy(-z)).numpy()
        survival = np.logaddexp.reduce(np.log(self.transition[gu, pu]) + log_surv, axis=1)
        return {"time": float(time - survival.sum()), "type": float(type_), "marks": float(marks),
                "amount": float(amount), "events": int(len(nxt))}
