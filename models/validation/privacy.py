"""Privacy on whole users (seed 003): identical matches, distance to closest record, NNDR, membership inference.

All distances are Euclidean between standardised per-user feature vectors (features.py), because single
events are too alike across people for row-level distances to mean anything. Every figure is set against
what real holdout users - people the generator never saw - show against the same training users.
Identical matches are reported, never filtered out of generated data: removing them would distort the
data and would itself reveal who was in the training set.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

CLOSE_QUANTILE = 0.05  # "too close" = closer than the closest 5 % of holdout users are
# Calendar shares stay out of the privacy profile: moving every event by a few hours changes them completely
# while leaving everything else about a person intact, so they would hide near-copies.
CALENDAR_FEATURES = ("hour:", "weekday:", "day_of_month:")


def privacy_columns(columns: list[str]) -> list[str]:
    """The per-user features privacy distances use: all but the calendar shares."""
    return [c for c in columns if not c.startswith(CALENDAR_FEATURES)]


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.round(x, 9)}


def identical_share(x: np.ndarray, train: np.ndarray) -> float:
    """Share of users whose feature vector equals some training user's exactly."""
    train_rows = _rows(train)
    return float(np.mean([row.tobytes() in train_rows for row in np.round(x, 9)])) if len(x) else 0.0


def _nearest(reference: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = NearestNeighbors(n_neighbors=k).fit(reference)
    return index.kneighbors(queries, return_distance=True)[0]


def closer_to_train_share(x: np.ndarray, train_n: np.ndarray, holdout: np.ndarray,
                          leave_one_out: bool = False) -> float:
    """Share of ``x`` whose nearest training user (of a same-size training sample) is closer than its nearest
    holdout user; ties count half. About 0.5 is ideal. ``leave_one_out`` when ``x`` is the holdout itself."""
    to_train = _nearest(train_n, x, 1)[:, 0]
    to_holdout = _nearest(holdout, x, 2)[:, 1] if leave_one_out else _nearest(holdout, x, 1)[:, 0]
    return float(np.mean((to_train < to_holdout) + 0.5 * (to_train == to_holdout)))


def membership_auc(members: np.ndarray, non_members: np.ndarray, synthetic: np.ndarray) -> float:
    """AUC of an attacker who calls a real user a training member the closer they are to a synthetic user.
    0.5 means the synthetic data tells members and non-members apart no better than a coin."""
    distance = _nearest(synthetic, np.vstack([members, non_members]), 1)[:, 0]
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return float(roc_auc_score(labels, -distance))


def privacy_figures(train: np.ndarray, train_n: np.ndarray, holdout: np.ndarray, synthetic_n: np.ndarray,
                    synthetic_all: np.ndarray, raw: dict[str, np.ndarray]) -> dict:
    """Every privacy figure for the synthetic sample next to the holdout's own value.

    ``train`` are all training users, ``train_n`` a training sample as large as ``holdout`` and
    ``synthetic_n``; ``raw`` holds the unscaled vectors (train, holdout, synthetic) for identical matches.
    """
    hold_d = _nearest(train, holdout, 2)
    syn_d = _nearest(train, synthetic_n, 2)
    dcr_cut = float(np.quantile(hold_d[:, 0], CLOSE_QUANTILE))
    nndr_hold, nndr_syn = _nndr(hold_d), _nndr(syn_d)
    nndr_cut = float(np.quantile(nndr_hold, CLOSE_QUANTILE))
    return {
        "identical_match_share": {"synthetic": identical_share(raw["synthetic"], raw["train"]),
                                  "holdout": identical_share(raw["holdout"], raw["train"])},
        "dcr_median": {"synthetic": float(np.median(syn_d[:, 0])), "holdout": float(np.median(hold_d[:, 0]))},
        "dcr_close_share": {"synthetic": float(np.mean(syn_d[:, 0] < dcr_cut)),
                            "holdout": float(np.mean(hold_d[:, 0] < dcr_cut)), "cut": dcr_cut},
        "nndr_median": {"synthetic": float(np.median(nndr_syn)), "holdout": float(np.median(nndr_hold))},
        "nndr_close_share": {"synthetic": float(np.mean(nndr_syn < nndr_cut)),
                             "holdout": float(np.mean(nndr_hold < nndr_cut)), "cut": nndr_cut},
        "dcr_share": {"synthetic": closer_to_train_share(synthetic_n, train_n, holdout),
                      "holdout": closer_to_train_share(holdout, train_n, holdout, leave_one_out=True)},
        "membership_auc": {"synthetic": membership_auc(train_n, holdout, synthetic_all)},
        "dcr_distributions": {"synthetic": np.sort(syn_d[:, 0]).tolist(), "holdout": np.sort(hold_d[:, 0]).tolist()},
    }


def _nndr(distances: np.ndarray) -> np.ndarray:
    """Nearest-neighbour distance ratio: distance to the closest / to the second closest training user."""
    return np.where(distances[:, 1] > 0, distances[:, 0] / np.maximum(distances[:, 1], 1e-300), 0.0)
