"""Utility, dual track: the same model trained on synthetic and on real training users, both scored on holdout.

Two tasks a bank would build on this data:

* **churn**: at monthly cut-offs, will a user who is still a customer churn (a terminal event) in the next
  ``churn_days`` days? Features are the user's history before the cut-off and their last 30 days.
* **response**: will a trigger event (an offer shown) be followed by a response (a click) within
  ``response_hours``, before the next trigger? Features are the trigger's marks and moment, the user's
  earlier triggers and responses (overall, in the last 7 days, and with the same mark values) and the
  user's static attributes.

Scores are AUC, precision, recall and F1 on holdout users (the model flags as many holdout cases as the
share of positives it was trained on) and the synthetic/real ratio of each. The gate reads the AUC
difference against its standard error, which has two parts: which holdout customers were scored
(resampling them) and which customers happened to be in the training data (refitting on resamples).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from twinsim.models.validation.discriminator import utility_model
from twinsim.models.validation.features import attribute_features, user_features
from twinsim.models.validation.samples import DAY_S, Sample, Vocabulary

MAX_CUTOFFS = 10  # churn: monthly cut-offs counted back from the end of the window
MIN_HISTORY_DAYS = 60  # a cut-off needs this much history before it
RECENT_DAYS = 30
FATIGUE_DAYS = 7
MIN_CASES = 10  # fewer positive (or negative) cases than this in any sample: the task is not measurable
BOOTSTRAP = 100  # resamples of holdout users behind the standard error of an AUC difference
REFITS = 3  # refits on resampled training customers behind the training part of that standard error


def _window_subset(sample: Sample, start_s: float, end_s: float) -> Sample:
    keep = (sample.time_s >= start_s) & (sample.time_s < end_s)
    return Sample(sample.name, sample.events[keep].reset_index(drop=True), sample.users)


Cases = tuple[pd.DataFrame, np.ndarray, np.ndarray]  # features, labels, user id of each case


def churn_cases(sample: Sample, vocab: Vocabulary, horizon_days: int) -> Cases:
    """(features, labels, users) with one row per user still a customer at each cut-off."""
    start, end = sample.window
    types = sample.codes("event_type", vocab.event_types)
    churn_s = pd.Series(sample.time_s[np.isin(types, vocab.terminal_codes)],
                        index=sample.user_ids[sample.user[np.isin(types, vocab.terminal_codes)]]).groupby(level=0).min()
    frames, labels = [], []
    for k in range(MAX_CUTOFFS):
        cutoff = end - (k + 1) * horizon_days * DAY_S
        if cutoff - start < MIN_HISTORY_DAYS * DAY_S:
            break
        history = _window_subset(sample, start, cutoff)
        if history.events.empty:
            break
        churned_at = churn_s.reindex(history.user_ids).to_numpy()
        alive = ~(churned_at < cutoff)
        feats = user_features(history, vocab, window=(start, cutoff))
        recent = _window_subset(history, cutoff - RECENT_DAYS * DAY_S, cutoff)
        recent_counts = pd.DataFrame(
            {f"recent:{t}": np.log1p(np.bincount(recent.user[recent.codes("event_type", vocab.event_types) == i],
                                                 minlength=recent.n_users)) for i, t in enumerate(vocab.event_types)},
            index=recent.user_ids)
        feats = feats.join(recent_counts, how="left").fillna(0.0)
        frames.append(feats[alive])
        labels.append(churned_at[alive] < cutoff + horizon_days * DAY_S)
    if not frames:
        return pd.DataFrame(), np.zeros(0, dtype=bool), np.zeros(0, dtype=object)
    features = pd.concat(frames)
    return features.reset_index(drop=True), np.concatenate(labels), features.index.to_numpy()


def _keys(group: np.ndarray, time_s: np.ndarray, t0: float) -> np.ndarray:
    """Sortable int64 keys ordering events by group, then time (whole seconds)."""
    return group.astype(np.int64) * (1 << 34) + (time_s - t0).astype(np.int64)


def _prior_counts(group: np.ndarray, time_s: np.ndarray, within_s: float | None) -> np.ndarray:
    """Per event, how many earlier events of the same group there are (within ``within_s`` seconds, or ever)."""
    order = np.lexsort((time_s, group))
    g, ts = group[order], time_s[order]
    key = _keys(g, ts, float(time_s.min()))
    lower = _keys(g, np.zeros_like(ts), 0.0)  # the group's first possible key
    if within_s is not None:
        lower = np.maximum(lower, key - int(within_s))
    out = np.empty(len(key), dtype=np.int64)
    out[order] = np.arange(len(key)) - np.searchsorted(key, lower, side="left")
    return out


def response_cases(sample: Sample, vocab: Vocabulary, trigger: str, response: str, response_hours: float) -> Cases:
    """(features, labels, users) with one row per trigger event."""
    types = sample.codes("event_type", vocab.event_types)
    trig = np.flatnonzero(types == vocab.event_types.index(trigger))
    resp = np.flatnonzero(types == vocab.event_types.index(response))
    if not len(trig):
        return pd.DataFrame(), np.zeros(0, dtype=bool), np.zeros(0, dtype=object)
    user, t = sample.user[trig], sample.time_s[trig]
    t0 = float(sample.time_s.min())
    resp_key = _keys(sample.user[resp], sample.time_s[resp], t0)
    # Responses of the user before the trigger, and the first one at or after it.
    after = np.searchsorted(resp_key, _keys(user, t, t0), side="left")
    user_first = np.searchsorted(resp_key, _keys(user, np.zeros_like(t), 0.0), side="left")
    nxt = np.minimum(after, max(len(resp) - 1, 0))
    found = (after < len(resp)) & (sample.user[resp][nxt] == user) if len(resp) else np.zeros(len(trig), dtype=bool)
    next_resp_s = np.where(found, sample.time_s[resp][nxt] if len(resp) else 0.0, np.inf)
    next_trig_s = np.where(np.r_[user[1:] == user[:-1], False], np.r_[t[1:], np.inf], np.inf)
    label = (next_resp_s <= t + response_hours * 3600) & (next_resp_s < next_trig_s)

    cols: dict[str, np.ndarray] = {}
    for mark, values in vocab.marks.items():
        codes = sample.codes(mark, values)[trig]
        for i, value in enumerate(values):
            cols[f"trigger:{mark}={value}"] = (codes == i).astype(np.float64)
        cols[f"earlier_same:{mark}"] = np.log1p(_prior_counts(user * (len(values) + 2) + codes, t, None))
        cols[f"recent_same:{mark}"] = np.log1p(_prior_counts(user * (len(values) + 2) + codes, t, FATIGUE_DAYS * DAY_S))
    cal = sample.calendar
    for k in ("weekday", "day_of_month") if vocab.resolution.is_day else ("hour", "weekday", "day_of_month"):
        cols[k] = cal[k][trig].astype(np.float64)  # a log of dates has no hour to read
    cols["earlier_triggers"] = np.log1p(_prior_counts(user, t, None))
    cols["recent_triggers"] = np.log1p(_prior_counts(user, t, FATIGUE_DAYS * DAY_S))
    cols["earlier_responses"] = np.log1p(after - user_first)
    last_resp = np.where(after > user_first, sample.time_s[resp][np.maximum(after - 1, 0)], -np.inf)
    cols["days_since_response"] = np.minimum((t - last_resp) / DAY_S, 365.0)
    frame = pd.DataFrame(cols)
    attributes = attribute_features(sample, vocab)
    if attributes.shape[1]:
        frame = pd.concat([frame, attributes.iloc[user].reset_index(drop=True)], axis=1)
    return frame, label, sample.user_ids[user]


def fit_predict(train: Cases, test: Cases, seed: int) -> tuple[np.ndarray, float]:
    """Holdout probabilities of a model fitted on ``train``, and the cut that flags the training prevalence."""
    x, y, _ = train
    model = utility_model(seed).fit(x.to_numpy(), y)
    cut = float(np.quantile(model.predict_proba(x.to_numpy())[:, 1], 1 - y.mean()))
    return model.predict_proba(test[0][x.columns].to_numpy())[:, 1], cut


def scores(y: np.ndarray, p: np.ndarray, cut: float) -> dict[str, float]:
    flagged = p >= cut
    return {"auc": float(roc_auc_score(y, p)), "precision": float(precision_score(y, flagged, zero_division=0.0)),
            "recall": float(recall_score(y, flagged, zero_division=0.0)),
            "f1": float(f1_score(y, flagged, zero_division=0.0))}


def _weighted_auc(groups: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """AUC with case weights; ``groups`` ranks the scores (equal scores share a group and count half)."""
    size = groups.max() + 1
    pos = np.bincount(groups, weights=weight * y, minlength=size)
    neg = np.bincount(groups, weights=weight * (1 - y), minlength=size)
    below = np.cumsum(neg) - neg
    return float(np.dot(pos, below + 0.5 * neg) / (pos.sum() * neg.sum()))


def auc_difference_se(y: np.ndarray, p_real: np.ndarray, p_syn: np.ndarray, users: np.ndarray,
                      rng: np.random.Generator) -> float:
    """Standard error of AUC(real) - AUC(synthetic) on the holdout, resampling holdout users (a user's cases
    move together, so repeated cases of one customer do not pass for independent evidence)."""
    codes, uniques = pd.factorize(users)
    y = y.astype(np.float64)
    ranks = [np.unique(p, return_inverse=True)[1] for p in (p_real, p_syn)]
    diffs = []
    for _ in range(BOOTSTRAP):
        weight = np.bincount(rng.integers(0, len(uniques), len(uniques)), minlength=len(uniques))[codes]
        if np.dot(weight, y) == 0 or np.dot(weight, 1 - y) == 0:
            continue
        diffs.append(_weighted_auc(ranks[0], y, weight) - _weighted_auc(ranks[1], y, weight))
    return float(np.std(diffs)) if len(diffs) > 1 else float("nan")


def training_spread(train: Cases, test: Cases, seed: int) -> float:
    """Standard deviation of the holdout AUC of models refitted on resamples of the training customers: how
    much the score depends on which customers happened to be in the training data."""
    x, y, users = train
    codes, uniques = pd.factorize(users)
    rng = np.random.default_rng(seed)
    aucs = []
    for r in range(REFITS):
        rows = np.repeat(np.arange(len(y)), np.bincount(rng.integers(0, len(uniques), len(uniques)),
                                                        minlength=len(uniques))[codes])
        if len(np.unique(y[rows])) < 2:
            continue
        resampled = (x.iloc[rows], y[rows], users[rows])
        aucs.append(roc_auc_score(test[1], fit_predict(resampled, test, seed + r)[0]))
    return float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0


def dual_track(real: Cases, synthetic: Cases, holdout: Cases, seed: int) -> dict:
    """Scores of the real-trained and the synthetic-trained model on holdout, and their ratios."""
    short = []
    for name, (_, y, _) in {"real training users": real, "synthetic users": synthetic,
                            "holdout users": holdout}.items():
        positives, negatives = int(np.sum(y)), int(len(y) - np.sum(y))
        if min(positives, negatives) < MIN_CASES:
            short.append(f"{positives} positive and {negatives} negative in the {name}")
    if short:
        return {"applicable": False, "reason": f"too few cases of each outcome to measure ({'; '.join(short)}; "
                                               f"at least {MIN_CASES} of each needed)"}
    y = holdout[1]
    (p_real, cut_real), (p_syn, cut_syn) = fit_predict(real, holdout, seed), fit_predict(synthetic, holdout, seed)
    real_scores, syn_scores = scores(y, p_real, cut_real), scores(y, p_syn, cut_syn)
    ratio = {k: (syn_scores[k] / real_scores[k] if real_scores[k] > 0 else None) for k in real_scores}
    cases = {name: {"cases": int(len(c[1])), "positives": int(np.sum(c[1]))}
             for name, c in (("real", real), ("synthetic", synthetic), ("holdout", holdout))}
    evaluation = auc_difference_se(y, p_real, p_syn, holdout[2], np.random.default_rng(seed))
    training = training_spread(real, holdout, seed)
    return {"applicable": True, "real": real_scores, "synthetic": syn_scores, "ratio": ratio, "cases": cases,
            "auc_difference_se": float(np.sqrt(evaluation**2 + 2 * training**2)),
            "auc_se_parts": {"holdout_resampling": evaluation, "training_resampling": training}}


def response_pair(vocab: Vocabulary, requested: tuple[str, str] | None) -> tuple[str, str] | str:
    """The (trigger, response) types to use, or the reason the task does not apply."""
    if requested is None:
        if {"offer_shown", "offer_click"} <= set(vocab.event_types):
            return "offer_shown", "offer_click"
        return ("not applicable: the training data has no offer_shown and offer_click event types; name a "
                "trigger and response pair with --response TRIGGER:RESPONSE")
    return requested


def utility_tasks(real: Sample, synthetic: Sample, holdout: Sample, vocab: Vocabulary, *, churn_days: int,
                  response: tuple[str, str] | None, response_hours: float, seed: int) -> dict:
    """Both tasks on both tracks, or the reason a task does not apply."""
    samples = (real, synthetic, holdout)
    out = {}
    if vocab.terminal_types:
        out["churn"] = dual_track(*(churn_cases(s, vocab, churn_days) for s in samples), seed)
        out["churn"]["task"] = (f"churn ({', '.join(vocab.terminal_types)}) within {churn_days} days of a monthly "
                                "cut-off, among users still active at the cut-off")
    else:
        out["churn"] = {"applicable": False, "reason": "not applicable: no terminal event type (no event type is "
                                                       "always its user's last); name one with --terminal"}
    pair = response_pair(vocab, response)
    if isinstance(pair, str):
        out["response"] = {"applicable": False, "reason": pair}
    else:
        out["response"] = dual_track(*(response_cases(s, vocab, *pair, response_hours) for s in samples), seed)
        out["response"]["task"] = f"{pair[1]} within {response_hours:g} h of {pair[0]} (before the next {pair[0]})"
    return out
