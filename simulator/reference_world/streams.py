"""Per-customer random streams of the reference world: every draw is a pure function of its key.

A uniform is keyed by (seed, customer's global index, day, purpose, j, column): ``purpose`` names what is
drawn (a login, a card payment, a churn decision, ...), ``j`` counts the draws of that purpose a customer
makes on one day (the third login, the second card payment), and ``column`` the numbers one such draw
needs (its hour, its second, its sub-second jitter, ...). No draw depends on any other customer, on the
chunk a customer is simulated in or on how many draws came before it, so a scenario that changes one
customer's day leaves every other customer's numbers as they were (common random numbers), and a longer
window or a larger world begins with the shorter or smaller one.

The uniforms come from ``models.kernels.uniforms`` (splitmix64, counter-based); the transforms below turn
them into the distributions the laws ask for by inverting their CDFs.

>>> s = Streams(seed=1, first_id=0)
>>> u = s.draw(LOGIN, np.array([0, 5]), day=3, n=2, j=np.array([0, 1]))
>>> u.shape, bool(((0 < u) & (u < 1)).all())
((2, 2), True)
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from scipy import special

from twinsim.models import kernels

# Purposes (below 256, the kernel's limit); never renumber one, or every world changes.
POPULATION = 1  # static attributes and latent traits (day 0)
DAILY = 2  # one row per customer and day: engagement, login and payment counts, chance events, churn
INCOME = 3
LOGIN = 4  # j: the login of the day
OFFER = 5  # j: the login that shows the offer
MORTGAGE = 6  # spontaneous mortgage inquiry
INSURANCE = 7  # home-insurance inquiry
CARD = 8  # j: the card payment of the day
FEE = 9
CLOSE = 10
CAMPAIGN_ASSIGN = 11  # j: campaign index (day 0): reach and arm
CAMPAIGN_TIME = 12  # j: campaign index: the exposure's time on its day
CAMPAIGN_OFFER = 13  # j: campaign index: the response to the exposure (laid out as OFFER)
POLICY = 14  # day 0, j: the customer's decision number of the run: a policy request's uniforms

_J_BITS = 16  # the step handed to the kernel is day << _J_BITS | j


class Streams:
    """Uniforms for the customers of one chunk (local index ``i`` is customer ``first_id + i``)."""

    def __init__(self, seed: int, first_id: int) -> None:
        self.seed, self.first_id = int(seed), int(first_id)

    def draw(self, purpose: int, users: np.ndarray, day: int, n: int, j: np.ndarray | None = None) -> np.ndarray:
        """(len(users), n) uniforms in (0, 1) for chunk-local ``users`` on ``day`` (``j`` per row, default 0)."""
        users = np.asarray(users, np.int64)
        steps = np.full(len(users), np.int64(day) << _J_BITS)
        if j is not None:
            steps += np.asarray(j, np.int64)
        return kernels.uniforms(self.seed, users + self.first_id, steps, purpose, n)


def nth(counts: np.ndarray) -> np.ndarray:
    """For rows repeated ``counts`` times (``np.repeat``): each repeat's number 0, 1, ... within its row."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


def normal(u: np.ndarray, mean=0.0, sd=1.0) -> np.ndarray:
    return mean + sd * special.ndtri(u)


def gamma(u: np.ndarray, shape, scale=1.0) -> np.ndarray:
    return special.gammaincinv(shape, u) * scale


def exponential(u: np.ndarray, mean) -> np.ndarray:
    return -np.log(u) * mean


def pareto(u: np.ndarray, alpha: float) -> np.ndarray:
    """numpy's ``Generator.pareto`` (Lomax): ``(1 - u) ** (-1 / alpha) - 1``."""
    return u ** (-1.0 / alpha) - 1.0


def integers(u: np.ndarray, low, high) -> np.ndarray:
    """Integers in [low, high)."""
    return (low + np.floor(u * (np.asarray(high) - low))).astype(np.int64)


def uniform(u: np.ndarray, low, high) -> np.ndarray:
    return low + u * (high - low)


def categorical(u: np.ndarray, cdf_rows: np.ndarray) -> np.ndarray:
    """One index per row of the row-wise cumulative distributions ``cdf_rows`` (a single CDF broadcasts)."""
    if cdf_rows.ndim == 1:
        return np.minimum(np.searchsorted(cdf_rows, u, side="left"), len(cdf_rows) - 1)
    return np.minimum((cdf_rows < u[:, None]).sum(axis=1), cdf_rows.shape[1] - 1)


@nb.njit(cache=True)
def poisson(rate, u):
    """Poisson counts by inverting the CDF at ``u`` (rates of a few a day: a short walk up from zero)."""
    out = np.empty(rate.shape[0], dtype=np.int64)
    for i in range(rate.shape[0]):
        lam = rate[i]
        p = math.exp(-lam)
        cdf = p
        k = 0
        while u[i] > cdf and k < 10_000:
            k += 1
            p *= lam / k
            cdf += p
            if p == 0.0 and k > lam:
                break
        out[i] = k
    return out
