"""The time-to-next-event head: competing latent times, one per event type, each a log-normal mixture
blended with a clock-hour grid over the next days (or never).

Customer events keep clock and calendar rhythms: logins cluster at certain hours and weekdays, salaries
post at night on paydays. A mixture of log-normals sees those rhythms only through the gap's length, so
it blurs them. Here part of each type's mass sits on an explicit grid of the clock hours of the next
``HORIZON_DAYS`` UTC days (from midnight of the current day, the hours up to the current one's end left
out): each day's 24 hourly logits per type come
from the hidden state *and* that day's calendar (weekday, day of month, days to month end, days ahead)
through one hidden layer, so "tonight at 3 am, because tomorrow is payday" is easy to express. Within an
hour the time is uniform. The log-normal part keeps the seconds-apart events of a session and gaps beyond
the horizon.

The next event comes at the earliest of the types' times (competing risks): its survival is the product
of theirs, and the hazard of each type at that time is what the type head starts from. A type's time may
also be "never" (a third part of its gate): most types cannot follow most events (an offer is shown only
within seconds of a login), and a probability of never says so directly, where a distribution of finite
times would have to push its mass ever further out.

All densities are of log(gap in hours), the unit of the baseline. The grid arithmetic (which bin a gap
lands in, which UTC day the grid starts on) is numpy on float64 epoch seconds, done once per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twinsim.models import kernels
from twinsim.models.rowwise import rowwise

HORIZON_DAYS = 8
BINS = HORIZON_DAYS * 24
DAY_CALENDAR_SIZES = (7, 32, 31)  # weekday, day of month, days to month end (columns 1, 2, 4 of calendar)
LOG_SCALE_RANGE = (-7.0, 3.0)
GRID_LOGIT_BOUND = 80.0  # exp(+-80) is a normal float32, and 192 bins of exp(80) sum below its maximum
FUSED_CHUNK_ROWS = 1024  # rows per fused draw (measured: 4,096 at once was a quarter slower)
NEVER_HOURS = 1e6  # where a row's next event lands when every type's latent time is "never" (114 years)
NEVER_GATE = torch.tensor([0.0, 0.0, 1.0])  # the part weights of a type that never comes (mixture, grid, never)


def mixture_log_prob(params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log density, log survival) of ``x`` under a Gaussian mixture given raw ``params`` (..., 3K)."""
    logits, mu, log_scale = params.chunk(3, dim=-1)
    log_w = F.log_softmax(logits, dim=-1)
    log_scale = log_scale.clamp(*LOG_SCALE_RANGE)
    z = (x.unsqueeze(-1) - mu) / log_scale.exp()
    log_pdf = -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_w + log_pdf, -1), torch.logsumexp(log_w + torch.special.log_ndtr(-z), -1)


def mixture_numpy(params: torch.Tensor):
    """(weights, means, log scales) as float64 numpy arrays for the Numba samplers."""
    logits, mu, log_scale = params.double().chunk(3, dim=-1)
    return (F.softmax(logits, -1).numpy(), mu.contiguous().numpy(),
            log_scale.clamp(*LOG_SCALE_RANGE).contiguous().numpy())


# ------------------------------------------------------------------------------------ grid arithmetic
def clock_hours(time_s: np.ndarray) -> np.ndarray:
    """Hours since the UTC midnight of each time (float64, 0 <= x < 24)."""
    return np.mod(time_s, 86400.0) / 3600.0


def utc_day(time_s: np.ndarray) -> np.ndarray:
    """The UTC day number (days since 1970-01-01) of each time; the grid starts at its midnight."""
    return np.floor(time_s / 86400.0).astype(np.int64)


