"""The time head's density, survival and sampler agree with each other."""

from __future__ import annotations

import numpy as np
import torch

from models import time_head as th


def _head_at(t0: float, gaps: np.ndarray, seed: int = 0):
    torch.manual_seed(seed)
    head = th.TimeHead(16, 4)
    h = torch.randn(1, 16)
    x = np.full(len(gaps), th.clock_hours(np.array([t0]))[0])
    bin_, log_width, frac = th.grid_position(x, gaps)
    log_pdf, log_surv = head.log_prob(
        h.expand(len(gaps), -1), torch.from_numpy(th.utc_day(np.full(len(gaps), t0))),
        torch.from_numpy(np.floor(x)).long(), torch.tensor(np.log(gaps), dtype=torch.float32),
        torch.from_numpy(bin_), torch.tensor(log_width, dtype=torch.float32), torch.tensor(frac, dtype=torch.float32))
    return head, h, log_pdf.detach().double().numpy(), log_surv.detach().double().numpy()


def test_density_integrates_to_one_minus_survival():
    t0 = 1.75e9 + 3600 * 9.6  # mid-hour, so the current hour is a partial bin
    gaps = np.concatenate([np.geomspace(1e-6, 1, 30_000, endpoint=False), np.arange(1, 600, 1e-3)])
    _, _, log_pdf, log_surv = _head_at(t0, gaps)
    density = np.exp(log_pdf) / gaps  # log_pdf is the density of log(gap)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(gaps))])
    total = cdf + np.exp(log_surv)
    assert np.allclose(total[1000:], total[1000], atol=2e-3)  # mass below 1e-6 h is the only gap
    assert total[-1] > 0.99


def test_sampled_gaps_follow_the_survival_function():
    t0 = 1.75e9 + 3600 * 22.25
    checks = np.array([0.2, 1.0, 3.0, 12.0, 30.0, 100.0, 250.0])
    head, h, _, log_surv = _head_at(t0, checks)
    u = np.random.default_rng(1).random((100_000, 3))
    gaps = head.sample(h.expand(len(u), -1), np.full(len(u), t0), u)
    empirical = (gaps[:, None] > checks[None, :]).mean(axis=0)
    assert np.abs(empirical - np.exp(log_surv)).max() < 0.01
    assert (gaps > 0).all()


def test_grid_position_of_gaps():
    x = np.array([9.6, 9.6, 9.6, 23.5])
    bin_, log_width, frac = th.grid_position(x, np.array([0.2, 0.4, 24.0, 200.0]))
    assert bin_.tolist() == [9, 10, 33, -1]  # same hour, next hour, same hour next day, past the horizon
    assert np.isclose(np.exp(log_width[0]), 0.4) and np.isclose(frac[0], 0.5)
    assert log_width[1] == 0.0 and np.isclose(frac[2], 0.6)
