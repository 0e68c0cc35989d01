"""The time-to-next-event head: a log-normal mixture blended with a clock-hour grid over the next days.

Customer events keep clock and calendar rhythms: logins cluster at certain hours and weekdays, salaries
post at night on paydays. A mixture of log-normals sees those rhythms only through the gap's length, so
it blurs them. Here part of the mass sits on an explicit grid of the clock hours of the next
``HORIZON_DAYS`` UTC days (from midnight of the current day): each day's 24 hourly logits come from the
hidden state *and* that day's calendar (weekday, day of month, days to month end, days ahead) through one
hidden layer, so "tonight at 3 am, because tomorrow is payday" is easy to express. Within an hour the
time is uniform. The log-normal part keeps the seconds-apart events of a session and gaps beyond the
horizon.

All densities are of log(gap in hours), the unit of the baseline. The grid arithmetic (which bin a gap
lands in, which UTC day the grid starts on) is numpy on float64 epoch seconds, done once per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import kernels
from models.rowwise import rowwise

HORIZON_DAYS = 8
BINS = HORIZON_DAYS * 24
DAY_CALENDAR_SIZES = (7, 32, 31)  # weekday, day of month, days to month end (columns 1, 2, 4 of calendar)
LOG_SCALE_RANGE = (-7.0, 3.0)


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
    def __init__(self, d: int, mixture: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, 2)  # log-normal mixture vs clock-hour grid
        self.mixture = nn.Linear(d, 3 * mixture)
        self.day = nn.Linear(d, d)
        self.day_emb = nn.ModuleList(nn.Embedding(n, d) for n in (*DAY_CALENDAR_SIZES, HORIZON_DAYS))
        self.hours = nn.Linear(d, 24)

    def day_embeddings(self, day0: torch.Tensor) -> torch.Tensor:
        """(..., HORIZON_DAYS, d): embeddings of each grid day's calendar and offset, for grids starting on
        UTC days ``day0``. The calendar is computed once per distinct day in the batch."""
        first = int(day0.min())
        span = int(day0.max()) - first + HORIZON_DAYS
        cal = torch.from_numpy(kernels.calendar((first + np.arange(span)) * 86400.0 + 43200.0)[:, [1, 2, 4]])
        table = sum(emb(cal[:, i]) for i, emb in enumerate(self.day_emb[:3]))
        index = (day0 - first).unsqueeze(-1) + torch.arange(HORIZON_DAYS)
        return F.embedding(index, table) + self.day_emb[3].weight  # (an indexing backward is not deterministic)

    def grid_log_probs(self, h: torch.Tensor, day0: torch.Tensor, hour0: torch.Tensor) -> torch.Tensor:
        """(..., BINS) log P(the next event falls in each clock hour of the grid | grid part), for a current
        time in clock hour ``hour0`` of UTC day ``day0``; the hours of that day before it are impossible."""
        e = self.day(h).unsqueeze(-2) + self.day_embeddings(day0)
        logits = self.hours(torch.tanh(e)).flatten(-2)
        past = torch.arange(BINS) < hour0.unsqueeze(-1)
        return F.log_softmax(logits.masked_fill(past, float("-inf")), dim=-1)

    def log_prob(self, h, day0, hour0, log_gap, bin_, log_width, frac) -> tuple[torch.Tensor, torch.Tensor]:
        """(log density of log gap, log survival at gap) for hidden states ``h`` in clock hour ``hour0`` of
        UTC day ``day0``; ``bin_``, ``log_width`` and ``frac`` come from :func:`grid_position`."""
        log_gate = F.log_softmax(self.gate(h), dim=-1)
        mix_pdf, mix_surv = mixture_log_prob(self.mixture(h), log_gap)
        log_p = self.grid_log_probs(h, day0, hour0)
        inside = bin_ >= 0
        b = bin_.clamp(min=0).unsqueeze(-1)
        grid_pdf = torch.where(inside, log_p.gather(-1, b).squeeze(-1) - log_width + log_gap, float("-inf"))
        p = log_p.exp()
        after = p.flip(-1).cumsum(-1).flip(-1) - p  # mass of the bins after each bin
        surv = after.gather(-1, b).squeeze(-1) + p.gather(-1, b).squeeze(-1) * (1 - frac)
        grid_surv = torch.where(inside, surv.clamp(min=1e-30).log(), float("-inf"))
        return (torch.logaddexp(log_gate[..., 0] + mix_pdf, log_gate[..., 1] + grid_pdf),
                torch.logaddexp(log_gate[..., 0] + mix_surv, log_gate[..., 1] + grid_surv))

    @torch.no_grad()
    def sample(self, h: torch.Tensor, time_s: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Gaps in hours from ``time_s``, one per row of ``h``, from uniforms ``u`` (rows, 3): ``u[:, 0]``
        picks the part, the others draw within it. Each part is evaluated only for the rows that use it."""
        gaps = np.empty(len(time_s))
        on_grid = u[:, 0] >= torch.softmax(self.gate(h).double(), -1)[:, 0].numpy()
        rows = np.flatnonzero(~on_grid)
        if len(rows):
            params = mixture_numpy(rowwise(self.mixture, h[torch.from_numpy(rows)]))
            gaps[rows] = kernels.sample_lognormal_mixture(*params, u[rows, 1], u[rows, 2])
        rows = np.flatnonzero(on_grid)
        if len(rows):
            x = clock_hours(time_s[rows])
            grid = rowwise(self.grid_log_probs, h[torch.from_numpy(rows)], torch.from_numpy(utc_day(time_s[rows])),
                           torch.from_numpy(np.floor(x)).long())
            bin_ = kernels.sample_categorical(torch.softmax(grid.double(), -1).numpy(), u[rows, 1]).astype(float)
            start = np.maximum(bin_, x)
            gaps[rows] = start + u[rows, 2] * (bin_ + 1.0 - start) - x
        return gaps
