"""Training windows over encoded sequences, and their collation into tensors.

A user's events are cut into *chunks* of at most ``L`` events that start every ``L - C`` events, so that
consecutive chunks share a prefix of ``C`` events. Token 0 of every chunk is a BOS token carrying the
user's static attributes; token ``p`` predicts event ``s + p``. Chunk 0 is responsible for events
``0 .. L`` and chunk ``k >= 1`` for events ``s + C + 1 .. s + L``, so each event is predicted exactly once.
After a user's last event comes either a terminal event (nothing more) or *censoring* at the window end, a
target of its own that enters the likelihood as a survival term.

Two layouts:

* ``chunk = W`` (the model's window, the default): windows of ``W`` events every ``W / 2``, full causal
  attention inside each window, so every event is predicted with at least ``W / 2`` events of context;
* ``chunk > W`` (a multiple of ``W``): long chunks with *banded* attention (each token sees BOS and the
  ``W`` latest events, ``transformer.Attention``), the exact computation sampling does with its ring
  cache. The shared prefix ``C = layers x W`` covers what the first target's hidden state reads through
  the layers, so each target is computed exactly as at inference, and each event's hidden state about
  ``L / (L - C)`` times instead of twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinsim.models import kernels, time_head
from twinsim.models.encoding import NEVER, RECENT_DAYS, EncodedLog
from twinsim.models.errors import TwinsimError

NONE, EVENT, CENSOR = 0, 1, 2


@dataclass
class Windows:
    user: np.ndarray  # (windows,) user index into the encoded log
    start: np.ndarray  # (windows,) first event of the window, relative to the user
    first_target: np.ndarray  # (windows,) first relative event index this window is responsible for
    tokens: np.ndarray  # (windows,) tokens of the window: BOS and its events
    width: int  # event tokens a window holds at most (L)


def make_windows(log: EncodedLog, window: int, chunk: int | None = None, layers: int = 2) -> Windows:
    """The chunks of every user of ``log`` (module docstring); ``chunk`` None means ``window``."""
    chunk = chunk or window
    if chunk != window and (chunk % window or chunk < 2 * window * layers):
        raise TwinsimError(f"--chunk must be the window ({window}) or a multiple of it of at least "
                           f"{2 * window * layers} (2 x layers x window; got {chunk}); e.g. --chunk {8 * window}")
    context = window // 2 if chunk == window else layers * window
    stride = chunk - context
    n = log.lengths
    count = np.where(n <= chunk, 1, -(-(n - chunk) // stride) + 1)
    user = np.repeat(np.arange(log.n_users), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    start = k * stride
    first_target = np.where(k == 0, 0, start + context + 1)
    tokens = 1 + np.minimum(chunk, n[user] - start)
    return Windows(user=user, start=start, first_target=first_target, tokens=tokens, width=chunk)


def batches(win: Windows, window: int, budget: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """One epoch's steps: windows in random order (in order if ``rng`` is None), cut so that each step holds
    at most ``budget`` tokens (at least one window). Long chunks are sorted by length first (random among
    equals) and the steps then shuffled, so that a step pads little; the number of steps is the same every
    epoch."""
    order = np.arange(len(win.user)) if rng is None else rng.permutation(len(win.user))
    padded = padded_tokens(win.tokens, window, win.width)
    if win.width > window:
        order = order[np.argsort(padded[order], kind="stable")]
    cuts, total = [0], 0
    for i, size in enumerate(padded[order]):
        if total + size > budget and i > cuts[-1]:
            cuts.append(i)
            total = 0
        total += size
    cuts.append(len(order))
    out = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    if win.width > window and rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def padded_tokens(tokens: np.ndarray, window: int, width: int) -> np.ndarray:
    """Tokens a window takes in a batch: short layouts pad to the full window, chunks to a multiple of it."""
    if width == window:
        return np.full_like(tokens, window + 1)
    return 1 + -(-(tokens - 1) // window) * window


def user_ended(log: EncodedLog, terminal_codes: list[int]) -> np.ndarray:
    """Whether each user's last event is terminal (then there is no censoring term)."""
    return np.isin(log.event_type[log.offsets[1:] - 1], terminal_codes)


def collate(log: EncodedLog, win: Windows, rows: np.ndarray, window: int, ended: np.ndarray,
            bos_type: int, bos_time_s: float) -> dict[str, torch.Tensor]:
    """Tensors for windows ``rows``: tokens (B, 1 + width) and the targets each token predicts; ``width``
    is the model's window ``W`` or, for chunks, the longest of ``rows`` rounded up to a multiple of ``W``."""
    users = win.user[rows]
    width = int(padded_tokens(win.tokens[rows], window, win.width).max()) - 1
    start, first_target = win.start[rows], win.first_target[rows]
    n = log.lengths[users]
    base = log.offsets[users]
    rel = start[:, None] + np.arange(width)[None, :]  # relative event index of tokens 1..width
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

    # Targets: token p predicts relative event j = start + p (p = 0 .. width).
    j = start[:, None] + np.arange(width + 1)[None, :]
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
        # only where an event is predicted, in the row-major order of ``target_kind == EVENT``
        "query_recency": t(recency(target_days[is_event], tok_last[is_event], tok_recent[is_event],
                                   decay_over(target_days[is_event] - tok_days[is_event]))),
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
