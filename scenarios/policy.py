"""The recommender interface: what a policy under test is asked at each decision point and what it answers.

A *decision point* is a trigger event of a customer (by default each login; ``share`` of them, each
customer's own draw, so that every policy run on the same customers gets the same decision points). At
each one the environment (a twin's cohort engine or the reference world) asks the policy what to show:
one product of the :class:`Catalogue` or nothing. A shown product is the controlled event (``offer_shown``
with that product), which the environment imposes a few seconds after the trigger; what the customer does
next (clicks, buys, ignores, leaves) is drawn by the environment: the learned model in a twin, the world's
own laws in the reference world.

Policies are called in **batches** (:class:`DecisionBatch`: every decision point of a cohort that is due,
in time order) and return one action per request (:class:`Actions`, or anything :func:`as_actions`
accepts). A policy that learns receives :class:`Outcomes` through ``feedback`` once each shown offer's
outcome window has closed (at the engine's next update, ``UPDATE_HOURS``), so feedback loops appear
without the policy ever seeing the future.

A policy is any object with ``decide``; ``bind`` and ``feedback`` are optional::

    class MyPolicy:
        name = "my-policy"

        def bind(self, catalogue: Catalogue, seed: int) -> None:
            self.products = catalogue.products           # told once, before the first decision

        def decide(self, batch: DecisionBatch) -> Actions:
            pick = (batch.uniforms[:, 0] * len(self.products)).astype(int)
            return Actions(product=np.array(self.products, dtype=object)[pick],
                           propensity=np.full(len(batch), 1 / len(self.products)))

        def feedback(self, outcomes: Outcomes) -> None:
            ...                                          # optional: learn online

Every cohort (and every chunk of the reference world) gets its own fresh instance from the policy's
spec (:func:`twinsim.scenarios.policies.load_policy`), so results do not depend on the order cohorts run
in or on the number of workers; a learning policy learns from the customers of its cohort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError

RECENT_EVENTS = 20  # a request carries at most this many of the customer's latest events
RECENT_DAYS = 30  # ... of the last this many days
POLICY_UNIFORMS = 4  # uniforms per request for the policy's own randomness
FEEDBACK_HOURS = 24.0  # an offer's outcome: a click / purchase of the shown product within this many hours
UPDATE_HOURS = 24.0  # outcomes whose window has closed are fed back at most this long after it closed
PURPOSE_DECISION = 200  # keyed by (seed, customer, trigger number): is the trigger a decision point, its delay
PURPOSE_POLICY = 201  # keyed by (seed, customer, decision number): the request's ``uniforms``


class PolicyError(TwinsimError):
    """A policy could not be loaded, or answered something that is not an action (its spec is named)."""


@dataclass(frozen=True)
class Catalogue:
    """What a policy may show: ``products`` (the values of ``mark`` on ``event_type``), with a value per
    purchase (revenue in the report), and the categorical attributes a request carries, with their values."""

    products: list[str]
    event_type: str = "offer_shown"
    mark: str = "product"
    values: dict[str, float] = field(default_factory=dict)
    segments: dict[str, list[str]] = field(default_factory=dict)

    def value(self, product: str) -> float:
        return float(self.values.get(product, 1.0))


@dataclass
class DecisionBatch:
    """Decision requests, one row each, in time order.

    ``request_id`` (str): ``"<user_id>:<n>"``, the customer's n-th decision of the run (stable across
    policies and reruns); ``user_id``; ``time`` (UTC): when the offer would be shown; ``attributes``: the
    customers' static attributes, one row per request; ``recent``: their latest events (at most
    ``RECENT_EVENTS`` of the last ``RECENT_DAYS`` days, before ``time``), one row per event with
    ``request`` (the row of the batch), ``timestamp``, ``event_type``, ``amount`` and the mark columns,
    oldest first; ``uniforms`` (n, ``POLICY_UNIFORMS``): the request's own uniforms in (0, 1), a pure
    function of (seed, customer, decision number), the same for every policy (common random numbers)."""

    request_id: np.ndarray
    user_id: np.ndarray
    time: pd.DatetimeIndex
    attributes: pd.DataFrame
    recent: pd.DataFrame
    uniforms: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)

    def recent_of(self, i: int) -> pd.DataFrame:
        """Request ``i``'s recent events."""
        return self.recent[self.recent["request"].to_numpy() == i]


