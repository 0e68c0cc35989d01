"""The time head's density, survival and sampler agree with each other: per event type, and for the
earliest of the competing types, which is when the next event comes."""

from __future__ import annotations

import numpy as np
import torch

from twinsim.models import time_head as th
from twinsim.models.time_head import BINS

TYPES = 3


def _head_at(t0: float, gaps: np.ndarray, seed: int = 0):
    """(head, hidden state, log density and log survival of the next event at ``gaps``, (gaps,), and the
    same per type, (gaps, TYPES))."""
    torch.manual_seed(seed)
    head = th.TimeHead(16, 4, types=TYPES)
    h = torch.randn(1, 16)
    x = np.full(len(gaps), th.clock_hours(np.array([t0]))[0])
    bin_, log_width, frac = th.grid_position(x, gaps)
    log_pdf, log_surv = head.log_prob(
        h.expand(len(gaps), -1), torch.from_numpy(th.utc_day(np.full(len(gaps), t0))),
        torch.from_numpy(np.floor(x)).long(), torch.tensor(np.log(gaps), dtype=torch.float32),
        torch.from_numpy(bin_), torch.tensor(log_width, dtype=torch.float32), torch.tensor(frac, dtype=torch.float32))
    next_pdf, next_surv = th.next_event_log_prob(log_pdf, log_surv)
    as_numpy = (x.detach().double().numpy() for x in (next_pdf, next_surv, log_pdf, log_surv))
    return head, h, *as_numpy


def test_density_integrates_to_one_minus_survival():
    t0 = 1.75e9 + 3600 * 9.6  # mid-hour, so the current hour is a partial bin
    gaps = np.concatenate([np.geomspace(1e-6, 1, 30_000, endpoint=False), np.arange(1, 600, 1e-3)])
    _, _, *densities = _head_at(t0, gaps)
    for log_pdf, log_surv in zip(densities[::2], densities[1::2], strict=True):  # the next event's, then each type's
        density = np.exp(log_pdf) / gaps[:, None] if log_pdf.ndim == 2 else np.exp(log_pdf) / gaps
        steps = (np.diff(gaps)[:, None] if log_pdf.ndim == 2 else np.diff(gaps))
        cdf = np.concatenate([np.zeros_like(density[:1]), np.cumsum(0.5 * (density[1:] + density[:-1]) * steps, 0)])
        total = cdf + np.exp(log_surv)
        assert np.allclose(total[1000:], total[1000], atol=2e-3)  # mass below 1e-6 h is the only gap
        assert (total[-1] > 0.99).all()


def test_sampled_gaps_follow_the_survival_function():
    t0 = 1.75e9 + 3600 * 22.25
    checks = np.array([0.2, 1.0, 3.0, 12.0, 30.0, 100.0, 250.0])
    head, h, _, log_surv, _, type_log_surv = _head_at(t0, checks)
    u = np.random.default_rng(1).random((100_000, 3 * TYPES))
    gaps, log_hazard = head.sample(h.expand(len(u), -1), np.full(len(u), t0), u)
    empirical = (gaps[:, None] > checks[None, :]).mean(axis=0)
    assert np.abs(empirical - np.exp(log_surv)).max() < 0.01
    assert np.allclose(log_surv, type_log_surv.sum(1))  # every type's time must come after the gap
    assert (gaps > 0).all() and log_hazard.shape == (len(u), TYPES) and np.isfinite(log_hazard).all()


def test_a_type_due_for_sure_caps_the_gap_of_all():
    """Hazards add: a type whose time is certain to fall within the next hour makes the next event's
    survival past that hour nil, however late the other types would come."""
    torch.manual_seed(0)
    head = th.TimeHead(16, 4, types=2)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.gate.bias[:] = torch.tensor([-30.0, 30.0, -30.0, 30.0, -30.0, -30.0])  # type 0 grid, 1 log-normal
        head.day_emb[3].weight[:, 0] = torch.tensor([10.0] + [-10.0] * (th.HORIZON_DAYS - 1))  # today, or not
        head.days.weight[0, 0] = 30.0  # type 0: today
        head.hours.weight[3, 0] = 30.0  # type 0: 03:00-04:00
        head.hours.bias[:] = torch.tensor([0.0 if hour == 3 else -30.0 for hour in range(24)] + [0.0] * 24)
        head.mixture.bias[:] = torch.tensor([0.0] * 4 + [np.log(500.0)] * 4 + [-1.0] * 4).repeat(2)
    t0 = 1.75e9 - 1.75e9 % 86400 + 3600 * 1.5  # 01:30 UTC: type 0 comes between 03:00 and 04:00
    u = np.random.default_rng(2).random((20_000, 6))
    gaps, log_hazard = head.sample(torch.zeros(len(u), 16), np.full(len(u), t0), u)
    assert ((gaps > 1.5) & (gaps < 2.5)).all()
    assert (log_hazard[:, 0] > log_hazard[:, 1] + 5).all()  # and the event that comes then is type 0


