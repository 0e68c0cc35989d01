"""Built-in policies: baselines and bandits to put next to the policy under test (``docs/recommenders.md``).

Every built-in shows something at ``show`` of its decisions (the request's own uniform decides) and returns
its whole distribution (``Actions.probabilities``), so off-policy estimators can evaluate it. The learners
(``popular``, ``segment-greedy``, ``epsilon-greedy``, ``thompson``) learn only from ``feedback`` (and
``popular`` from what requests show); given the same batches and feedback they answer the same.

``logged`` is the environment's own choice: in a twin the product the model draws for an ``offer_shown``
(the bank's logging policy as the model learned it), in the reference world the world's own targeting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from twinsim.models import kernels
from twinsim.scenarios.policy import Actions, Catalogue, DecisionBatch, Outcomes, PolicyError

THOMPSON_DRAWS = 2000  # posterior draws per group that estimate a Thompson policy's probabilities


class LoggedPolicy:
    """The environment's own choice at each decision point (the engine sees ``environment_choice``)."""

    name = "logged"
    environment_choice = True

    def decide(self, batch: DecisionBatch) -> Actions:
        raise PolicyError("logged: the environment answers for the logged policy (environment_choice); it cannot "
                          "be asked outside a twin or the reference world")


class _Builtin:
    """The common part: the catalogue, the ``show`` share, and answers from per-request choice distributions."""

    name = "builtin"

    def __init__(self, show: float = 1.0) -> None:
        if not 0.0 <= float(show) <= 1.0:
            raise PolicyError(f"{self.name}: show={show}: the share of decisions that show something is in [0, 1]; "
                              f"e.g. {self.name}:show=0.5")
        self.show = float(show)

    def bind(self, catalogue: Catalogue, seed: int) -> None:
        self.products = np.array(catalogue.products, dtype=object)
        self.seed = int(seed)

    def choose(self, batch: DecisionBatch) -> np.ndarray:
        """(n, K) probabilities of each product, given that something is shown."""
        raise NotImplementedError

    def pick(self, batch: DecisionBatch, choice: np.ndarray) -> np.ndarray:
        """Each request's product index drawn from ``choice`` (deterministic rules: their argmax)."""
        return kernels.sample_categorical(choice, batch.uniforms[:, 0])

    def decide(self, batch: DecisionBatch) -> Actions:
        n, k = len(batch), len(self.products)
        choice = self.choose(batch)
        pick = self.pick(batch, choice)
        shows = batch.uniforms[:, 1] < self.show
        probabilities = np.concatenate([choice * self.show, np.full((n, 1), 1.0 - self.show)], axis=1)
        chosen = np.where(shows, pick, k)
        return Actions(product=np.where(shows, self.products[pick], None),
                       propensity=probabilities[np.arange(n), chosen], probabilities=probabilities)


class RandomPolicy(_Builtin):
    """A uniformly random product of the catalogue at each decision."""

    name = "random"

    def choose(self, batch):
        return np.full((len(batch), len(self.products)), 1.0 / len(self.products))


class FixedPolicy(_Builtin):
    """Always ``product`` (e.g. one the logged policy rarely shows)."""

    name = "fixed"

    def __init__(self, product: str | None = None, show: float = 1.0) -> None:
        super().__init__(show)
        if not product:
            raise PolicyError("fixed: give the product, e.g. --policy fixed:product=mortgage")
        self.product = str(product)

    def bind(self, catalogue, seed):
        super().bind(catalogue, seed)
        if self.product not in catalogue.products:
            raise PolicyError(f"fixed:product={self.product}: not a product of the catalogue {catalogue.products}")

    def choose(self, batch):
        choice = np.zeros((len(batch), len(self.products)))
        choice[:, list(self.products).index(self.product)] = 1.0
        return choice


