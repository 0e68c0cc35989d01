"""Accuracy as 1 - total variation distance over binned event columns.

Every event column is cut into at most a dozen bins fitted on the training users: categories keep the
training log's most frequent values plus ``(other)`` and ``(none)``; numbers (amount, hours since the
user's previous event) are cut at the training deciles. Accuracy of a histogram is 1 - TVD, where TVD is
half the sum of absolute differences of the two normalised histograms: 1 means identical, 0 disjoint.

* univariate: each column on its own;
* bivariate: each pair of columns of the same event;
* coherence: how events hang together in a user's sequence - each column at event t against each column
  at event t+1, the number of distinct categories per user, and the share of users having each category.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from twinsim.models.validation.samples import Sample, Vocabulary

DECILES = np.linspace(0.1, 0.9, 9)


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two histograms (counts or shares); 0 when either is empty."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


@dataclass
class Binning:
    """Bins of each event column, fitted on the training sample."""

    categorical: dict[str, list[str]]  # column -> kept values (codes add (other) and (none))
    edges: dict[str, np.ndarray]  # numeric column -> inner bin edges

    @classmethod
    def fit(cls, train: Sample, vocab: Vocabulary) -> Binning:
        categorical = {"event_type": vocab.event_types[:10], **{m: v[:10] for m, v in vocab.marks.items()}}
        edges = {name: np.unique(np.quantile(values[np.isfinite(values)], DECILES))
                 for name, values in _numeric(train).items() if np.isfinite(values).any()}
        return cls(categorical, edges)

    def sizes(self) -> dict[str, int]:
        sizes = {c: len(v) + 2 for c, v in self.categorical.items()}
        return sizes | {c: len(e) + 2 for c, e in self.edges.items()}

    def codes(self, sample: Sample) -> dict[str, np.ndarray]:
        """Per column, the bin of every event (numeric: ``len(edges) + 1`` where the value is missing)."""
        out = {c: sample.codes(c, values) for c, values in self.categorical.items()}
        numeric = _numeric(sample)
        for column, edges in self.edges.items():
            values = numeric[column]
            out[column] = np.where(np.isfinite(values), np.searchsorted(edges, values, side="right"), len(edges) + 1)
        return out


def _numeric(sample: Sample) -> dict[str, np.ndarray]:
    return {"amount": sample.amount, "log_hours_since_previous": np.log1p(sample.gap_h)}


def _hist(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes, minlength=size)


def _joint(a: np.ndarray, b: np.ndarray, size_b: int, size: int) -> np.ndarray:
    return np.bincount(a * size_b + b, minlength=size)


@dataclass
class BinnedSample:
    """A sample's bin codes, with the pieces coherence needs (next event of the same user)."""

    codes: dict[str, np.ndarray]
    user: np.ndarray
    n_users: int
    same_user_next: np.ndarray  # index i where events i and i+1 belong to the same user

    @classmethod
    def of(cls, sample: Sample, binning: Binning) -> BinnedSample:
        same = np.flatnonzero(sample.user[1:] == sample.user[:-1])
        return cls(binning.codes(sample), sample.user, sample.n_users, same)


def univariate(ref: BinnedSample, x: BinnedSample, sizes: dict[str, int]) -> dict[str, float]:
    return {c: 1 - tvd(_hist(ref.codes[c], k), _hist(x.codes[c], k)) for c, k in sizes.items()}


def bivariate(ref: BinnedSample, x: BinnedSample, sizes: dict[str, int]) -> dict[str, float]:
    out = {}
    for a, b in combinations(sizes, 2):
        size = sizes[a] * sizes[b]
        out[f"{a} x {b}"] = 1 - tvd(_joint(ref.codes[a], ref.codes[b], sizes[b], size),
                                    _joint(x.codes[a], x.codes[b], sizes[b], size))
    return out


def coherence(ref: BinnedSample, x: BinnedSample, sizes: dict[str, int],
              categorical: list[str]) -> dict[str, dict[str, float]]:
    """Three families of sequence checks, each a dict item -> accuracy."""
    transitions = {}
    for a in sizes:
        for b in sizes:
            size = sizes[a] * sizes[b]
            hists = [_joint(s.codes[a][s.same_user_next], s.codes[b][s.same_user_next + 1], sizes[b], size)
                     for s in (ref, x)]
            transitions[f"{a}(t) x {b}(t+1)"] = 1 - tvd(*hists)
    distinct, users_per_category = {}, {}
    for c in categorical:
        k = sizes[c]
        has = [_has_category(s, c, k) for s in (ref, x)]
        n_distinct = [h[:, : k - 1].sum(axis=1) for h in has]  # (none) does not count as a category
        distinct[c] = 1 - tvd(_hist(n_distinct[0], k), _hist(n_distinct[1], k))
        users_per_category[c] = 1 - float(np.abs(has[0].mean(axis=0) - has[1].mean(axis=0))[: k - 1].mean())
    return {"transitions": transitions, "distinct_categories_per_user": distinct,
            "users_per_category": users_per_category}


def _has_category(s: BinnedSample, column: str, k: int) -> np.ndarray:
    """(users, k) booleans: user has at least one event in the category."""
    counts = np.bincount(s.user * k + s.codes[column], minlength=s.n_users * k).reshape(s.n_users, k)
    return counts > 0


def accuracies(ref: BinnedSample, x: BinnedSample, binning: Binning) -> dict:
    """Univariate, bivariate and coherence accuracy of ``x`` against ``ref``, with every item."""
    sizes = binning.sizes()
    uni, bi = univariate(ref, x, sizes), bivariate(ref, x, sizes)
    coh = coherence(ref, x, sizes, list(binning.categorical))
    return {
        "univariate": float(np.mean(list(uni.values()))),
        "bivariate": float(np.mean(list(bi.values()))),
        "coherence": float(np.mean([np.mean(list(part.values())) for part in coh.values()])),
        "items": {"univariate": uni, "bivariate": bi, **coh},
    }

