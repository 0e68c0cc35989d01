"""Training windows over encoded sequences, and their collation into tensors.

A user's events are cut into windows of ``W`` events that start every ``W / 2`` events. Token 0 of every
window is a BOS token carrying the user's static attributes; token ``p`` predicts event ``s + p``. Window
0 is responsible for events ``0 .. W`` and window ``k >= 1`` for events ``(k + 1) W/2 + 1 .. (k + 2) W/2``,
so each event is predicted exactly once, always with at least ``W / 2`` events of context (or all there
are). After a user's last event comes either a terminal event (nothing more) or *censoring* at the
window end, a target of its own that enters the likelihood as a survival term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinsim.models import kernels, time_head
from twinsim.models.encoding import NEVER, RECENT_DAYS, EncodedLog

NONE, EVENT, CENSOR = 0, 1, 2


@dataclass
class Windows:
    user: np.ndarray  # (windows,) user index into the encoded log
    start: np.ndarray  # (windows,) first event of the window, relative to the user
    first_target: np.ndarray  # (windows,) first relative event index this window is responsible for


def make_windows(log: EncodedLog, window: int) -> Windows:
    half = window // 2
    n = log.lengths
    count = np.maximum(1, -(-n // half) - 1)  # windows k = 0 .. max(0, ceil(n / H) - 2)
    user = np.repeat(np.arange(log.n_users), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    start = k * half
    first_target = np.where(k == 0, 0, start + half + 1)
    return Windows(user=user, start=start, first_target=first_target)


def user_ended(log: EncodedLog, terminal_codes: list[int]) -> np.ndarray:
    """Whether each user's last event is terminal (then there is no censoring term)."""
    return np.isin(log.event_type[log.offsets[1:] - 1], terminal_codes)


def collate(log: EncodedLog, win: Windows, rows: np.ndarray, window: int, ended: np.ndarray,
            bos_type: int, bos_time_s: float) -> dict[str, torch.Tensor]:
    """Tensors for windows ``rows``: tokens (B, W + 1) and the targets each token predicts."""
    users = win.user[rows]
    start, first_target = win.start[rows], win.first_target[rows]
    n = log.lengths[users]
    base = log.offsets[users]
    rel = start[:, None] + np.arange(window)[None, :]  # relative event index of tokens 1..W
    has_token = rel < n[:, None]
    event = np.where(has_token, base[:, None] + rel, 0)

    def tokens(values, fill):
        body = np.where(has_token.reshape(has_token.shape + (1,) * (values.ndim - 1)), values[event], fill)
        return np.concatenate([np.broadcast_to(fill, (len(rows), 1) + values.shape[1:]), body], axis=1)

    tok_calendar = tokens(log.calendar, 0)
    tok_calendar[:, 0] = kernels.calendar(np.array([bos_time_s]))[0]
    tok_time = tokens(log.time_s, bos_time_s)
    tok_days = (tok_time - bos_time_s) / 86400.0
    tok_last = tokens(log.last_days, NEVER)
    tok_recent = tokens(log.recent, 0.0)

    # Targets: token p predicts relative event j = start + p (p = 0 .. W).
    j = start[:, None] + np.arange(window + 1)[None, :]
    responsible = j >= first_target[:, None]
    is_event = responsible & (j < n[:, None])
    is_censor = responsible & (j == n[:, None]) & ~ended[users][:, None]
    target = np.where(is_event, base[:, None] + j, 0)
    last_time = log.time_s[base + n - 1]
    censor_gap_h = np.maximum((log.window_end_s - last_time) / 3600.0, 1.0 / 3600.0)
    kind = np.where(is_event, EVENT, np.where(is_censor, CENSOR, NONE))
    target_log_gap = np.where(is_event, log.log_gap[target], np.log(censor_gap_h)[:, None])
    target_days = (log.time_s[target] - bos_time_s) / 86400.0
    clock = time_head.clock_hours(tok_time)
    target_bin, bin_log_width, bin_frac = time_head.grid_position(clock, np.exp(target_log_gap.astype(np.float64)))

    def t(x, dtype=None):
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        return tensor if dtype is None else tensor.to(dtype)

    return {
        "type": t(np.concatenate([np.full((len(rows), 1), bos_type), np.where(has_token, log.event_type[event],
                                                                                bos_type)], axis=1), torch.long),
        "marks": t(tokens(log.marks, 0), torch.long),
        "calendar": t(tok_calendar, torch.long),
        "cont": t(np.concatenate([tokens(log.log_gap, 0.0)[..., None], tokens(log.amount_z, 0.0)[..., None],
                                  tokens(log.context, 0.0)], axis=2), torch.float32),
        "time_days": t(tok_days, torch.float32),
        "recency": t(recency(tok_days, tok_last, tok_recent, np.ones_like(tok_days))),
        "memory": t(tokens(log.memory, 0.0), torch.float32),
        "query_recency": t(recency(target_days, tok_last, tok_recent, decay_over(target_days - tok_days))),
        "valid": t(np.concatenate([np.ones((len(rows), 1), bool), has_token], axis=1)),
        "static_cat": t(log.static_cat[users], torch.long),
        "static_num": t(log.static_num[users], torch.float32),
        "target_kind": t(kind, torch.long),
        "target_log_gap": t(target_log_gap, torch.float32),
        "clock_hour": t(np.floor(clock), torch.long),
        "grid_day": t(time_head.utc_day(tok_time), torch.long),
        "target_bin": t(target_bin, torch.long),
        "target_bin_log_width": t(bin_log_width, torch.float32),
        "target_bin_frac": t(bin_frac, torch.float32),
        "target_type": t(log.event_type[target], torch.long),
        "target_marks": t(log.marks[target], torch.long),
        "target_amount_z": t(log.amount_z[target], torch.float32),
        "target_has_amount": t(is_event & ~np.isnan(log.amount[target])),
        "target_calendar": t(log.calendar[target], torch.long),
        "target_context": t(log.context[target], torch.float32),
    }


