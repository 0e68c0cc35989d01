"""Built-in policies: baselines and bandits to put next to the policy under test.

``logged`` is the environment's own choice: in a twin the product the model draws for an ``offer_shown``
(the bank's logging policy as the model learned it), in the reference world the world's own targeting.
"""

from __future__ import annotations

import numpy as np

from twinsim.scenarios.policy import Actions, Catalogue, DecisionBatch


class LoggedPolicy:
    """The environment's own choice at each decision point (the engine sees ``environment_choice``)."""

    name = "logged"
    environment_choice = True

    def decide(self, batch: DecisionBatch) -> Actions:
        raise NotImplementedError("the environment answers for the logged policy (environment_choice)")


class RandomPolicy:
    """A uniformly random product of the catalogue at each decision (``show``: the share of decisions that
    show anything, the rest show nothing)."""

    name = "random"

    def __init__(self, show: float = 1.0) -> None:
        self.show = float(show)

    def bind(self, catalogue: Catalogue, seed: int) -> None:
        self.products = np.array(catalogue.products, dtype=object)

    def decide(self, batch: DecisionBatch) -> Actions:
        k = len(self.products)
        pick = np.minimum((batch.uniforms[:, 0] * k).astype(int), k - 1)
        shows = batch.uniforms[:, 1] < self.show
        product = np.where(shows, self.products[pick], None)
        probabilities = np.zeros((len(batch), k + 1))
        probabilities[:, :k] = self.show / k
        probabilities[:, k] = 1.0 - self.show
        propensity = np.where(shows, self.show / k, 1.0 - self.show)
        return Actions(product=product, propensity=propensity, probabilities=probabilities)


BUILTINS = {"random": RandomPolicy, "logged": LoggedPolicy}
