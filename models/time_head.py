"""The time-to-next-event head: competing latent times, one per event type, each a log-normal mixture
blended with a clock-hour grid over the next days (or never).

Customer events keep clock and calendar rhythms: logins cluster at certain hours and weekdays, salaries
post at night on paydays. A mixture of log-normals sees those rhythms only through the gap's length, so
it blurs them. Here part of each type's mass sits on an explicit grid of the clock hours of the next
``HORIZON_DAYS`` UTC days (from midnight of the current day, the hours up to the current one's end left
out), as a day and then an hour within it: each day's features come from the hidden state *and* that
day's calendar (weekday, day of month, days to month end, days ahead) through one hidden layer, and give
per type the day's logit and its 24 hourly logits, so "tonight at 3 am, because tomorrow is payday" is
easy to express. Within an hour the time is uniform. A gap's score and draw need one day's hours only.
The log-normal part keeps the seconds-apart events of a session and gaps beyond the horizon.

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
DAY_TERMS = 4  # linear scores per type whose log-sum-exp is a grid day's logit
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
    it leaks past payday is a skipped salary (``docs/validation.md``).

    The grid is a day, then an hour within it: each grid day's features (the hidden state and that day's
    calendar and offset, through one tanh layer) give every type a logit for the day (``days``, see
    :meth:`day_log_probs`) and 24 logits for its hours (``hours``). Scoring a gap, or drawing one, needs
    the day probabilities of all eight days but the hours of one day only: the gap's."""

    def __init__(self, d: int, mixture: int, types: int = 1) -> None:
        super().__init__()
        self.types = types
        self.gate = nn.Linear(d, 3 * types)  # per type: log-normal mixture, clock-hour grid, never
        self.mixture = nn.Linear(d, 3 * mixture * types)
        self.day = nn.Linear(d, d)
        self.day_emb = nn.ModuleList(nn.Embedding(n, d) for n in (*DAY_CALENDAR_SIZES, HORIZON_DAYS))
        self.days = nn.Linear(d, DAY_TERMS * types)  # a grid day's logit per type: see ``day_log_probs``
        self.hours = nn.Linear(d, 24 * types)  # the logits of its hours, per type
        # epoch seconds -> calendar; loading a model puts the schema's in (Schema.calendar: days the training
        # window never held read as the nearest it did)
        self.calendar = kernels.calendar

    # -- the grid's two levels ------------------------------------------------------------------------------
    def day_features(self, h_day: torch.Tensor, day0: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(..., m, d) features of the grid days ``offsets`` (..., m) ahead of UTC day ``day0`` (...), given
        ``h_day = self.day(h)``. The calendar is computed once per distinct day in the batch."""
        first = int(day0.min())
        span = int(day0.max()) - first + HORIZON_DAYS
        cal = torch.from_numpy(self.calendar((first + np.arange(span)) * 86400.0 + 43200.0)[:, [1, 2, 4]])
        table = sum(emb(cal[:, i]) for i, emb in enumerate(self.day_emb[:3]))
        index = (day0 - first).unsqueeze(-1) + offsets
        ahead = F.embedding(offsets, self.day_emb[3].weight)  # (an indexing backward is not deterministic)
        return torch.tanh(h_day.unsqueeze(-2) + F.embedding(index, table) + ahead)

    def day_log_probs(self, features: torch.Tensor, hour0: torch.Tensor) -> torch.Tensor:
        """(..., types, HORIZON_DAYS) log P(the grid time falls on each grid day), from every day's
        ``features`` (..., HORIZON_DAYS, d); today is impossible once its last hour has begun. A day's logit
        is the log-sum-exp of DAY_TERMS linear scores of its features: in a single softmax over all 192 bins
        a day's mass was the sum of its 24 hours' exponentials, a log-sum-exp of 24 linear scores, and one
        linear score alone trained to a worse time NLL (1.516 against 1.500 a held-out event, session 24)."""
        logits = torch.logsumexp(self.days(features).unflatten(-1, (self.types, DAY_TERMS)), -1).transpose(-1, -2)
        gone = (torch.arange(HORIZON_DAYS) == 0) & (hour0 == 23).unsqueeze(-1)
        return F.log_softmax(logits.masked_fill(gone.unsqueeze(-2), float("-inf")), dim=-1)

    def hour_log_probs(self, features: torch.Tensor, today: torch.Tensor, hour0: torch.Tensor) -> torch.Tensor:
        """(..., m, types, 24) log P(each clock hour | the day) of days with ``features`` (..., m, d). On
        today (``today``, (..., m)) the hours up to the current one, ``hour0`` (...), are impossible: the
        grid starts at the next clock hour (when none is left today's hours stay as they are, unused: the
        day's probability is 0)."""
        logits = self.hours(features).unflatten(-1, (self.types, 24))
        gone = (today & (hour0 < 23).unsqueeze(-1)).unsqueeze(-1) & (torch.arange(24) <= hour0[..., None, None])
        return F.log_softmax(logits.masked_fill(gone.unsqueeze(-2), float("-inf")), dim=-1)

    def grid_log_probs(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor) -> torch.Tensor:
        """(..., types, BINS) log P(each type's time falls in each clock hour of the grid | grid part), for a
        current time in clock hour ``hour0`` of UTC day ``day0``: every day's hours (the draws given a known
        silence need them; a gap's score needs one day's, :meth:`grid_at`). The grid starts at the next
        clock hour: the current one, and those before it, are impossible. A grid bin spreads its mass evenly
        over its hour, so a bin for the current hour would put part of its mass minutes after the last event,
        whatever the hour stands for; what comes within the current hour is the log-normal mixture's to say,
        which knows how soon after an event the next one comes (``docs/validation.md``, session 12)."""
        offsets = torch.arange(HORIZON_DAYS)
        features = self.day_features(self.day(h), day0, offsets)
        log_hour = self.hour_log_probs(features, (offsets == 0).expand(*hour0.shape, -1), hour0)
        return (self.day_log_probs(features, hour0).unsqueeze(-1) + log_hour.transpose(-3, -2)).flatten(-2)

    def grid_at(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor, bin_: torch.Tensor,
                frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inside the grid?, log probability of the gap's bin, log survival of the grid part past the gap),
        each (..., types), for a gap in ``bin_`` (:func:`grid_position`; -1 past the horizon), ``frac`` of
        the way through it. Only the gap's day's hours are scored."""
        h_day = self.day(h)
        log_day = self.day_log_probs(self.day_features(h_day, day0, torch.arange(HORIZON_DAYS)), hour0)
        b = bin_.clamp(min=0)
        day, hour = b // 24, b % 24
        features = self.day_features(h_day, day0, day.unsqueeze(-1))
        log_hour = self.hour_log_probs(features, (day == 0).unsqueeze(-1), hour0).squeeze(-3)
        log_pd = log_day.gather(-1, day[..., None, None].expand(*day.shape, self.types, 1)).squeeze(-1)
        log_ph = log_hour.gather(-1, hour[..., None, None].expand(*hour.shape, self.types, 1)).squeeze(-1)
        later_days = (log_day.exp() * (torch.arange(HORIZON_DAYS) > day.unsqueeze(-1)).unsqueeze(-2)).sum(-1)
        later_hours = (log_hour.exp() * (torch.arange(24) > hour.unsqueeze(-1)).unsqueeze(-2)).sum(-1)
        surv = later_days + log_pd.exp() * (later_hours + log_ph.exp() * (1 - frac).unsqueeze(-1))  # no cancellation
        inside = (bin_ >= 0).unsqueeze(-1).expand_as(log_pd)
        return inside, log_pd + log_ph, torch.where(inside, surv.clamp(min=1e-30).log(), float("-inf"))

    # -- density and survival ---------------------------------------------------------------------------------
    def gate_and_mixture(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The log gate weights (..., types, 3: log-normal mixture, grid, never) and the log-normal mixture's
        raw parameters (..., types, 3K)."""
        return (F.log_softmax(self.gate(h).unflatten(-1, (self.types, 3)), dim=-1),
                self.mixture(h).unflatten(-1, (self.types, -1)))

    def log_prob(self, h, day0, hour0, log_gap, bin_, log_width, frac) -> tuple[torch.Tensor, torch.Tensor]:
        """(log density of log gap, log survival at gap), (..., types) each, of every type's latent time, for
        hidden states ``h`` in clock hour ``hour0`` of UTC day ``day0``; ``bin_``, ``log_width`` and ``frac``
        come from :func:`grid_position`."""
        log_gate, mixture = self.gate_and_mixture(h)
        mix_pdf, mix_surv = mixture_log_prob(mixture, log_gap.unsqueeze(-1))
        inside, log_pb, grid_surv = self.grid_at(h, day0, hour0, bin_, frac)
        grid_pdf = torch.where(inside, log_pb - (log_width - log_gap).unsqueeze(-1), float("-inf"))
        return (torch.logaddexp(log_gate[..., 0] + mix_pdf, log_gate[..., 1] + grid_pdf),
                torch.logsumexp(log_gate + torch.stack([mix_surv, grid_surv, torch.zeros_like(mix_surv)], -1), -1))

    # -- sampling ---------------------------------------------------------------------------------------------
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

        Rows without silence are drawn by two fused Numba kernels over the raw network outputs (days, then
        the gap's day's hours: ``kernels.draw_grid_days``, ``kernels.finish_competing_times``); silent rows,
        and every row where the grid's hour logits are not bounded enough to exponentiate in float32, by the
        vectorised torch/numpy path (:meth:`_sample_parts`), the same law. Each row's draw depends on that
        row alone."""
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
        """:meth:`sample` of rows without silence, in chunks of rows: the gate, mixture and day probabilities;
        a kernel draws each type's part, its mixture time or its grid day, and so the day the gap falls on;
        that day's hour probabilities; a kernel draws the hours and scores every type at the gap."""
        n = len(time_s)
        gaps, log_hazard = np.empty(n), np.empty((n, self.types))
        day0, x = torch.from_numpy(utc_day(time_s)), clock_hours(time_s)
        hour0 = torch.from_numpy(np.floor(x)).long()
        for a in range(0, n, FUSED_CHUNK_ROWS):
            b = min(n, a + FUSED_CHUNK_ROWS)
            log_gate, mixture, h_day, day_p = rowwise(self._raw_parts, h[a:b], day0[a:b], hour0[a:b])
            if excluded is not None:
                log_gate[:, torch.from_numpy(excluded)] = NEVER_GATE.log()
            log_gate, mixture, day_p = log_gate.numpy(), mixture.numpy(), day_p.numpy()
            earliest, gap_day, grid_day, u_hour = kernels.draw_grid_days(log_gate, mixture, day_p, x[a:b], u[a:b],
                                                                         min_gap_h, NEVER_HOURS)
            hours = rowwise(self._raw_hours, h_day, day0[a:b], torch.from_numpy(np.maximum(gap_day, 0)))
            gaps[a:b], log_hazard[a:b] = kernels.finish_competing_times(
                log_gate, mixture, day_p, hours.numpy(), x[a:b], u[a:b], earliest, gap_day, grid_day, u_hour,
                min_gap_h, NEVER_HOURS)
        return gaps, log_hazard

    def _raw_parts(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For the fused kernels (float32; they compute in float64): the log gate weights (..., types, 3), the
        mixture's weights, means, log scales and scales (..., types, 4, K), ``self.day(h)`` and the day
        probabilities (..., types, HORIZON_DAYS). Transcendentals are vectorised here, not per row."""
        log_gate, raw = self.gate_and_mixture(h)
        logits, mu, log_scale = raw.chunk(3, dim=-1)
        log_scale = log_scale.clamp(*LOG_SCALE_RANGE)
        mixture = torch.stack([torch.softmax(logits, -1), mu, log_scale, log_scale.exp()], -2)
        h_day = self.day(h)
        features = self.day_features(h_day, day0, torch.arange(HORIZON_DAYS))
        return log_gate, mixture, h_day, self.day_log_probs(features, hour0).exp()

    def _raw_hours(self, h_day: torch.Tensor, day0: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """The unnormalised hour probabilities exp(logit) (..., types x 24) of grid day ``day`` (...), in the
        layout the last layer writes them (no masking: the kernel skips the impossible hours)."""
        return self.hours(self.day_features(h_day, day0, day.unsqueeze(-1)).squeeze(-2)).exp_()

    def _grid_exp_is_safe(self) -> bool:
        """Whether every hour logit is bounded by GRID_LOGIT_BOUND (its input is a tanh, so by the last layer's
        absolute row sums): exp() of it then neither overflows nor underflows float32, and the kernel can
        normalise without subtracting a maximum."""
        bound = self.hours.weight.abs().sum(1) + self.hours.bias.abs()
        return float(bound.max()) < GRID_LOGIT_BOUND

    def _sample_parts(self, h: torch.Tensor, time_s: np.ndarray, u: np.ndarray, min_gap_h: float,
                      silent: np.ndarray, silent_h: np.ndarray | None, excluded: np.ndarray | None = None):
        """:meth:`sample` with torch and numpy over every part and grid bin: any rows, silent or not."""
        n, k = len(time_s), self.types
        x = clock_hours(time_s)
        day0 = torch.from_numpy(utc_day(time_s))
        hour0 = torch.from_numpy(np.floor(x)).long()
        log_gate, mixture = rowwise(self.gate_and_mixture, h)
        latent = np.full((n, k), NEVER_HOURS)
        gate = log_gate.double().exp().numpy()
        if silent.any():
            rows = np.flatnonzero(silent)
            index = torch.from_numpy(rows)
            gate[silent] = self._gate_given_silence(h[index], log_gate[index], mixture[index], day0[index],
                                                    hour0[index], x[rows], silent_h[rows])
        if excluded is not None:
            gate[:, excluded] = NEVER_GATE.numpy()
        part = (u[..., 0] >= gate[..., 0]).astype(np.int64) + (u[..., 0] >= gate[..., 0] + gate[..., 1])
        rows, types = np.nonzero((part == 0) & ~silent[:, None])
        if len(rows):
            params = mixture_numpy(mixture[torch.from_numpy(rows), torch.from_numpy(types)])
            latent[rows, types] = kernels.sample_lognormal_mixture(*params, u[rows, types, 1], u[rows, types, 2])
        rows, types = np.nonzero((part == 0) & silent[:, None])
        if len(rows):
            params = mixture_numpy(mixture[torch.from_numpy(rows), torch.from_numpy(types)])
            latent[rows, types] = truncated_lognormal_mixture(*params, np.log(silent_h[rows]), u[rows, types, 1],
                                                              u[rows, types, 2])
        rows, types = np.nonzero(part == 1)
        if len(rows):
            grid = rowwise(self.grid_log_probs, h, day0, hour0)
            probs = torch.softmax(grid[torch.from_numpy(rows), torch.from_numpy(types)].double(), -1).numpy()
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
        log_pdf, log_surv = rowwise(self.log_prob, h, day0, hour0, torch.from_numpy(np.log(gaps)).float(),
                                    torch.from_numpy(bin_), torch.from_numpy(log_width).float(),
                                    torch.from_numpy(frac).float())
        return gaps, (log_pdf - log_surv).double().numpy()

    def _gate_given_silence(self, h, log_gate, mixture, day0, hour0, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(rows, types, 3) probabilities of each part of every type's latent time given that it comes after
        ``c`` hours: the gate weights times each part's survival there, renormalised."""
        bin_, _, frac = grid_position(x, c)
        _, mix_surv = mixture_log_prob(mixture.double(), torch.from_numpy(np.log(c)).unsqueeze(-1))
        _, _, grid_surv = rowwise(self.grid_at, h, day0, hour0, torch.from_numpy(bin_), torch.from_numpy(frac).float())
        log_w = log_gate.double() + torch.stack([mix_surv, grid_surv.double(), torch.zeros_like(mix_surv)], -1)
        return torch.softmax(log_w, -1).numpy()  # "never" survives any silence, so no row is all -inf


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