RECENCY_LINEAR_DAYS = 63.0  # the linear channel resolves days since up to this, then saturates
# The hat channel: days since, one input per anchor, so that a rise and fall in time since an event (an
# insurance inquiry two to eight weeks after a mortgage inquiry) is a linear read-out, not a learned curve.
RECENCY_ANCHOR_DAYS = (0.0, 1.0, 3.0, 7.0, 14.0, 30.0, 60.0, 120.0, 365.0)
RECENCY_PER_COLUMN = 3 + len(RECENCY_ANCHOR_DAYS)
_ANCHORS = np.log1p(np.array(RECENCY_ANCHOR_DAYS))


def decay_over(days: np.ndarray) -> np.ndarray:
    """How much a decayed count shrinks over ``days``: exp(-days / RECENT_DAYS)."""
    return np.exp(-np.asarray(days, dtype=np.float64) / RECENT_DAYS)


def recency(now_days: np.ndarray, last_days: np.ndarray, recent: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """The long-memory inputs as seen from ``now_days``, per recency column: the days since it last happened,
    twice - log(1 + days) and days / 7 capped at nine weeks (which resolves the day and hour of a payday
    cycle) - and log(1 + its decayed count), the count ``recent`` as of the last event times ``decay``
    (exp(-days since that event / RECENT_DAYS)) - and the days since once more on the hat channel
    (RECENCY_ANCHOR_DAYS). Shape (..., RECENCY_PER_COLUMN x columns), float32."""
    k = last_days.shape[-1]
    flat = kernels.recency_features(np.ascontiguousarray(now_days, dtype=np.float64).reshape(-1),
                                    np.ascontiguousarray(last_days).reshape(-1, k),
                                    np.ascontiguousarray(recent).reshape(-1, k),
                                    np.ascontiguousarray(decay, dtype=np.float64).reshape(-1), RECENCY_LINEAR_DAYS,
                                    _ANCHORS)
    return flat.reshape(*last_days.shape[:-1], RECENCY_PER_COLUMN * k)


def mark_happened(features: np.ndarray, rows: np.ndarray, cols: np.ndarray, recent: np.ndarray) -> None:
    """Patch :func:`recency` features taken just before an event, in place, for the ``cols`` the event
    itself sets (one per row): zero days since, and its decayed count ``recent`` now one higher."""
    k = features.shape[-1] // RECENCY_PER_COLUMN
    features[rows, cols] = features[rows, k + cols] = 0.0
    features[rows, 2 * k + cols] = np.log1p(recent)
    for b in range(len(RECENCY_ANCHOR_DAYS)):
        features[rows, (3 + b) * k + cols] = 0.0
    features[rows, 3 * k + cols] = 1.0
