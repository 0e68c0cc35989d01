"""One feature vector per user, summarising the whole sequence.

Single events of an event log look alike across people (a login on the app at 21:00), so privacy
distances, the discriminator and the churn model work on users: how many events of each type, how marks
are shared out, amount quantiles per type, rhythm (gaps, hours, weekdays, days of month), tenure in the
window, whether the user churned, and the static attributes. A log of dates (day resolution) has no hour of
day, so its users get no hour shares: a classifier would read nothing else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twinsim.models.validation.samples import DAY_S, Sample, Vocabulary

HOUR_BLOCKS = 6  # 4-hour blocks
DAY_OF_MONTH_EDGES = (1, 6, 11, 16, 21, 26, 32)  # 1-5, 6-10, ..., 26-31: paydays land in different blocks
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _per_user_quantiles(user: np.ndarray, values: np.ndarray, n_users: int, q: tuple[float, ...]) -> np.ndarray:
    """(users, len(q)) quantiles of ``values`` per user; 0 for users without values."""
    out = np.zeros((n_users, len(q)))
    if len(values):
        table = pd.Series(values).groupby(user).quantile(list(q)).unstack()
        out[table.index.to_numpy()] = table.to_numpy()
    return out


def _shares(user: np.ndarray, codes: np.ndarray, n_codes: int, n_users: int) -> np.ndarray:
    """(users, n_codes): each user's share of events per code (rows sum to 1, or 0 without events)."""
    counts = np.bincount(user * n_codes + codes, minlength=n_users * n_codes).reshape(n_users, n_codes)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def user_features(sample: Sample, vocab: Vocabulary, window: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per-user features of ``sample`` (rows follow ``sample.user_ids``), measured in ``vocab``'s terms.

    ``window`` (epoch seconds) is the observation window used for tenure; default: the sample's own.
    """
    u, n = sample.user, sample.n_users
    start, end = sample.window if window is None else window
    cols: dict[str, np.ndarray] = {}
    count = np.bincount(u, minlength=n)
    cols["events"] = np.log1p(count)
    types = sample.codes("event_type", vocab.event_types)
    for i, t in enumerate(vocab.event_types):
        cols[f"count:{t}"] = np.log1p(np.bincount(u[types == i], minlength=n))
    for mark, values in vocab.marks.items():
        codes = sample.codes(mark, values)
        present = np.maximum(np.bincount(u[codes <= len(values)], minlength=n), 1)
        for i, value in enumerate(values):
            cols[f"share:{mark}={value}"] = np.bincount(u[codes == i], minlength=n) / present
    for t in vocab.amount_types:
        rows = (types == vocab.event_types.index(t)) & np.isfinite(sample.amount)
        q = _per_user_quantiles(u[rows], signed_log1p(sample.amount[rows]), n, (0.5, 0.9))
        cols[f"amount_p50:{t}"], cols[f"amount_p90:{t}"] = q[:, 0], q[:, 1]
    gaps = ~np.isnan(sample.gap_h)
    q = _per_user_quantiles(u[gaps], np.log1p(sample.gap_h[gaps]), n, (0.1, 0.5, 0.9))
    cols["log_gap_p10"], cols["log_gap_p50"], cols["log_gap_p90"] = q.T
    cal = sample.calendar
    if not vocab.resolution.is_day:
        for i, share in enumerate(_shares(u, cal["hour"] // (24 // HOUR_BLOCKS), HOUR_BLOCKS, n).T):
            cols[f"hour:{i * 24 // HOUR_BLOCKS:02d}-{(i + 1) * 24 // HOUR_BLOCKS:02d}"] = share
    for day, share in zip(WEEKDAYS, _shares(u, cal["weekday"], 7, n).T, strict=True):
        cols[f"weekday:{day}"] = share
    block = np.searchsorted(DAY_OF_MONTH_EDGES, cal["day_of_month"], side="right") - 1
    for i, share in enumerate(_shares(u, block, len(DAY_OF_MONTH_EDGES) - 1, n).T):
        cols[f"day_of_month:{DAY_OF_MONTH_EDGES[i]}-{DAY_OF_MONTH_EDGES[i + 1] - 1}"] = share
    first_s, last_s = sample.time_s[sample.first], sample.time_s[sample.last]
    cols["days_before_first"] = (first_s - start) / DAY_S
    cols["days_after_last"] = (end - last_s) / DAY_S
    cols["active_days"] = (last_s - first_s) / DAY_S
    cols["churned"] = np.isin(types[sample.last], vocab.terminal_codes).astype(np.float64)
    frame = pd.DataFrame(cols, index=pd.Index(sample.user_ids, name="user_id"))
    return frame.join(attribute_features(sample, vocab), how="left").fillna(0.0)


def attribute_features(sample: Sample, vocab: Vocabulary) -> pd.DataFrame:
    """Static attributes: one-hot categories (the training log's top values) and numbers as they are."""
    cols: dict[str, np.ndarray] = {}
    users = sample.users
    index = pd.Index(sample.user_ids, name="user_id")
    table = None if users is None else users.set_index("user_id").reindex(index)
    for name, values in vocab.categorical_attributes.items():
        column = None if table is None or name not in table else table[name].astype("str").to_numpy()
        for value in values:
            cols[f"attribute:{name}={value}"] = np.zeros(len(index)) if column is None else \
                (column == value).astype(np.float64)
    for name in vocab.numeric_attributes:
        present = table is not None and name in table
        cols[f"attribute:{name}"] = table[name].to_numpy(dtype=np.float64) if present else np.zeros(len(index))
    return pd.DataFrame(cols, index=index)


def standardise(frames: list[pd.DataFrame], reference: pd.DataFrame) -> list[np.ndarray]:
    """Z-scores with the reference's mean and standard deviation (constant columns are left at 0)."""
    mean = reference.mean().to_numpy()
    std = reference.std(ddof=0).to_numpy()
    std = np.where(std > 1e-12, std, 1.0)
    return [(f.to_numpy(dtype=np.float64) - mean) / std for f in frames]