class _Learner(_Builtin):
    """Per group (the value of the attribute ``by``; one group if None) and product: shows and rewards
    (clicks, or purchases with ``reward=purchase``) from the outcomes fed back."""

    def __init__(self, by: str | None = None, reward: str = "click", show: float = 1.0) -> None:
        super().__init__(show)
        if reward not in ("click", "purchase"):
            raise PolicyError(f"{self.name}: reward={reward}: the reward is click or purchase; "
                              f"e.g. {self.name}:reward=purchase")
        self.by, self.reward = (None if by in (None, "", "none") else str(by)), reward
        self.groups: dict[str, int] = {}
        self.group_of: dict = {}  # user id -> group, as requests said

    def bind(self, catalogue, seed):
        super().bind(catalogue, seed)
        self.counts = np.zeros((0, 2, len(self.products)))  # group, (shows, rewards), product

    def _group(self, batch: DecisionBatch) -> np.ndarray:
        if self.by is None:
            labels = np.full(len(batch), "all", dtype=object)
        elif self.by not in batch.attributes:
            raise PolicyError(f"{self.name}: by={self.by}: the customers have no such attribute; they have "
                              f"{', '.join(batch.attributes.columns)}")
        else:
            labels = batch.attributes[self.by].astype(str).to_numpy()
        for label in dict.fromkeys(labels):
            if label not in self.groups:
                self.groups[label] = len(self.groups)
                self.counts = np.concatenate([self.counts, np.zeros((1, *self.counts.shape[1:]))])
        self.group_of.update(zip(batch.user_id.tolist(), labels.tolist(), strict=True))
        return np.array([self.groups[g] for g in labels], dtype=np.int64)

    def feedback(self, outcomes: Outcomes) -> None:
        index = {p: j for j, p in enumerate(self.products)}
        group = np.array([self.groups[self.group_of[u]] for u in outcomes.user_id.tolist()], dtype=np.int64)
        product = np.array([index[p] for p in outcomes.product], dtype=np.int64)
        won = outcomes.clicked if self.reward == "click" else outcomes.purchased
        np.add.at(self.counts, (group, 0, product), 1.0)
        np.add.at(self.counts, (group, 1, product), np.asarray(won, dtype=float))


def _best(scores: np.ndarray) -> np.ndarray:
    """One-hot rows of each row's best score (ties: the first in the catalogue)."""
    out = np.zeros_like(scores, dtype=float)
    out[np.arange(len(scores)), np.argmax(scores, axis=1)] = 1.0
    return out


class PopularPolicy(_Learner):
    """The product with the most purchases, then clicks, among all outcomes fed back so far (everyone's);
    before any, the product the batch's requests' recent events bought (then clicked) most; ties go to the
    first in the catalogue."""

    name = "popular"

    def __init__(self, show: float = 1.0) -> None:
        super().__init__(by=None, reward="purchase", show=show)
        self.clicks = None

    def feedback(self, outcomes):
        super().feedback(outcomes)  # purchases
        index = {p: j for j, p in enumerate(self.products)}
        if self.clicks is None:
            self.clicks = np.zeros(len(self.products))
        np.add.at(self.clicks, [index[p] for p in outcomes.product], np.asarray(outcomes.clicked, dtype=float))

    def choose(self, batch):
        self._group(batch)
        if self.clicks is not None and self.counts[0, 0].sum() > 0:
            bought, clicked = self.counts[0, 1], self.clicks
        else:
            recent = batch.recent
            bought, clicked = (np.array([((recent["event_type"] == kind) & (recent.get("product") == p)).sum()
                                         for p in self.products], dtype=float)
                               for kind in ("offer_purchase", "offer_click"))
        return np.repeat(_best((bought * 1e6 + clicked)[None, :]), len(batch), axis=0)


class SegmentGreedyPolicy(_Learner):
    """Per value of ``by`` (default the segment): the product with the highest posterior mean reward rate,
    (rewards + 1) / (shows + 2): optimistic for products not tried yet (0.5), so each is tried."""

    name = "segment-greedy"

    def __init__(self, by: str = "segment", reward: str = "click", show: float = 1.0) -> None:
        super().__init__(by=by, reward=reward, show=show)

    def choose(self, batch):
        g = self._group(batch)
        shows, won = self.counts[g, 0], self.counts[g, 1]
        return _best((won + 1.0) / (shows + 2.0))


class EpsilonGreedyPolicy(_Learner):
    """With probability ``epsilon`` a uniformly random product, else the best observed reward rate per group
    of ``by`` (default: everyone as one group); a product not tried yet counts as rate 1."""

    name = "epsilon-greedy"

    def __init__(self, epsilon: float = 0.1, by: str | None = None, reward: str = "click", show: float = 1.0) -> None:
        super().__init__(by=by, reward=reward, show=show)
        if not 0.0 <= float(epsilon) <= 1.0:
            raise PolicyError(f"epsilon-greedy: epsilon={epsilon} must be in [0, 1]; e.g. epsilon-greedy:epsilon=0.1")
        self.epsilon = float(epsilon)

    def choose(self, batch):
        g = self._group(batch)
        shows, won = self.counts[g, 0], self.counts[g, 1]
        rate = np.where(shows > 0, won / np.maximum(shows, 1.0), 1.0)
        k = len(self.products)
        return (1.0 - self.epsilon) * _best(rate) + self.epsilon / k