def grid_position(x: np.ndarray, gap_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a gap of ``gap_h`` hours from clock hour ``x`` lands on the grid: (bin, -1 beyond the horizon;
    log of the bin's width in hours, less than 0 only for the current, partly gone hour; share of that
    width already elapsed at the gap's end)."""
    y = x + gap_h
    bin_ = np.floor(y).astype(np.int64)
    start = np.maximum(bin_.astype(np.float64), x)
    width = bin_ + 1.0 - start
    frac = np.clip((y - start) / width, 0.0, 1.0)
    return np.where(bin_ < BINS, bin_, -1), np.log(width), frac


# ------------------------------------------------------------------------------------ the head
class TimeHead(nn.Module):
    """``types`` competing latent times to the next event, one per event type, each its own blend of a
    log-normal mixture, a clock-hour grid and never; the next event comes at the earliest of them.

    Hazards add: the survival of the next event is the product of every type's survival, so one type whose
    time is near certain (a salary due tonight) caps the gap for all the others, whatever they would do.
    A single blended distribution of "some event" would have to learn that cut-off itself, and any mass
    it leaks past payday is a skipped salary (``docs/validation.md``)."""

    def __init__(self, d: int, mixture: int, types: int = 1) -> None:
        super().__init__()
        self.types = types
        self.gate = nn.Linear(d, 3 * types)  # per type: log-normal mixture, clock-hour grid, never
        self.mixture = nn.Linear(d, 3 * mixture * types)
        self.day = nn.Linear(d, d)
        self.day_emb = nn.ModuleList(nn.Embedding(n, d) for n in (*DAY_CALENDAR_SIZES, HORIZON_DAYS))
        self.hours = nn.Linear(d, 24 * types)
        # epoch seconds -> calendar; loading a model puts the schema's in (Schema.calendar: days the training
        # window never held read as the nearest it did)
        self.calendar = kernels.calendar

    def day_embeddings(self, day0: torch.Tensor) -> torch.Tensor:
        """(..., HORIZON_DAYS, d): embeddings of each grid day's calendar and offset, for grids starting on
        UTC days ``day0``. The calendar is computed once per distinct day in the batch."""
        first = int(day0.min())
        span = int(day0.max()) - first + HORIZON_DAYS
        cal = torch.from_numpy(self.calendar((first + np.arange(span)) * 86400.0 + 43200.0)[:, [1, 2, 4]])
        table = sum(emb(cal[:, i]) for i, emb in enumerate(self.day_emb[:3]))
        index = (day0 - first).unsqueeze(-1) + torch.arange(HORIZON_DAYS)
        return F.embedding(index, table) + self.day_emb[3].weight  # (an indexing backward is not deterministic)

    def grid_log_probs(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor) -> torch.Tensor:
        """(..., types, BINS) log P(each type's time falls in each clock hour of the grid | grid part), for a
        current time in clock hour ``hour0`` of UTC day ``day0``. The grid starts at the next clock hour: the
        current one, and those before it, are impossible. A grid bin spreads its mass evenly over its hour,
        so a bin for the current hour would put part of its mass minutes after the last event, whatever the
        hour stands for; what comes within the current hour is the log-normal mixture's to say, which knows
        how soon after an event the next one comes (``docs/validation.md``, session 12)."""
        e = self.day(h).unsqueeze(-2) + self.day_embeddings(day0)
        logits = self.hours(torch.tanh(e)).unflatten(-1, (self.types, 24)).transpose(-3, -2).flatten(-2)
        past = torch.arange(BINS) <= hour0.unsqueeze(-1)
        return F.log_softmax(logits.masked_fill(past.unsqueeze(-2), float("-inf")), dim=-1)

    def parts(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Everything the network says of the latent times, per type: the log gate weights (..., types, 3:
        log-normal mixture, grid, never), the log-normal mixture parameters (..., types, 3K) and the grid's
        log probabilities (..., types, BINS)."""
        return (F.log_softmax(self.gate(h).unflatten(-1, (self.types, 3)), dim=-1),
                self.mixture(h).unflatten(-1, (self.types, -1)), self.grid_log_probs(h, day0, hour0))

    @staticmethod
    def parts_log_prob(parts, log_gap, bin_, log_width, frac) -> tuple[torch.Tensor, torch.Tensor]:
        """(log density of log gap, log survival at gap), (..., types) each, of every type's latent time;
        ``bin_``, ``log_width`` and ``frac`` come from :func:`grid_position`."""
        log_gate, mixture, log_p = parts
        mix_pdf, mix_surv = mixture_log_prob(mixture, log_gap.unsqueeze(-1))
        inside, log_pb, grid_surv = _grid_survival(log_p, bin_, frac)
        grid_pdf = torch.where(inside, log_pb - (log_width - log_gap).unsqueeze(-1), float("-inf"))
        return (torch.logaddexp(log_gate[..., 0] + mix_pdf, log_gate[..., 1] + grid_pdf),
                torch.logsumexp(log_gate + torch.stack([mix_surv, grid_surv, torch.zeros_like(mix_surv)], -1), -1))

    def log_prob(self, h, day0, hour0, log_gap, bin_, log_width, frac) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`parts_log_prob` for hidden states ``h`` in clock hour ``hour0`` of UTC day ``day0``."""
        return self.parts_log_prob(self.parts(h, day0, hour0), log_gap, bin_, log_width, frac)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, time_s: np.ndarray, u: np.ndarray, min_gap_h: float = 0.0,
               silent_h: np.ndarray | None = None, excluded: np.ndarray | None = None):
        """(gaps in hours from ``time_s``, one per row of ``h``; every type's log hazard at that gap, (rows,
        types)). ``u`` (rows, 3 x types) holds three uniforms per type: the first picks the part, the others
        draw within it. The gap is the earliest of the types' times, and at least ``min_gap_h``; where every
        type says never, it is ``NEVER_HOURS``: the customer does nothing more.

        ``silent_h`` (rows,), where given and positive, is known silence: the log shows no event in that many
        hours after ``time_s``. The gap is then drawn *given* that: each type's latent time from its
        distribution truncated there (the competing times are independent, so "none before c" is "each
        after c"), which is the survival term training scores censored customers with. Draws are exact
        (inverse CDF of the truncated parts), not rejection: a year's silence costs what an hour's does.

        ``excluded`` (types,) bool, where given: types the customer never does of their own accord (controlled
        event types, which only the environment imposes): their latent time is "never", so they take no part
        in the competition and the gap is the earliest of the other types' times.

        Rows without silence are drawn by one fused Numba kernel over the raw network outputs
        (``kernels.sample_competing_times``); silent rows, and every row where the grid's logits are not
        bounded enough to exponentiate in float32, by the vectorised torch/numpy path (:meth:`_sample_parts`),
        the same law. Each row's draw depends on that row alone."""
        n = len(time_s)
        u = u.reshape(n, self.types, 3)
        silent = np.zeros(n, dtype=bool) if silent_h is None else silent_h > 0
        fused = ~silent if self._grid_exp_is_safe() else np.zeros(n, dtype=bool)
        excluded = excluded if excluded is not None and excluded.any() else None
        if fused.all():
            return self._sample_fused(h, time_s, u, min_gap_h, excluded)
        if not fused.any():
            return self._sample_parts(h, time_s, u, min_gap_h, silent, silent_h, excluded)
        gaps, log_hazard = np.empty(n), np.empty((n, self.types))
        index = np.flatnonzero(fused)
        gaps[index], log_hazard[index] = self._sample_fused(h[torch.from_numpy(index)], time_s[index], u[index],
                                                            min_gap_h, excluded)
        index = np.flatnonzero(~fused)
        gaps[index], log_hazard[index] = self._sample_parts(h[torch.from_numpy(index)], time_s[index], u[index],
                                                            min_gap_h, silent[index], silent_h[index], excluded)
        return gaps, log_hazard

    def _sample_fused(self, h: torch.Tensor, time_s: np.ndarray, u: np.ndarray, min_gap_h: float,
                      excluded: np.ndarray | None = None):
        """:meth:`sample` of rows without silence: the network's outputs, then one Numba kernel, in chunks of
        rows (a grid is 8 days x 24 hours x types floats a row: a chunk's grids stay near the core)."""
        n = len(time_s)
        gaps, log_hazard = np.empty(n), np.empty((n, self.types))
        day0, x = torch.from_numpy(utc_day(time_s)), clock_hours(time_s)
        for a in range(0, n, FUSED_CHUNK_ROWS):
            b = min(n, a + FUSED_CHUNK_ROWS)
            log_gate, mixture, grid = rowwise(self._raw_parts, h[a:b], day0[a:b])
            if excluded is not None:
                log_gate[:, torch.from_numpy(excluded)] = NEVER_GATE.log()
            grid_all = grid.sum(-2).unflatten(-1, (self.types, 24)).sum(-1)
            gaps[a:b], log_hazard[a:b] = kernels.sample_competing_times(
                log_gate.numpy(), mixture.numpy(), grid.numpy(), grid_all.numpy(), x[a:b], u[a:b], min_gap_h,
                NEVER_HOURS)
        return gaps, log_hazard

    def _sample_parts(self, h: torch.Tensor, time_s: np.ndarray, u: np.ndarray, min_gap_h: float,
                      silent: np.ndarray, silent_h: np.ndarray | None, excluded: np.ndarray | None = None):
        """:meth:`sample` with torch and numpy over the parts (:meth:`parts`): any rows, silent or not."""
        n, k = len(time_s), self.types
        x = clock_hours(time_s)
        day0 = torch.from_numpy(utc_day(time_s))
        hour0 = torch.from_numpy(np.floor(x)).long()
        parts = rowwise(self.parts, h, day0, hour0)
        latent = np.full((n, k), NEVER_HOURS)
        gate = parts[0].double().exp().numpy()
        if silent.any():
            gate[silent] = self._gate_given_silence(parts, np.flatnonzero(silent), x, silent_h)
        if excluded is not None:
            gate[:, excluded] = NEVER_GATE.numpy()
        part = (u[..., 0] >= gate[..., 0]).astype(np.int64) + (u[..., 0] >= gate[..., 0] + gate[..., 1])
        rows, types = np.nonzero((part == 0) & ~silent[:, None])
        if len(rows):
            params = mixture_numpy(parts[1][torch.from_numpy(rows), torch.from_numpy(types)])
            latent[rows, types] = kernels.sample_lognormal_mixture(*params, u[rows, types, 1], u[rows, types, 2])
        rows, types = np.nonzero((part == 0) & silent[:, None])
        if len(rows):
            params = mixture_numpy(parts[1][torch.from_numpy(rows), torch.from_numpy(types)])
            latent[rows, types] = truncated_lognormal_mixture(*params, np.log(silent_h[rows]), u[rows, types, 1],
                                                              u[rows, types, 2])
        rows, types = np.nonzero(part == 1)
        if len(rows):
            probs = torch.softmax(parts[2][torch.from_numpy(rows), torch.from_numpy(types)].double(), -1).numpy()
            begin = x[rows]  # where the grid's mass may start: after the latest event, or after the silence
            if silent.any():  # only the silent rows' bins change: the others draw bitwise as without silence
                quiet = silent[rows]
                begin = begin + np.where(quiet, silent_h[rows], 0.0)
                probs[quiet] = _grid_after(probs[quiet], begin[quiet])
            bin_ = kernels.sample_categorical(probs, u[rows, types, 1]).astype(float)
            start = np.maximum(bin_, begin)
            latent[rows, types] = start + u[rows, types, 2] * (bin_ + 1.0 - start) - x[rows]
        gaps = np.clip(latent.min(axis=1), min_gap_h, NEVER_HOURS)
        bin_, log_width, frac = grid_position(x, gaps)
        log_pdf, log_surv = self.parts_log_prob(parts, torch.from_numpy(np.log(gaps)).float(), torch.from_numpy(bin_),
                                                torch.from_numpy(log_width).float(), torch.from_numpy(frac).float())
        return gaps, (log_pdf - log_surv).double().numpy()

    def _raw_parts(self, h: torch.Tensor, day0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For the fused kernel (float32; it computes in float64): the log gate weights (..., types, 3) and the
        mixture's weights, means, log scales and scales (..., types, 4, K); the grid's unnormalised
        probabilities exp(logit) (..., HORIZON_DAYS, types x 24), in the layout the last layer writes them (no
        transpose, no masking: the kernel skips the impossible bins). Transcendentals are vectorised here, not
        per row."""
        logits, mu, log_scale = self.mixture(h).unflatten(-1, (self.types, -1)).chunk(3, dim=-1)
        log_scale = log_scale.clamp(*LOG_SCALE_RANGE)
        mixture = torch.stack([torch.softmax(logits, -1), mu, log_scale, log_scale.exp()], -2)
        e = self.day(h).unsqueeze(-2) + self.day_embeddings(day0)
        return (F.log_softmax(self.gate(h).unflatten(-1, (self.types, 3)), -1), mixture,
                self.hours(torch.tanh(e)).exp_())

    def _grid_exp_is_safe(self) -> bool:
        """Whether every grid logit is bounded by GRID_LOGIT_BOUND (its input is a tanh, so by the last layer's
        absolute row sums): exp() of it then neither overflows nor underflows float32, and the kernel can
        normalise without subtracting a maximum."""
        bound = self.hours.weight.abs().sum(1) + self.hours.bias.abs()
        return float(bound.max()) < GRID_LOGIT_BOUND

    def _gate_given_silence(self, parts, rows: np.ndarray, x: np.ndarray, silent_h: np.ndarray) -> np.ndarray:
        """(len(rows), types, 3) probabilities of each part of every type's latent time given that it comes
        after ``silent_h`` hours: the gate weights times each part's survival there, renormalised."""
        index = torch.from_numpy(rows)
        c = silent_h[rows]
        bin_, _, frac = grid_position(x[rows], c)
        log_c = torch.from_numpy(np.log(c)).unsqueeze(-1)
        _, mix_surv = mixture_log_prob(parts[1][index].double(), log_c)
        _, _, grid_surv = _grid_survival(parts[2][index].double(), torch.from_numpy(bin_), torch.from_numpy(frac))
        log_w = parts[0][index].double() + torch.stack([mix_surv, grid_surv, torch.zeros_like(mix_surv)], -1)
        return torch.softmax(log_w, -1).numpy()  # "never" survives any silence, so no row is all -inf


def _grid_survival(log_p: torch.Tensor, bin_: torch.Tensor, frac: torch.Tensor):
    """(inside the grid?, log probability of the gap's bin, log survival of the grid part past the gap),
    each (..., types), for grid log probabilities ``log_p`` (..., types, BINS)."""
    inside = (bin_ >= 0).unsqueeze(-1)
    b = bin_.clamp(min=0)[..., None, None].expand(*log_p.shape[:-1], 1)
    log_pb = log_p.gather(-1, b).squeeze(-1)
    later = (torch.arange(BINS) > bin_.clamp(min=0).unsqueeze(-1)).unsqueeze(-2)  # the bins after the gap's
    surv = (log_p.exp() * later).sum(-1) + log_pb.exp() * (1 - frac).unsqueeze(-1)  # a sum: no cancellation
    return inside, log_pb, torch.where(inside, surv.clamp(min=1e-30).log(), float("-inf"))


def _grid_after(probs: np.ndarray, begin: np.ndarray) -> np.ndarray:
    """Grid bin probabilities (rows, BINS) restricted to after clock position ``begin`` (hours since the
    grid's midnight): earlier bins dropped, the bin holding ``begin`` cut to its remaining share."""
    edges = np.arange(BINS, dtype=np.float64)
    left = np.clip(edges[None, :] + 1.0 - begin[:, None], 0.0, 1.0)  # share of each bin after ``begin``
    kept = probs * left
    total = kept.sum(1, keepdims=True)  # 0 only past the horizon, where the grid part's weight is 0 and unused
    return np.divide(kept, total, out=np.full_like(kept, 1.0 / BINS), where=total > 0)


def truncated_lognormal_mixture(weights, log_means, log_scales, log_c, u_component, u_value) -> np.ndarray:
    """One draw per row from a log-normal mixture given that it exceeds ``exp(log_c)``: each component's
    weight times its survival there picks the component, then its upper tail is inverted,
    z = -ndtri(u * P(Z > a)), in the log domain where that tail is too thin for float64."""
    from scipy.special import log_ndtr, ndtri

    scale = np.exp(log_scales)
    a = (log_c[:, None] - log_means) / scale
    log_tail = log_ndtr(-a)
    log_w = np.log(np.maximum(weights, 1e-300)) + log_tail
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    c = kernels.sample_categorical(w / w.sum(1, keepdims=True), u_component)
    i = np.arange(len(c))
    a_c, tail_c = a[i, c], log_tail[i, c]
    p = np.exp(tail_c) * u_value
    far = p < 1e-300  # beyond float64's tail: the excess over a is exponential with rate a
    z = np.where(far, a_c - np.log(u_value) / np.maximum(a_c, 1.0), -ndtri(np.where(far, 0.5, p)))
    return np.maximum(np.exp(log_means[i, c] + scale[i, c] * np.maximum(z, a_c)), np.exp(log_c))


def next_event_log_prob(log_pdf: torch.Tensor, log_surv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From every type's (log density, log survival) at a gap, (..., types): (log density of the earliest
    of them at that gap, log survival of all of them), (...) each. Censoring uses the second."""
    log_all_surv = log_surv.sum(-1)
    return log_all_surv + torch.logsumexp(log_pdf - log_surv, -1), log_all_surv
