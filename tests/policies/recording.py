"""Policies the tests load by path (``tests/policies/recording.py:Class``), as a user's own would be."""

from __future__ import annotations

import numpy as np

from twinsim.scenarios.policy import Actions


class Recording:
    """Shows ``product`` at every decision; records each batch's times and every feedback's delivery, and
    learns nothing. ``Recording.last`` is the latest instance (one per cohort)."""

    last = None

    def __init__(self, product: str = "savings") -> None:
        self.product, self.batches, self.feedback_seen = product, [], []
        Recording.last = self

    def decide(self, batch):
        self.batches.append(batch)
        return Actions(product=np.full(len(batch), self.product, dtype=object), propensity=np.ones(len(batch)))

    def feedback(self, outcomes):
        self.feedback_seen.append((len(self.batches), outcomes))  # (batches decided before it, outcomes)


class Nothing:
    """Shows nothing, ever."""

    def decide(self, batch):
        return [None] * len(batch)


class WrongShape:
    def decide(self, batch):
        return ["savings"] * (len(batch) + 1)


class Unknown:
    def decide(self, batch):
        return ["a_yacht"] * len(batch)