def test_never_is_a_share_of_each_type_and_all_never_ends_the_customer():
    """A type's time may be never: its survival levels off at that share, and where every type says never
    the next event lands NEVER_HOURS ahead."""
    head = th.TimeHead(16, 4, types=2)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.gate.bias[:] = torch.tensor([0.0, -30.0, 0.0, 0.0, -30.0, np.log(3.0)])  # never: 1/2 and 3/4
    t0 = np.full(40_000, 1.75e9)
    gaps, log_hazard = head.sample(torch.zeros(len(t0), 16), t0, np.random.default_rng(3).random((len(t0), 6)))
    assert abs((gaps == th.NEVER_HOURS).mean() - 0.5 * 0.75) < 0.01
    assert np.isfinite(log_hazard).all()
    x, far = th.clock_hours(t0[:1]), np.array([1e5])
    bin_, log_width, frac = th.grid_position(x, far)
    _, log_surv = head.log_prob(torch.zeros(1, 16), torch.from_numpy(th.utc_day(t0[:1])),
                                torch.from_numpy(np.floor(x)).long(), torch.from_numpy(np.log(far)).float(),
                                torch.from_numpy(bin_), torch.from_numpy(log_width).float(),
                                torch.from_numpy(frac).float())
    assert np.allclose(log_surv.exp().detach().numpy(), [[0.5, 0.75]], atol=1e-4)


def test_grid_position_of_gaps():
    x = np.array([9.6, 9.6, 9.6, 23.5])
    bin_, log_width, frac = th.grid_position(x, np.array([0.2, 0.4, 24.0, 200.0]))
    assert bin_.tolist() == [9, 10, 33, -1]  # same hour, next hour, same hour next day, past the horizon
    assert np.isclose(np.exp(log_width[0]), 0.4) and np.isclose(frac[0], 0.5)
    assert log_width[1] == 0.0 and np.isclose(frac[2], 0.6)


def test_the_grid_starts_at_the_next_clock_hour():
    """The grid places nothing in the hour the customer is in: an event minutes after the last one is the
    log-normal mixture's alone, so a grid hour cannot smear its mass into a burst of close events."""
    head = th.TimeHead(16, 4, types=2)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.gate.bias[:] = torch.tensor([-30.0, 30.0, -30.0, 0.0, 0.0, -30.0])  # type 0: grid; 1: half each
        head.mixture.bias[:] = torch.tensor([0.0] * 4 + [np.log(0.05)] * 4 + [-1.0] * 4).repeat(2)  # ~3 minutes
    t0 = 1.75e9 - 1.75e9 % 86400 + 3600 * 9.5  # 09:30 UTC
    u = np.random.default_rng(4).random((20_000, 6))
    gaps, _ = head.sample(torch.zeros(len(u), 16), np.full(len(u), t0), u)
    grid_only, _ = head.sample(torch.zeros(len(u), 16), np.full(len(u), t0), np.c_[u[:, :3], np.ones((len(u), 3))])
    assert (grid_only >= 0.5).all() and (grid_only < 0.6).mean() > 0.0  # from 10:00 on, 10:00-10:06 included
    assert 0.3 < (gaps < 0.5).mean() < 0.7  # type 1's mixture still comes within the hour, about half the time


def test_a_known_silence_draws_from_the_survival_past_it():
    """Given no event in the first c hours, the gap follows S(t) / S(c) beyond c, drawn exactly (no row
    lands before c), for a silence inside the grid's horizon and one far past it."""
    t0 = 1.75e9 + 3600 * 22.25
    for c in (30.0, 900.0):
        checks = c * np.array([1.0001, 1.05, 1.5, 3.0, 10.0])
        head, h, _, log_surv, _, _ = _head_at(t0, np.r_[c, checks])
        u = np.random.default_rng(5).random((100_000, 3 * TYPES))
        gaps, log_hazard = head.sample(h.expand(len(u), -1), np.full(len(u), t0), u,
                                       silent_h=np.full(len(u), c))
        assert (gaps > c).all() and np.isfinite(log_hazard).all()
        empirical = (gaps[:, None] > checks[None, :]).mean(axis=0)
        assert np.abs(empirical - np.exp(log_surv[1:] - log_surv[0])).max() < 0.01
        # rows without silence in the same batch are drawn as ever
        mixed = np.where(np.arange(len(u)) % 2 == 0, c, 0.0)
        both, _ = head.sample(h.expand(len(u), -1), np.full(len(u), t0), u, silent_h=mixed)
        plain, _ = head.sample(h.expand(len(u), -1), np.full(len(u), t0), u)
        assert np.array_equal(both[1::2], plain[1::2]) and (both[::2] > c).all()