class ThompsonPolicy(_Learner):
    """Thompson sampling with a Beta(alpha, beta) prior per (group of ``by``, product): each request draws a
    rate from every product's posterior (inverse CDF of its own uniforms) and shows the highest. Its
    probabilities are estimated from THOMPSON_DRAWS posterior draws per group (a fixed-seed generator), as
    (wins + 1/K) / (draws + 1) over K products: never 0, so every answer has a propensity in (0, 1]."""

    name = "thompson"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, by: str = "segment", reward: str = "click",
                 show: float = 1.0) -> None:
        super().__init__(by=by, reward=reward, show=show)
        if not (float(alpha) > 0 and float(beta) > 0):
            raise PolicyError(f"thompson: alpha={alpha}, beta={beta}: the prior's parameters must be positive")
        self.alpha, self.beta = float(alpha), float(beta)

    def _posterior(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.alpha + self.counts[g, 1], self.beta + self.counts[g, 0] - self.counts[g, 1]

    def choose(self, batch):
        g = self._group(batch)
        groups, index = np.unique(g, return_inverse=True)
        a, b = self._posterior(groups)
        rng = np.random.default_rng(self.seed)
        draws = rng.beta(a[:, None, :], b[:, None, :], size=(len(groups), THOMPSON_DRAWS, len(self.products)))
        wins = np.stack([np.bincount(w, minlength=len(self.products)) for w in draws.argmax(axis=2)])
        self._draw_groups = g
        # (wins + 1/K) / (draws + 1): never 0, since the request's own draw may pick a product no estimate drew
        return ((wins + 1.0 / len(self.products)) / (THOMPSON_DRAWS + 1))[index]

    def pick(self, batch, choice):
        a, b = self._posterior(self._draw_groups)
        keys = (batch.uniforms[:, 2] * 2.0**52).astype(np.int64)  # the request's own draws, one per product
        u = kernels.uniforms(self.seed, keys, np.zeros(len(batch), dtype=np.int64), 1, len(self.products))
        return np.argmax(special.betaincinv(a, b, u), axis=1)


class TrainedGreedyPolicy(SegmentGreedyPolicy):
    """Segment-greedy trained offline on the event log ``log`` (a dataset directory or events file with a users
    table), then frozen: per value of ``by``, the counts of the log's offers (``offer_shown`` events) and their
    rewards within ``FEEDBACK_HOURS`` (``simulator/recommend/metrics.outcomes``), and it shows the product with
    the highest posterior mean rate; it learns nothing online. The dual-track benchmark trains it on the real
    log and on a twin's synthetic one and deploys both in the reference world."""

    name = "trained-greedy"

    def __init__(self, log: str, by: str = "segment", reward: str = "click", show: float = 1.0) -> None:
        super().__init__(by=by, reward=reward, show=show)
        self.log = str(log)

    def bind(self, catalogue, seed):
        super().bind(catalogue, seed)
        from twinsim.models.event_log import load_event_log
        from twinsim.simulator.recommend.metrics import outcomes

        log = load_event_log(self.log)
        if log.users is None or self.by not in log.users:
            raise PolicyError(f"{self.name}: log={self.log} has no users table with the attribute {self.by!r} "
                              "to group by; give a dataset directory with users.parquet, or by=ATTRIBUTE")
        events = log.events
        offers = events[events["event_type"].astype(str) == catalogue.event_type]
        shows = outcomes(pd.DataFrame({"user_id": offers["user_id"].astype(str),
                                       "request_id": np.arange(len(offers)).astype(str),
                                       "timestamp": offers["timestamp"],
                                       "product": offers[catalogue.mark].astype(object)}), events)
        shows = shows[shows["product"].isin(self.products)]
        group = log.users.set_index(log.users["user_id"].astype(str))[self.by].astype(str)
        labels = group.reindex(shows["user_id"]).fillna("").to_numpy()
        for label in dict.fromkeys(labels):
            self.groups[label] = len(self.groups)
        self.counts = np.zeros((len(self.groups), 2, len(self.products)))
        g = np.array([self.groups[x] for x in labels], dtype=np.int64)
        index = {p: j for j, p in enumerate(self.products)}
        product = np.array([index[p] for p in shows["product"]], dtype=np.int64)
        won = shows["clicked" if self.reward == "click" else "purchased"].to_numpy(dtype=float)
        np.add.at(self.counts, (g, 0, product), 1.0)
        np.add.at(self.counts, (g, 1, product), won)
        self.trained_on = int(len(shows))

    def feedback(self, outcomes):
        """Frozen: what it was trained on is all it knows."""


BUILTINS = {"random": RandomPolicy, "logged": LoggedPolicy, "fixed": FixedPolicy, "popular": PopularPolicy,
            "segment-greedy": SegmentGreedyPolicy, "epsilon-greedy": EpsilonGreedyPolicy, "thompson": ThompsonPolicy,
            "trained-greedy": TrainedGreedyPolicy}
