"""Numba kernels for the hot loops of encoding and sampling.

* ``calendar``: hour, weekday, day of month, month and days to month end from epoch seconds.
* ``uniforms``: counter-based random numbers keyed by (seed, user, step, purpose), so that a user's draws
  do not depend on which other users share the batch (common random numbers across scenarios).
* ``sample_categorical`` / ``sample_lognormal_mixture`` / ``sample_normal_mixture``: inverse-CDF draws.
* ``recency_features`` / ``decayed_counts``: the model's long-memory inputs (days since, recent counts).
"""

from __future__ import annotations

import functools
import math

import numba as nb
import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
MEMORY_PERIODS = 3  # periods (days between consecutive amounts) kept per amount type by ``_remember``


@nb.njit(cache=True)
def _splitmix64(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    z = x
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def uniforms(seed, users, steps, purpose, n):
    """(len(users), n) uniforms in (0, 1), a pure function of (seed, user, step, purpose, column)."""
    out = np.empty((users.shape[0], n))
    base = _splitmix64(np.uint64(seed) ^ (np.uint64(purpose) << np.uint64(56)))
    for i in range(users.shape[0]):
        key = _splitmix64(base ^ np.uint64(users[i]))
        key = _splitmix64(key ^ np.uint64(steps[i]))
        for j in range(n):
            z = _splitmix64(key + np.uint64(j))
            out[i, j] = ((z >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)
    return out


@nb.njit(cache=True)
def calendar(epoch_seconds):
    """(n, 5) int array: hour 0-23, weekday 0-6 (Monday 0), day of month 1-31, month 1-12 and days to
    the end of the month (0 on its last day), for UTC epoch seconds."""
    n = epoch_seconds.shape[0]
    out = np.empty((n, 5), dtype=np.int64)
    for i in range(n):
        s = int(math.floor(epoch_seconds[i]))
        days = s // 86400
        out[i, 0] = (s - days * 86400) // 3600
        out[i, 1] = (days + 3) % 7
        # civil_from_days (H. Hinnant), proleptic Gregorian
        z = days + 719468
        era = (z if z >= 0 else z - 146096) // 146097
        doe = z - era * 146097
        yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
        y = yoe + era * 400
        doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
        mp = (5 * doy + 2) // 153
        d = doy - (153 * mp + 2) // 5 + 1
        m = mp + 3 if mp < 10 else mp - 9
        if m <= 2:
            y += 1
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        length = 31
        if m == 2:
            length = 29 if leap else 28
        elif m == 4 or m == 6 or m == 9 or m == 11:
            length = 30
        out[i, 2] = d
        out[i, 3] = m
        out[i, 4] = length - d
    return out


@nb.njit(cache=True)
def sample_categorical(probs, u):
    """One index per row of ``probs`` (rows sum to 1) by inverting the CDF at ``u``."""
    out = np.empty(probs.shape[0], dtype=np.int64)
    for i in range(probs.shape[0]):
        acc = 0.0
        k = probs.shape[1] - 1
        for j in range(probs.shape[1]):
            acc += probs[i, j]
            if u[i] < acc:
                k = j
                break
        out[i] = k
    return out


@nb.njit(cache=True)
def _normal_ppf(p):
    # Acklam's rational approximation, relative error < 1.2e-9: fine for sampling.
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
        ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


@nb.njit(cache=True)
def sample_normal_mixture(weights, means, log_scales, u_component, u_value):
    """One draw per row from a Gaussian mixture (weights sum to 1 per row)."""
    n, k = weights.shape
    out = np.empty(n)
    for i in range(n):
        acc = 0.0
        c = k - 1
        for j in range(k):
            acc += weights[i, j]
            if u_component[i] < acc:
                c = j
                break
        out[i] = means[i, c] + math.exp(log_scales[i, c]) * _normal_ppf(u_value[i])
    return out


@nb.njit(cache=True)
def sample_lognormal_mixture(weights, log_means, log_scales, u_component, u_value):
    """One positive draw per row from a log-normal mixture."""
    return np.exp(sample_normal_mixture(weights, log_means, log_scales, u_component, u_value))


@functools.cache
def start_parallel_pool() -> None:
    """Start Numba's thread pool (once), keeping torch's thread count. Numba's OpenMP layer sets the
    process's OpenMP thread count, which torch reads as its own, to NUMBA_NUM_THREADS when the pool starts:
    left to the first parallel kernel, that silently put torch back on every core in a process that had
    set it to one thread (``rowwise.one_thread``, ``torch.set_num_threads``, OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    nb.get_num_threads()  # starts the pool
    torch.set_num_threads(threads)


def recency_features(now_days, last_days, recent, decay, linear_cap, anchors):
    """:func:`_recency_features` on Numba's pool, started without changing torch's threads."""
    start_parallel_pool()
    return _recency_features(now_days, last_days, recent, decay, linear_cap, anchors)


@nb.njit(cache=True, parallel=True)
def _recency_features(now_days, last_days, recent, decay, linear_cap, anchors):
    """(n, (3 + a)k) float32 for every row's k recency columns: log(1 + days since), min(days since, cap) / 7,
    log(1 + the decayed count ``recent`` times ``decay``), then log(1 + days since) spread over ``a`` hat
    functions centred on ``anchors`` (log(1 + anchor days), increasing): at most two neighbouring hats are
    non-zero and they sum to one, the last one holding everything beyond its anchor."""
    n, k = last_days.shape
    a = len(anchors)
    out = np.zeros((n, (3 + a) * k), dtype=np.float32)
    for i in nb.prange(n):
        for j in range(k):
            since = max(now_days[i] - last_days[i, j], 0.0)
            x = math.log1p(since)
            out[i, j] = x
            out[i, k + j] = min(since, linear_cap) / 7.0
            out[i, 2 * k + j] = math.log1p(recent[i, j] * decay[i])
            if x >= anchors[a - 1]:
                out[i, (2 + a) * k + j] = 1.0
                continue
            b = 0
            while x >= anchors[b + 1]:
                b += 1
            f = (x - anchors[b]) / (anchors[b + 1] - anchors[b])
            out[i, (3 + b) * k + j] = 1.0 - f
            out[i, (4 + b) * k + j] = f
    return out


@nb.njit(cache=True)
def decayed_counts(keys, days, offsets, k, scale_days):
    """(n, k) float32: per user, for every event, each column's count of past events (this one included)
    with weights exp(-age / scale_days); ``keys`` (n, groups) holds the column each event sets (-1: none)."""
    n, groups = keys.shape
    out = np.zeros((n, k), dtype=np.float32)
    state = np.zeros(k)
    for u in range(len(offsets) - 1):
        state[:] = 0.0
        for i in range(offsets[u], offsets[u + 1]):
            if i > offsets[u]:
                state *= math.exp(-(days[i] - days[i - 1]) / scale_days)
            for g in range(groups):
                if keys[i, g] >= 0:
                    state[keys[i, g]] += 1.0
            out[i, :] = state
    return out


@nb.njit(cache=True)
def _remember(state, gap_days, type_code, amount, amount_z, amount_slot, n_amount, sum_scale, count_scale):
    """Advance one user's memory ``state`` by ``gap_days`` and record one event (see ``memory_inputs``).

    Layout: per amount type the latest standardised amount, the decayed sum of amounts; per event type the
    decayed count; per amount type the days since its latest amount plus one (0: never), then the days
    between its latest two amounts (its period: a fortnightly salary is not a monthly one), between the two
    before, and between the two before those (0: not yet); per event type the count since the first event
    (not decayed); the days since the first event plus one (0: no event yet)."""
    a = n_amount
    n_types = memory_types(len(state), a)
    age = 2 * a + n_types
    lifetime = age + (1 + MEMORY_PERIODS) * a
    elapsed = lifetime + n_types
    if state[elapsed] > 0.0:
        state[elapsed] += gap_days
    else:
        state[elapsed] = 1.0
    shrink_sum, shrink_count = math.exp(-gap_days / sum_scale), math.exp(-gap_days / count_scale)
    for j in range(a):
        state[a + j] *= shrink_sum
        if state[age + j] > 0.0:
            state[age + j] += gap_days
    for j in range(n_types):
        state[2 * a + j] *= shrink_count
    slot = amount_slot[type_code]
    if slot >= 0 and not math.isnan(amount):
        state[slot] = amount_z
        state[a + slot] += abs(amount)
        if state[age + slot] > 0.0:
            for k in range(MEMORY_PERIODS - 1, 0, -1):
                state[age + (k + 1) * a + slot] = state[age + k * a + slot]
            state[age + a + slot] = state[age + slot] - 1.0
        state[age + slot] = 1.0
    state[2 * a + type_code] += 1.0
    state[lifetime + type_code] += 1.0


@nb.njit(cache=True)
def memory_state_size(n_amount, n_types):
    """Length of one user's raw memory (``_remember``)."""
    return (3 + MEMORY_PERIODS) * n_amount + 2 * n_types + 1


@nb.njit(cache=True)
def memory_types(size, n_amount):
    """The number of event types of a raw memory of length ``size`` (``memory_state_size``)."""
    return (size - (3 + MEMORY_PERIODS) * n_amount - 1) // 2


@nb.njit(cache=True)
def memory_of_log(event_type, amount, amount_z, days, offsets, amount_slot, n_amount, n_types, sum_scale,
                  count_scale):
    """(n, ``memory_state_size``) float64 raw memory just after every event of every user (``memory_inputs``)."""
    n = len(event_type)
    state = np.zeros(memory_state_size(n_amount, n_types))
    out = np.zeros((n, len(state)))
    for u in range(len(offsets) - 1):
        state[:] = 0.0
        for i in range(offsets[u], offsets[u + 1]):
            gap = days[i] - days[i - 1] if i > offsets[u] else 0.0
            _remember(state, gap, event_type[i], amount[i], amount_z[i], amount_slot, n_amount, sum_scale,
                      count_scale)
            out[i, :] = state
    return out


@nb.njit(cache=True)
def remember(state, rows, gap_days, event_type, amount, amount_z, amount_slot, n_amount, sum_scale, count_scale):
    """In place, for each of ``rows`` of a batch's memory ``state``: advance and record that row's event."""
    for r in rows:
        _remember(state[r], gap_days[r], event_type[r], amount[r], amount_z[r], amount_slot, n_amount, sum_scale,
                  count_scale)


# ------------------------------------------------------------------------------------ the time head's draws
_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@nb.njit(cache=True)
def _log_ndtr(z):
    """log Phi(z), accurate far into the lower tail (an asymptotic series where erfc underflows)."""
    if z > -37.0:
        return math.log(0.5 * math.erfc(-z / _SQRT2))
    z2 = z * z
    return -0.5 * z2 - math.log(-z) - _LOG_SQRT_2PI + math.log(1.0 - 1.0 / z2 + 3.0 / (z2 * z2))


@nb.njit(cache=True)
def _logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@nb.njit(cache=True)
def _mixture_log_terms(log_w, mu, log_scale, log_gap):
    """(log density, log survival) at ``log_gap`` of a Gaussian mixture, in the log domain (the slow way,
    for where the linear sums underflow)."""
    m = len(log_w)
    pdf_top, surv_top = -np.inf, -np.inf
    for j in range(m):
        z = (log_gap - mu[j]) / math.exp(log_scale[j])
        pdf_top = max(pdf_top, log_w[j] - 0.5 * z * z - log_scale[j] - _LOG_SQRT_2PI)
        surv_top = max(surv_top, log_w[j] + _log_ndtr(-z))
    pdf, surv = 0.0, 0.0
    for j in range(m):
        z = (log_gap - mu[j]) / math.exp(log_scale[j])
        pdf += math.exp(log_w[j] - 0.5 * z * z - log_scale[j] - _LOG_SQRT_2PI - pdf_top)
        if surv_top > -np.inf:
            surv += math.exp(log_w[j] + _log_ndtr(-z) - surv_top)
    return pdf_top + math.log(pdf), (surv_top + math.log(surv) if surv_top > -np.inf else -np.inf)


@nb.njit(cache=True)
def _mixture_draw(mixture, i, t, u_component, u_value):
    """Row ``i``'s draw of type ``t``'s log-normal mixture (hours): a component, then a value by inverse CDF."""
    m = mixture.shape[3]
    acc, c = 0.0, m - 1
    for j in range(m):
        acc += mixture[i, t, 0, j]
        if u_component < acc:
            c = j
            break
    return math.exp(mixture[i, t, 1, c] + mixture[i, t, 3, c] * _normal_ppf(u_value))


@nb.njit(cache=True)
def draw_grid_days(log_gate, mixture, day_p, x, u, min_gap_h, never_h):
    """The first half of the time head's fused draw (``TimeHead.sample`` without silence): each type's part,
    its log-normal mixture time or its grid day, and from those the grid day the gap falls on, whose hour
    probabilities the second half (:func:`finish_competing_times`) needs.

    Per row and type: ``log_gate`` (rows, types, 3) log weights of the parts (log-normal mixture, grid,
    never); ``mixture`` (rows, types, 4, K) the mixture's weights, means, log scales and scales of log(gap
    in hours); ``day_p`` (rows, types, days) the grid's day probabilities; ``x`` (rows,) the current clock
    hour (hours since the grid's UTC midnight); ``u`` (rows, types, 3) uniforms (part, then two within it).

    Returns (the earliest mixture time (rows,), ``never_h`` if none; the gap's grid day (rows,), -1 past the
    horizon; each type's grid day (rows, types), -1 where it did not draw the grid; the uniform that picks
    its hour within that day (rows, types)). The grid's inverse CDF over all its bins, day-major, is the
    day's then the hour's: the day takes the first uniform, and what is left of it, rescaled, the hour."""
    n, k, days = day_p.shape[0], day_p.shape[1], day_p.shape[2]
    earliest = np.full(n, never_h)
    gap_day = np.full(n, -1, dtype=np.int64)
    grid_day = np.full((n, k), -1, dtype=np.int64)
    u_hour = np.zeros((n, k))
    for i in range(n):
        first_day = days
        for t in range(k):
            g0 = math.exp(log_gate[i, t, 0])
            u0 = u[i, t, 0]
            if u0 < g0:
                earliest[i] = min(earliest[i], _mixture_draw(mixture, i, t, u[i, t, 1], u[i, t, 2]))
            elif u0 < g0 + math.exp(log_gate[i, t, 1]):
                total = 0.0
                for j in range(days):
                    total += day_p[i, t, j]
                target, acc, d = u[i, t, 1] * total, 0.0, -1
                for j in range(days):
                    if day_p[i, t, j] > 0.0:
                        d = j
                        if target < acc + day_p[i, t, j]:
                            break
                        acc += day_p[i, t, j]
                if d >= 0:
                    grid_day[i, t] = d
                    u_hour[i, t] = min(max((target - acc) / day_p[i, t, d], 0.0), 1.0 - 1e-12)
                    first_day = min(first_day, d)
        if first_day < days and max(first_day * 24.0, math.floor(x[i]) + 1.0) - x[i] < earliest[i]:
            gap_day[i] = first_day  # a grid time of that day may come first: the gap falls on it
        else:
            y = x[i] + min(max(earliest[i], min_gap_h), never_h)
            gap_day[i] = int(math.floor(y)) // 24 if y < days * 24.0 else -1
    return earliest, gap_day, grid_day, u_hour


@nb.njit(cache=True)
def finish_competing_times(log_gate, mixture, day_p, hours, x, u, earliest, gap_day, grid_day, u_hour, min_gap_h,
                           never_h):
    """The second half of the time head's fused draw: (gaps in hours, every type's log hazard at the gap,
    (rows, types)). ``hours`` (rows, types x 24) are the *unnormalised* hour probabilities, exp(logit), of
    each row's ``gap_day`` (from :func:`draw_grid_days`, with its other outputs); on grid day 0 the hours
    up to the current one are impossible and skipped. The types whose grid day is the gap's draw their hour
    there, then a time uniform within what is left of it; the gap is the earliest of all the types' times
    (``never_h`` if all say never, at least ``min_gap_h``). Each type's log density of log gap and log
    survival at the gap give its hazard, in float64 (mixture sums in the linear domain, redone in the log
    domain where they underflow). A part whose weight is below 2^-60 of "never" cannot change a survival in
    float64 and is skipped there."""
    n, k, days = day_p.shape[0], day_p.shape[1], day_p.shape[2]
    m = mixture.shape[3]
    gaps = np.empty(n)
    log_hazard = np.empty((n, k))
    hour_total = np.empty(k)  # each type's hour mass on the gap's day, over the hours still possible
    log_w = np.empty(m)
    negligible = 60.0 * math.log(2.0)
    for i in range(n):
        d = gap_day[i]
        lo = int(math.floor(x[i])) + 1 if d == 0 else 0  # the first possible hour of the gap's day
        soonest = earliest[i]
        if d >= 0:
            for t in range(k):
                s = 0.0
                for j in range(lo, 24):
                    s += hours[i, t * 24 + j]
                hour_total[t] = s
                if grid_day[i, t] == d and s > 0.0:  # this type's grid time is on the gap's day: its hour
                    target, acc, hr = u_hour[i, t] * s, 0.0, 23
                    for j in range(lo, 24):
                        acc += hours[i, t * 24 + j]
                        if target < acc:
                            hr = j
                            break
                    start = max(d * 24.0 + hr, x[i])
                    soonest = min(soonest, start + u[i, t, 2] * (d * 24.0 + hr + 1.0 - start) - x[i])
        gap = min(max(soonest, min_gap_h), never_h)
        gaps[i] = gap
        log_gap = math.log(gap)
        y = x[i] + gap
        b_ = int(math.floor(y))
        inside = b_ < days * 24
        if inside and b_ // 24 != d:
            raise ValueError("finish_competing_times: the gap left the day whose hours were scored")
        hr = b_ % 24
        log_width, frac = 0.0, 0.0
        if inside:
            start = max(float(b_), x[i])
            width = b_ + 1.0 - start
            log_width = math.log(width)
            frac = min(max((y - start) / width, 0.0), 1.0)
        for t in range(k):
            lg0, lg1, lg2 = log_gate[i, t, 0], log_gate[i, t, 1], log_gate[i, t, 2]
            need_mix_surv = lg0 > lg2 - negligible
            pdf, surv = 0.0, 0.0  # the mixture's density of log gap and survival, linear
            for j in range(m):
                z = (log_gap - mixture[i, t, 1, j]) / mixture[i, t, 3, j]
                if abs(z) < 38.0:
                    pdf += mixture[i, t, 0, j] * math.exp(-0.5 * z * z) / mixture[i, t, 3, j]
                if need_mix_surv:
                    if z < -8.3:  # erfc(z / sqrt 2) is 2 to float64 precision
                        surv += mixture[i, t, 0, j]
                    elif z < 38.0:
                        surv += mixture[i, t, 0, j] * 0.5 * math.erfc(z / _SQRT2)
            mix_surv = -np.inf
            if pdf > 1e-280 and (surv > 1e-280 or not need_mix_surv):
                mix_pdf = math.log(pdf) - _LOG_SQRT_2PI
                if need_mix_surv:
                    mix_surv = math.log(surv)
            else:
                for j in range(m):
                    log_w[j] = math.log(mixture[i, t, 0, j]) if mixture[i, t, 0, j] > 0.0 else -np.inf
                mix_pdf, mix_surv = _mixture_log_terms(log_w, mixture[i, t, 1], mixture[i, t, 2], log_gap)
            # the grid's: the gap's bin's probability (its day's times its hour's) spread over its width, and
            # the mass after the gap (the later days', and the later hours' of its day)
            grid_pdf, grid_surv = -np.inf, -np.inf
            if inside:
                day_total = 0.0
                for j in range(days):
                    day_total += day_p[i, t, j]
                p_day = day_p[i, t, d] / day_total if day_total > 0.0 else 0.0
                p_hour = hours[i, t * 24 + hr] / hour_total[t] if hr >= lo and hour_total[t] > 0.0 else 0.0
                if p_day * p_hour > 0.0:
                    grid_pdf = math.log(p_day * p_hour) - log_width + log_gap
                if lg1 > lg2 - negligible and day_total > 0.0:
                    later_days = 0.0
                    for j in range(d + 1, days):
                        later_days += day_p[i, t, j]
                    later_hours = 0.0
                    if hour_total[t] > 0.0:
                        for j in range(max(hr + 1, lo), 24):
                            later_hours += hours[i, t * 24 + j]
                        later_hours /= hour_total[t]
                    later = later_days / day_total + p_day * (later_hours + p_hour * (1.0 - frac))
                    grid_surv = math.log(max(later, 1e-30))
            log_pdf = _logaddexp(lg0 + mix_pdf, lg1 + grid_pdf)
            log_surv = _logaddexp(_logaddexp(lg0 + mix_surv, lg1 + grid_surv), lg2)
            log_hazard[i, t] = log_pdf - log_surv
    return gaps, log_hazard