def test_truncated_lognormal_mixture_far_in_a_thin_tail():
    """A silence 40 standard deviations into a component's tail still gives a finite draw just past it."""
    w, mu, ls = np.array([[1.0]]), np.array([[0.0]]), np.array([[-3.0]])
    x = th.truncated_lognormal_mixture(w, mu, ls, np.array([40 * np.exp(-3.0)]), np.array([0.3]), np.array([0.5]))
    assert np.isfinite(x).all() and np.exp(40 * np.exp(-3.0)) <= x[0] < np.exp(41 * np.exp(-3.0))


def test_the_fused_kernel_draws_what_the_vectorised_path_draws(monkeypatch):
    """Same uniforms, same law: the fused Numba draw and the torch/numpy path give the same gaps (up to a
    rare float32 rounding that tips an inverse CDF) and the same hazards at them, at every hour of a week."""
    torch.manual_seed(3)
    head = th.TimeHead(16, 4, types=5)
    n = 20_000
    rng = np.random.default_rng(2)
    h = torch.randn(n, 16)
    t0 = 1.75e9 + rng.random(n) * 7 * 86400
    u = rng.random((n, 3 * 5))
    fused, fused_hazard = head.sample(h, t0, u, 1.0 / 3600)
    monkeypatch.setattr(head, "_grid_exp_is_safe", lambda: False)
    gaps, hazard = head.sample(h, t0, u, 1.0 / 3600)
    same = np.isclose(fused, gaps, rtol=1e-5, atol=1e-7)
    assert same.mean() > 0.999
    assert np.allclose(fused_hazard[same], hazard[same], rtol=1e-3, atol=1e-3)
    assert (fused == th.NEVER_HOURS).sum() == (gaps == th.NEVER_HOURS).sum()


def test_scoring_one_day_equals_the_full_grid():
    """A gap's grid terms come from its day's hours alone (``grid_at``); they are the full grid's (every day's
    hours, ``grid_log_probs``): the bin's probability and the mass after the gap, at every hour of a week,
    for gaps in the current hour, later today, on later days and past the horizon."""
    torch.manual_seed(4)
    head = th.TimeHead(16, 4, types=TYPES)
    rng = np.random.default_rng(6)
    n = 4_000
    t0 = 1.75e9 + rng.random(n) * 7 * 86400
    x = th.clock_hours(t0)
    gaps = np.exp(rng.uniform(np.log(1e-3), np.log(300.0), n))
    bin_, _, frac = th.grid_position(x, gaps)
    h, day0, hour0 = torch.randn(n, 16), torch.from_numpy(th.utc_day(t0)), torch.from_numpy(np.floor(x)).long()
    with torch.no_grad():
        inside, log_pb, log_surv = head.grid_at(h, day0, hour0, torch.from_numpy(bin_), torch.from_numpy(frac).float())
        p = head.grid_log_probs(h, day0, hour0).double().exp().numpy()  # (n, types, BINS)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5)
    gone = np.broadcast_to(np.arange(BINS)[None, None, :] <= np.floor(x)[:, None, None], p.shape)
    assert (p[gone] == 0).all()  # nothing before the next clock hour
    assert (bin_ == -1).any() and (bin_ == np.floor(x)).any() and (bin_ >= 24).any()
    b = np.maximum(bin_, 0)
    p_b = np.take_along_axis(p, b[:, None, None].repeat(TYPES, 1), -1)[..., 0]
    later = (p * (np.arange(BINS)[None, None, :] > b[:, None, None])).sum(-1) + p_b * (1 - frac)[:, None]
    ok = bin_ >= 0
    assert (inside.numpy() == ok[:, None]).all() and np.isneginf(log_surv.numpy()[~ok]).all()
    assert np.allclose(np.exp(log_pb.double().numpy()[ok]), p_b[ok], atol=1e-6)
    assert np.allclose(np.exp(log_surv.double().numpy()[ok]), later[ok], atol=1e-5)