@dataclass
class Actions:
    """One answer per request: ``product`` (object array: a catalogue product, or None for nothing);
    ``propensity``: the probability with which the policy chose that answer (None: not given; NaN: not
    given for that request);
    ``probabilities`` (n, products + 1; the last column is "nothing"): the policy's whole distribution,
    which off-policy estimators use (None: not given; a deterministic policy's is its choice).
    An adapter that stands in for a remote policy (``policies/http.py``) also fills ``failure`` (object:
    None where the policy answered, else why its fallback was taken: "timeout", "http 503", "connection",
    "malformed", "unknown product") and ``latency_ms`` (float, NaN where no call was made)."""

    product: np.ndarray
    propensity: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    failure: np.ndarray | None = None
    latency_ms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.product)


@dataclass
class Outcomes:
    """What came of shown offers, one row each: ``request_id``, ``user_id``, ``product``, ``shown_time``,
    ``clicked`` and ``purchased`` (a click / purchase of that product within ``FEEDBACK_HOURS``) and
    ``value`` (the catalogue's value if purchased, else 0)."""

    request_id: np.ndarray
    user_id: np.ndarray
    product: np.ndarray
    shown_time: pd.DatetimeIndex
    clicked: np.ndarray
    purchased: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)


@runtime_checkable
class Policy(Protocol):
    """Anything with ``decide``; ``name``, ``bind(catalogue, seed)`` and ``feedback(outcomes)`` are optional."""

    def decide(self, batch: DecisionBatch) -> Actions | Sequence | np.ndarray: ...


def as_actions(answer, n: int, catalogue: Catalogue, where: str) -> Actions:
    """A policy's answer to a batch of ``n`` requests as :class:`Actions`, checked: :class:`Actions`, a
    sequence of products (None or "" for nothing), or a (products, propensities) pair. ``where`` names the
    policy in the error a wrong shape or an unknown product raises."""
    example = ('e.g. return Actions(product=np.array(["savings", None], dtype=object), propensity=np.array([0.5, 1.0]))'
               ' or simply ["savings", None], one entry per request')
    if isinstance(answer, Actions):
        actions = answer
    elif isinstance(answer, tuple) and len(answer) == 2:
        actions = Actions(product=np.asarray(answer[0], dtype=object),
                          propensity=None if answer[1] is None else np.asarray(answer[1], dtype=float))
    elif isinstance(answer, (list, np.ndarray, pd.Series, pd.Index)):
        actions = Actions(product=np.asarray(answer, dtype=object))
    else:
        raise PolicyError(f"{where}: decide() returned {type(answer).__name__}; it must return one action per "
                          f"request; {example}")
    product = np.asarray(actions.product, dtype=object).reshape(-1) if np.ndim(actions.product) <= 1 else None
    if product is None or len(product) != n:
        got = np.shape(actions.product)
        raise PolicyError(f"{where}: decide() returned {got} actions for {n} requests; it must return one per "
                          f"request, in the batch's order; {example}")
    product = np.array([None if p is None or (isinstance(p, float) and np.isnan(p)) or p == "" else str(p)
                        for p in product], dtype=object)
    known = set(catalogue.products)
    unknown = sorted({p for p in product if p is not None and p not in known})
    if unknown:
        raise PolicyError(f"{where}: decide() chose {unknown}, not products of the catalogue {catalogue.products}; "
                          "answer one of them or None (show nothing)")
    propensity = None
    if actions.propensity is not None:
        propensity = np.asarray(actions.propensity, dtype=float).reshape(-1)
        if len(propensity) != n or np.any(np.isinf(propensity)) or np.any((propensity <= 0) | (propensity > 1)):
            raise PolicyError(f"{where}: decide() returned propensities that are not {n} numbers in (0, 1] (or NaN: "
                              "not given for that request); a propensity is the probability with which the policy "
                              "chose its answer")
    probabilities = None
    if actions.probabilities is not None:
        probabilities = np.asarray(actions.probabilities, dtype=float)
        width = len(catalogue.products) + 1
        if (probabilities.shape != (n, width) or np.any(probabilities < 0)
                or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)):
            raise PolicyError(f"{where}: decide() returned probabilities of shape {probabilities.shape}; they must be "
                              f"({n}, {width}): per request a distribution over the catalogue {catalogue.products} "
                              "and, last, nothing")
    for name in ("failure", "latency_ms"):
        if getattr(actions, name) is not None and len(getattr(actions, name)) != n:
            raise PolicyError(f"{where}: decide() returned {name} for {len(getattr(actions, name))} of {n} requests")
    return Actions(product=product, propensity=propensity, probabilities=probabilities, failure=actions.failure,
                   latency_ms=actions.latency_ms)
