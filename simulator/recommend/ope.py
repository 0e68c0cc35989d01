"""Off-policy estimators of a recommender policy's value from a reference world's logged data.

The bank's logging policy (``logged``) chooses the offer at each of the world's decision points and logs the
probability it gave that offer (``decisions.parquet``, column ``propensity``). From those logs alone, the
direct method (DM), inverse propensity weighting (IPW), its self-normalised form (SNIPW) and the doubly robust
estimator (DR) say what another policy would earn per shown offer: CTR (clicked shows / shows) and purchases
per show, as ``metrics.py`` counts them in a run. Formulas, the per-show normalisation, learning policies and
what the estimators cannot see: ``docs/recommenders.md``, "Off-policy estimators".

    bandit = logged_bandit("runs/world")              # the logged decisions: contexts, actions, propensities
    pi_e = target_probabilities("thompson", bandit)   # (n, products + 1) at each logged context
    estimate(bandit, pi_e, "ctr")                      # DM, IPW, SNIPW, DR with bootstrap intervals
    evaluate("runs/world", ["random", "thompson"])     # every estimate of several policies

Open Bandit Pipeline is not used: obp 0.5.7 (the latest) pins torch 1.12, numpy 1.23.5, pandas 1.5.2,
scikit-learn 1.1.3 and scipy 1.9.3 and wants Python < 3.11, so it cannot install beside torch 2.13.0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from twinsim.models.errors import TwinsimError
from twinsim.scenarios.policies import load_policy, policy_name
from twinsim.scenarios.policy import FEEDBACK_HOURS, RECENT_DAYS, Catalogue, DecisionBatch, Outcomes, as_actions
from twinsim.simulator.recommend.metrics import outcomes
from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world.behaviour import DAY, WorldOffers
from twinsim.simulator.reference_world.policy import EVENT_COLUMNS, Requests, call_policy, policy_seed, recent_events
from twinsim.simulator.reference_world.policy import catalogue as world_catalogue
from twinsim.simulator.reference_world.scenario import MARK_CODES
from twinsim.simulator.reference_world.streams import Streams
from twinsim.simulator.reference_world.world import CHUNK_USERS
from twinsim.simulator.whatif.runs import _utc, read_run
from twinsim.simulator.whatif.uplift import _clean

ESTIMATORS = ("dm", "ipw", "snipw", "dr")
METRICS = {"ctr": "clicked", "purchases_per_show": "purchased"}  # the value per show of each reward
BOOTSTRAP = 200  # replicates, resampling customers
LOGGING_BY = "segment"  # the bank's targeting, and so its whole distribution, is by this attribute
HALF_LIFE_DAYS = 10.0  # the reward model's decayed counts of past shows
CLICK_DAYS = 30  # ... and whether the product was clicked within this many days
MIN_ROWS = 20  # a product shown fewer times gets a constant reward model
DAY_US = DAY * 1_000_000
FEEDBACK_US = int(FEEDBACK_HOURS * 3600 * 1_000_000)
OFFER_TYPES = ("offer_shown", "offer_click", "offer_purchase")


@dataclass
class WorldRequests:
    """How a bandit's contexts are rebuilt as the world's own :class:`DecisionBatch` es: per row the chunk's
    first customer, the chunk-local customer, the decision number, the time (microseconds since the window
    start) and the day; per chunk its :class:`Requests`; the world's seed (its policies' ``bind`` seeds)."""

    seed: int
    first: np.ndarray
    local: np.ndarray
    number: np.ndarray
    micros: np.ndarray
    day: np.ndarray
    requests: dict[int, Requests]


@dataclass
class LoggedBandit:
    """The logged decisions of one policy, one row each, in the world's batch order (chunk, time, customer):
    the context (``user_id``, ``time``, the customer's ``attributes``, the ``recent`` events a policy was
    shown: ``request`` is the row), the ``action`` (index into ``products``), its logging propensity
    pi_0(a|x), the rewards ``clicked`` and ``purchased`` (0/1 within 24 h, ``metrics.outcomes``) and
    ``logging``: the logging policy's whole distribution (n, products + 1; last column nothing) as the
    propensities record it. ``offers`` (the customers' offer events) feed the reward model's history
    features; ``world`` rebuilds the batches. A hand-made bandit (tests) may leave the optional fields out."""

    products: list[str]
    user_id: np.ndarray
    time: pd.DatetimeIndex
    attributes: pd.DataFrame
    action: np.ndarray
    propensity: np.ndarray
    clicked: np.ndarray
    purchased: np.ndarray
    logging: np.ndarray
    request_id: np.ndarray | None = None
    recent: pd.DataFrame | None = None
    offers: pd.DataFrame | None = None
    world: WorldRequests | None = None
    where: str = "the logged bandit"

    def __len__(self) -> int:
        return len(self.action)

    def reward(self, metric: str) -> np.ndarray:
        """The reward of ``metric`` (ctr: clicked, purchases_per_show: purchased) per row, as floats."""
        if metric not in METRICS:
            raise TwinsimError(f"unknown metric {metric!r}; the estimators value {', '.join(METRICS)}")
        return np.asarray(getattr(self, METRICS[metric]), dtype=float)

    def blocks(self) -> Iterator[tuple[int, int, slice]]:
        """(chunk's first customer, day, rows) of each batch the world asked, in the world's order."""
        return _blocks(self._world())

    def batch(self, rows: slice) -> DecisionBatch:
        """The :class:`DecisionBatch` of one block's ``rows`` (:meth:`blocks`), as the world built it."""
        w = self._world()
        first = int(w.first[rows.start])
        at = np.searchsorted(self.recent["request"].to_numpy(), [rows.start, rows.stop])
        recent = self.recent.iloc[at[0]:at[1]].reset_index(drop=True)
        recent["request"] -= rows.start
        return w.requests[first].batch(w.local[rows], w.number[rows], w.micros[rows], recent)

    def outcomes(self, rows: np.ndarray, values: Catalogue) -> Outcomes:
        """The logged shows ``rows`` as the :class:`Outcomes` a learning policy is fed."""
        product = np.asarray(self.products, dtype=object)[self.action[rows]]
        purchased = np.asarray(self.purchased[rows], bool)
        return Outcomes(request_id=self.request_id[rows], user_id=self.user_id[rows], product=product,
                        shown_time=self.time[rows], clicked=np.asarray(self.clicked[rows], bool), purchased=purchased,
                        value=np.where(purchased, [values.value(p) for p in product], 0.0))

    def _world(self) -> WorldRequests:
        if self.world is None or self.recent is None or self.request_id is None:
            raise TwinsimError(f"{self.where}: made by hand, it cannot rebuild the world's decision requests; "
                               "make it with logged_bandit(WORLD_DIR), or give the target's probabilities directly "
                               "to estimate()")
        return self.world


# ------------------------------------------------------------------------------------------ the logged data
def logged_bandit(world_dir: str | Path, start=None, end=None, policy: str = WorldOffers.name) -> LoggedBandit:
    """The shown decisions of ``policy`` (default the bank's own, ``logged``) in ``world_dir``'s
    decisions.parquet over [start, end) (dates or timestamps, UTC; default the whole window) with their
    contexts, actions, logging propensities and rewards (a click / purchase of the product within 24 h)."""
    world_dir = Path(world_dir)
    manifest = _manifest(world_dir)
    run = read_run(world_dir)
    path = world_dir / "decisions.parquet"
    users = pq.read_table(world_dir / "users.parquet").to_pandas()
    ids = users.pop("user_id").to_numpy(dtype=object)
    if LOGGING_BY not in users:
        raise TwinsimError(f"{world_dir / 'users.parquet'}: no column {LOGGING_BY!r}; the bank's targeting is by "
                           "segment: re-generate the world with twinsim reference-world")
    start_us = int(run.start.value // 1000)
    shown = _in_batch_order(_shown(path, run, manifest, policy, start, end), ids, manifest, start_us)
    config, products = manifest["config"], list(laws.PRODUCTS)
    chunk = int(config.get("chunk_users", CHUNK_USERS))
    world = WorldRequests(
        seed=int(config["seed"]), first=shown["first"].to_numpy(), local=(shown["glob"] - shown["first"]).to_numpy(),
        micros=shown["micros"].to_numpy(), day=shown["micros"].to_numpy() // DAY_US,
        number=shown["request_id"].str.rsplit(":", n=1).str[1].astype(np.int64).to_numpy(),
        requests={f: Requests(ids[f:f + chunk], users.iloc[f:f + chunk].reset_index(drop=True),
                              Streams(int(config["seed"]), f), start_us) for f in shown["first"].unique().tolist()})
    attributes = users.iloc[shown["glob"].to_numpy()].reset_index(drop=True)
    action, propensity = _actions(shown["product"], products, path), shown["propensity"].to_numpy(float)
    return LoggedBandit(
        products=products, user_id=shown["user_id"].to_numpy(dtype=object),
        time=pd.DatetimeIndex(shown["timestamp"]), attributes=attributes, action=action, propensity=propensity,
        clicked=shown["clicked"].to_numpy(float), purchased=shown["purchased"].to_numpy(float),
        logging=logging_distribution(attributes[LOGGING_BY].to_numpy(), action, propensity, products,
                                     f"{path} (column propensity)"),
        request_id=shown["request_id"].to_numpy(dtype=object), recent=_recent(run.events, ids, world, start_us),
        offers=_offers(run.events), world=world, where=str(path))


def _shown(path: Path, run, manifest: dict, policy: str, start, end) -> pd.DataFrame:
    """The shown decisions of ``policy`` in [start, end), checked, with ``clicked`` and ``purchased``."""
    _check_decisions(path, manifest)
    decisions = run.decisions
    shown = decisions.loc[decisions["product"].notna()].reset_index(drop=True)
    rewards = outcomes(decisions, run.events)  # every show of the world: a later show ends an earlier's window
    shown[["clicked", "purchased"]] = rewards[["clicked", "purchased"]].to_numpy()
    lo = run.start if start is None else _utc(start)
    hi = run.end if end is None else _utc(end)
    mine = ((shown["policy"] == policy) & (shown["timestamp"] >= lo) & (shown["timestamp"] < hi)).to_numpy()
    if not mine.any():
        raise TwinsimError(f"{path}: no shown decisions of policy {policy!r} in [{lo}, {hi}) (the file's policies: "
                           f"{sorted(set(decisions['policy'].dropna()))}); give a window inside the world's "
                           f"{run.start.date()} to {run.end.date()}, e.g. start={run.start.date()}")
    shown = shown.loc[mine].reset_index(drop=True)
    _check_propensities(path, shown, policy, manifest)
    return shown


def _in_batch_order(shown: pd.DataFrame, ids: np.ndarray, manifest: dict, start_us: int) -> pd.DataFrame:
    """``shown`` with each customer's global index ``glob``, chunk ``first`` and ``micros`` since the window
    start, in the order of the world's batches: chunk by chunk, then time, then customer."""
    glob = pd.Index(ids.astype(str)).get_indexer(shown["user_id"])
    if (glob < 0).any():
        raise TwinsimError(f"decisions.parquet: user_id {shown['user_id'][glob < 0].iloc[0]!r} is not in users.parquet;"
                           " the world's files do not belong together: re-generate the world with twinsim "
                           "reference-world")
    chunk = int(manifest["config"].get("chunk_users", CHUNK_USERS))
    micros = shown["timestamp"].astype("datetime64[ns, UTC]").astype(np.int64).to_numpy() // 1000 - start_us
    shown = shown.assign(glob=glob, first=glob // chunk * chunk, micros=micros)
    order = np.lexsort((shown["glob"].to_numpy(), micros, shown["first"].to_numpy()))
    return shown.iloc[order].reset_index(drop=True)


def _manifest(world_dir: Path) -> dict:
    path = world_dir / "world.json"
    if not path.is_file():
        raise TwinsimError(f"{world_dir}: not a reference world (no world.json); the off-policy estimators read the "
                           "logs of a world written by twinsim reference-world, e.g. twinsim reference-world "
                           f"--users 1000 --days 120 --seed 7 -o {world_dir}")
    return json.loads(path.read_text())


def _regenerate(world_dir: Path, manifest: dict) -> str:
    c = manifest.get("config", {})
    return (f"re-generate the world with twinsim reference-world --users {c.get('users', 1000)} --days "
            f"{c.get('days', 120)} --seed {c.get('seed', 7)} -o {world_dir} --overwrite (worlds before session 18 "
            "lack decisions.parquet and its propensities)")


def _check_decisions(path: Path, manifest: dict) -> None:
    if not path.is_file():
        raise TwinsimError(f"{path}: missing; the off-policy estimators need the world's logged decisions with the "
                           f"logging policy's propensities; {_regenerate(path.parent, manifest)}")
    names = pq.read_schema(path).names
    missing = [c for c in ("user_id", "request_id", "timestamp", "product", "propensity", "policy") if c not in names]
    if missing:
        raise TwinsimError(f"{path}: no column(s) {missing} (it has {names}); the estimators need, per decision, "
                           f"the shown product and its logging propensity; {_regenerate(path.parent, manifest)}")


def _check_propensities(path: Path, shown: pd.DataFrame, policy: str, manifest: dict) -> None:
    p = shown["propensity"].to_numpy(float)
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        row = shown.loc[bad].iloc[0]
        raise TwinsimError(f"{path}: column propensity is {row['propensity']} for {int(bad.sum()):,} of {len(p):,} "
                           f"shown decisions of policy {policy!r} (e.g. request {row['request_id']}, product "
                           f"{row['product']}); each needs the probability in (0, 1] with which the policy chose it; "
                           f"{_regenerate(path.parent, manifest)}")


def _actions(product: pd.Series, products: list[str], path: Path) -> np.ndarray:
    action = pd.Index(products).get_indexer(product.astype(str))
    if (action < 0).any():
        raise TwinsimError(f"{path}: column product holds {product[action < 0].iloc[0]!r}, not a product of the "
                           f"world's catalogue {products}; re-generate the world with twinsim reference-world")
    return action.astype(np.int64)


def logging_distribution(groups: np.ndarray, action: np.ndarray, propensity: np.ndarray, products: list[str],
                         where: str) -> np.ndarray:
    """(n, products + 1): each row's logging distribution, read from the propensities of the products shown in its
    group (a by-group policy logs one propensity per group and product); a product never shown in a group has
    no support there (0); the mass left over goes to the last column (nothing, or unlogged products)."""
    k = len(products)
    codes, labels = pd.factorize(pd.Series(groups).astype(str))
    cell = codes * k + action
    low = np.full(len(labels) * k, np.inf)
    high = np.full(len(labels) * k, -np.inf)
    np.minimum.at(low, cell, propensity)
    np.maximum.at(high, cell, propensity)
    seen = np.isfinite(low)
    if np.any(high[seen] - low[seen] > 1e-9):
        c = int(np.flatnonzero(seen & (high - low > 1e-9))[0])
        raise TwinsimError(f"{where}: the propensity of {products[c % k]} in {LOGGING_BY} {labels[c // k]!r} varies "
                           f"from {low[c]} to {high[c]}; the estimators read the logging policy's distribution by "
                           f"{LOGGING_BY}, which needs one propensity per {LOGGING_BY} and product")
    table = np.where(seen, low, 0.0).reshape(len(labels), k)
    if np.any(table.sum(axis=1) > 1 + 1e-9):
        g = int(np.argmax(table.sum(axis=1)))
        raise TwinsimError(f"{where}: the propensities of the products shown in {LOGGING_BY} {labels[g]!r} sum to "
                           f"{table[g].sum():.6f} > 1; they must be one distribution per {LOGGING_BY}")
    rows = table[codes]
    rest = 1.0 - rows.sum(axis=1, keepdims=True)
    return np.concatenate([rows, np.where(rest > 1e-9, rest, 0.0)], axis=1)  # rounding is no mass


def _event_codes(events: pd.DataFrame, ids: np.ndarray, start_us: int) -> dict[str, np.ndarray]:
    """The events as the world holds them (:data:`EVENT_COLUMNS`, ``user`` the customer's global index,
    ``micros`` since the window start), in time order."""
    micros = events["timestamp"].astype("datetime64[ns, UTC]").astype(np.int64).to_numpy() // 1000 - start_us
    codes = {"user": pd.Index(ids.astype(str)).get_indexer(events["user_id"].astype(str)).astype(np.int64),
             "etype": _codes(events["event_type"], laws.EVENT_TYPES), "amount": events["amount"].to_numpy(float),
             **{mark: _codes(events[mark], vocab) if mark in events else np.full(len(events), -1, np.int64)
                for mark, vocab in MARK_CODES.items()},
             "micros": micros, "seconds": micros // 1_000_000, "jitter": micros % 1_000_000}
    order = np.argsort(micros, kind="stable")
    return {c: v[order] for c, v in codes.items()}


def _codes(values: pd.Series, vocabulary) -> np.ndarray:
    return pd.Categorical(values.astype(object), categories=list(vocabulary)).codes.astype(np.int64)


def _recent(events: pd.DataFrame, ids: np.ndarray, world: WorldRequests, start_us: int) -> pd.DataFrame:
    """Every row's recent events (``request`` = the row), block by block as the world's batches had them."""
    ev = _event_codes(events, ids, start_us)
    parts = []
    for first, day, rows in _blocks(world):
        requests = world.requests[first]
        at = np.searchsorted(ev["micros"], [(day - RECENT_DAYS) * DAY_US, day * DAY_US])
        window = {c: ev[c][at[0]:at[1]] for c in EVENT_COLUMNS}
        mine = (window["user"] >= first) & (window["user"] < first + len(requests.ids))
        window = {c: v[mine] for c, v in window.items()}
        window["user"] = window["user"] - first
        part = recent_events(window, day, world.local[rows], len(requests.ids), start_us)
        part["request"] += rows.start
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _blocks(world: WorldRequests) -> Iterator[tuple[int, int, slice]]:
    """(chunk's first customer, day, rows) of each batch the world asked, in the world's order."""
    cut = np.flatnonzero((np.diff(world.first) != 0) | (np.diff(world.day) != 0)) + 1
    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(world.first)], strict=True):
        yield int(world.first[lo]), int(world.day[lo]), slice(int(lo), int(hi))


def _offers(events: pd.DataFrame) -> pd.DataFrame:
    """The offer events (shown, clicked, purchased) with their product: the reward model's history."""
    mine = events["event_type"].astype(str).isin(OFFER_TYPES) & events["product"].notna()
    return pd.DataFrame({"user_id": events.loc[mine, "user_id"].astype(str).to_numpy(),
                         "timestamp": events.loc[mine, "timestamp"].to_numpy(),
                         "event_type": events.loc[mine, "event_type"].astype(str).to_numpy(),
                         "product": events.loc[mine, "product"].astype(str).to_numpy()})


# ------------------------------------------------------------------------------------------ the target policy
def target_probabilities(policy_spec: str, bandit: LoggedBandit, catalogue: Catalogue | None = None,
                         seed: int | None = None) -> np.ndarray:
    """pi_e(.|x) (n, products + 1; last column nothing) of ``policy_spec`` at each logged context: the world's
    own batches (a fresh policy per chunk, bound with the world's chunk seed; day by day in time order) are
    put to its ``decide``; ``Actions.probabilities`` where given, else a one-hot of its answer. A learning
    policy learns from the log in time order: at the start of each day it is fed the logged outcomes of the
    shows whose 24-hour window has closed. ``logged`` (the environment's own choice) is the logging policy:
    its distribution as the propensities record it, exactly pi_0 at the logged action."""
    spec = str(policy_spec)
    if getattr(load_policy(spec), "environment_choice", False):
        target = bandit.logging.copy()
        target[np.arange(len(bandit)), bandit.action] = bandit.propensity
        return target
    world = bandit._world()
    cat = world_catalogue() if catalogue is None else catalogue
    if list(cat.products) != list(bandit.products):
        raise TwinsimError(f"the catalogue's products {cat.products} are not the logged bandit's {bandit.products}; "
                           "give the world's catalogue (simulator/reference_world/policy.py catalogue())")
    seed = world.seed if seed is None else int(seed)
    k, where = len(bandit.products), f"--policy {spec!r}"
    out = np.zeros((len(bandit), k + 1))
    policy, fed, first_of = None, 0, None
    for first, day, rows in bandit.blocks():
        if first != first_of:  # a fresh policy per chunk, as the world makes
            _close(policy)
            policy, first_of, fed = load_policy(spec), first, rows.start
            if callable(getattr(policy, "bind", None)):
                call_policy(policy, where, "bind", cat, policy_seed(seed, first))
        if callable(getattr(policy, "feedback", None)):
            due = fed + int(np.searchsorted(world.micros[fed:rows.start] + FEEDBACK_US, day * DAY_US, side="right"))
            if due > fed:
                call_policy(policy, where, "feedback", bandit.outcomes(np.arange(fed, due), cat))
            fed = due
        n = rows.stop - rows.start
        actions = as_actions(call_policy(policy, where, "decide", bandit.batch(rows)), n, cat, where)
        out[rows] = actions.probabilities if actions.probabilities is not None else _one_hot(actions.product,
                                                                                             bandit.products)
    _close(policy)
    return out


def _one_hot(product: np.ndarray, products: list[str]) -> np.ndarray:
    index = {p: j for j, p in enumerate(products)}
    out = np.zeros((len(product), len(products) + 1))
    out[np.arange(len(product)), [len(products) if p is None else index[p] for p in product]] = 1.0
    return out


def _close(policy) -> None:
    if policy is not None and callable(getattr(policy, "close", None)):
        policy.close()


# ------------------------------------------------------------------------------------------ the reward model
def history_features(bandit: LoggedBandit) -> np.ndarray:
    """(n, products, 4) per context and product, from the customer's offer events strictly before it:
    log1p of the shows of the product decayed with a HALF_LIFE_DAYS half-life, log1p of the decayed shows of
    any product, whether the product was clicked in the last CLICK_DAYS days, whether it was ever bought."""
    n, k = len(bandit), len(bandit.products)
    out = np.zeros((n, k, 4))
    if bandit.offers is None or not len(bandit.offers):
        return out
    origin = min(bandit.time.min(), pd.Timestamp(bandit.offers["timestamp"].min()).tz_convert("UTC"))
    left = pd.DataFrame({"user_id": bandit.user_id.astype(str), "t": _days(bandit.time, origin),
                         "row": np.arange(n)}).sort_values("t", kind="stable")
    offers = bandit.offers.assign(t=_days(pd.DatetimeIndex(bandit.offers["timestamp"]), origin))
    decayed = np.zeros((n, k))
    for j, product in enumerate(bandit.products):
        mine = offers[offers["product"] == product]
        for kind, column in (("offer_shown", 0), ("offer_click", 2), ("offer_purchase", 3)):
            right = mine.loc[mine["event_type"] == kind, ["user_id", "t"]].sort_values(["user_id", "t"])
            right = right.assign(last=right["t"], weight=np.exp2(right["t"] / HALF_LIFE_DAYS))
            right["weight"] = right.groupby("user_id")["weight"].cumsum()
            m = pd.merge_asof(left, right.sort_values("t", kind="stable"), on="t", by="user_id",
                              allow_exact_matches=False, direction="backward")
            rows, found = m["row"].to_numpy(), m["last"].notna().to_numpy()
            if column == 0:
                decayed[rows, j] = np.where(found, m["weight"].fillna(0) * np.exp2(-m["t"] / HALF_LIFE_DAYS), 0.0)
            elif column == 2:
                out[rows, j, 2] = found & (m["t"] - m["last"] < CLICK_DAYS).to_numpy()
            else:
                out[rows, j, 3] = found
    out[:, :, 0] = np.log1p(decayed)
    out[:, :, 1] = np.log1p(decayed.sum(axis=1))[:, None]
    return out


def _days(time: pd.DatetimeIndex, origin: pd.Timestamp) -> np.ndarray:
    return ((time - origin) / pd.Timedelta(days=1)).to_numpy(float)


def _design(bandit: LoggedBandit, history: np.ndarray, j: int) -> np.ndarray:
    """The reward model's features for product ``j``: the categorical attributes one-hot, its history."""
    categorical = [c for c in bandit.attributes.columns if not pd.api.types.is_numeric_dtype(bandit.attributes[c])]
    onehot = pd.get_dummies(bandit.attributes[categorical].astype(str), dtype=float).to_numpy()
    return np.concatenate([onehot, history[:, j, :]], axis=1)


def fit_reward_model(bandit: LoggedBandit, metric: str, history: np.ndarray | None = None) -> np.ndarray:
    """q(x, a) (n, products): the chance of ``metric``'s reward if product a were shown at each logged
    context; per product a logistic regression (scikit-learn, L2, C = 1) of the reward on the categorical
    attributes one-hot and :func:`history_features`, fitted on the logged shows of that product; a product
    shown fewer than MIN_ROWS times (or never rewarded / always) gets its smoothed rate (r + 0.5) / (n + 1)."""
    from sklearn.linear_model import LogisticRegression

    reward = bandit.reward(metric)
    history = history_features(bandit) if history is None else history
    q = np.zeros((len(bandit), len(bandit.products)))
    for j in range(len(bandit.products)):
        rows = bandit.action == j
        y = reward[rows]
        if rows.sum() < MIN_ROWS or y.min() == y.max():
            q[:, j] = (y.sum() + 0.5) / (len(y) + 1.0)
            continue
        x = _design(bandit, history, j)
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x[rows], y)
        q[:, j] = model.predict_proba(x)[:, 1]
    return q


# ------------------------------------------------------------------------------------------ the estimators
def terms(bandit: LoggedBandit, target: np.ndarray, reward: np.ndarray, q: np.ndarray) -> dict[str, tuple]:
    """Per estimator, per-row numerator and denominator terms: the value per show is sum(num) / sum(den).
    With s = 1 - pi_e(nothing|x), w = pi_e(a|x) / pi_0(a|x) and dm = sum_a pi_e(a|x) q(x, a):
    DM dm / s, IPW w r / s, SNIPW w r / w, DR (dm + w (r - q(x, a))) / s."""
    target = _check_target(target, bandit)
    n, k = target.shape[0], len(bandit.products)
    rows = np.arange(n)
    show = 1.0 - target[:, k]
    w = target[rows, bandit.action] / bandit.propensity
    dm = (target[:, :k] * q).sum(axis=1)
    return {"dm": (dm, show), "ipw": (w * reward, show), "snipw": (w * reward, w),
            "dr": (dm + w * (reward - q[rows, bandit.action]), show)}


def _check_target(target: np.ndarray, bandit: LoggedBandit) -> np.ndarray:
    target = np.asarray(target, dtype=float)
    shape = (len(bandit), len(bandit.products) + 1)
    if target.shape != shape or np.any(target < 0) or not np.allclose(target.sum(axis=1), 1.0, atol=1e-6):
        raise TwinsimError(f"the target's probabilities have shape {target.shape}; they must be {shape}: per logged "
                           f"decision a distribution over {bandit.products} and, last, nothing")
    return target


def resample(bandit: LoggedBandit, replicates: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(replicates, customers): how often each customer (in order of first appearance) is drawn in each
    bootstrap replicate (customers drawn with replacement, as many as there are; seeded)."""
    customers = len(pd.unique(bandit.user_id))
    draws = np.random.default_rng(seed).integers(0, customers, size=(replicates, customers))
    counts = np.zeros((replicates, customers))
    for b, d in enumerate(draws):
        counts[b] = np.bincount(d, minlength=customers)
    return counts


def estimate(bandit: LoggedBandit, target: np.ndarray, metric: str, q: np.ndarray | None = None,
             counts: np.ndarray | None = None) -> dict:
    """DM, IPW, SNIPW and DR of ``metric``'s value per show of the target (``target``: pi_e, n x products + 1),
    each with its bootstrap se and 95 % percentile interval over customers (``counts``: :func:`resample`; the
    reward model ``q``, default :func:`fit_reward_model`, and the target are held fixed across replicates)."""
    q = fit_reward_model(bandit, metric) if q is None else q
    counts = resample(bandit) if counts is None else counts
    customer = pd.factorize(bandit.user_id)[0]
    out = {}
    for name, (num, den) in terms(bandit, target, bandit.reward(metric), q).items():
        num_c, den_c = (np.bincount(customer, weights=v, minlength=counts.shape[1]) for v in (num, den))
        value = num_c.sum() / den_c.sum() if den_c.sum() > 0 else np.nan
        row = {"value": _clean(value), "se": None, "ci": None}
        if len(counts) > 1 and den_c.sum() > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = (counts @ num_c) / (counts @ den_c)
            reps = reps[np.isfinite(reps)]
            row.update(se=_clean(reps.std(ddof=1)), ci=[_clean(v) for v in np.percentile(reps, [2.5, 97.5])])
        out[name] = row
    return out


def diagnostics(bandit: LoggedBandit, target: np.ndarray) -> dict:
    """What the estimates rest on: decisions and customers, the target's show probability and product mix,
    the importance weights' effective sample size and maximum, and the share of the target's shown mass on
    products the logging policy never shows in the context (pi_0 = 0: IPW and SNIPW cannot see it)."""
    target = _check_target(target, bandit)
    k = len(bandit.products)
    w = target[np.arange(len(bandit)), bandit.action] / bandit.propensity
    show = 1.0 - target[:, k]
    unsupported = (target[:, :k] * (bandit.logging[:, :k] <= 0)).sum()
    mix = target[:, :k].sum(axis=0) / max(show.sum(), 1e-300)
    return {"decisions": len(bandit), "customers": int(len(pd.unique(bandit.user_id))),
            "show_probability": _clean(show.mean()),
            "mix": {p: _clean(v) for p, v in zip(bandit.products, mix, strict=True)},
            "effective_sample_size": _clean(w.sum() ** 2 / (w ** 2).sum()) if (w > 0).any() else 0.0,
            "max_weight": _clean(w.max()),
            "unsupported_share": _clean(unsupported / show.sum()) if show.sum() else None,
            "unsupported_decisions": int(((target[:, :k] > 0) & (bandit.logging[:, :k] <= 0)).any(axis=1).sum())}


def evaluate(world_dir: str | Path, policy_specs: Sequence[str], start=None, end=None, bootstrap: int = BOOTSTRAP,
             seed: int = 0, bandit: LoggedBandit | None = None) -> dict:
    """Every estimate (DM, IPW, SNIPW, DR of CTR and purchases per show) and the diagnostics of each policy of
    ``policy_specs`` from the logged decisions of ``world_dir`` over [start, end); keyed by policy name."""
    bandit = logged_bandit(world_dir, start, end) if bandit is None else bandit
    history = history_features(bandit)
    q = {m: fit_reward_model(bandit, m, history) for m in METRICS}
    counts = resample(bandit, bootstrap, seed)
    policies = {}
    for spec in policy_specs:
        target = target_probabilities(spec, bandit)
        policies[policy_name(spec)] = {"spec": spec, "diagnostics": diagnostics(bandit, target),
                                       **{m: estimate(bandit, target, m, q[m], counts) for m in METRICS}}
    logged = {m: _clean(bandit.reward(m).mean()) for m in METRICS}
    return {"about": {"world": str(world_dir), "window": [None if t is None else str(_utc(t)) for t in (start, end)],
                      "start": bandit.time.min().isoformat(), "end": bandit.time.max().isoformat(),
                      "decisions": len(bandit),
                      "customers": int(len(pd.unique(bandit.user_id))), "estimators": list(ESTIMATORS),
                      "bootstrap": bootstrap, "seed": seed, "logged": logged},
            "policies": policies}


def against_truth(ope: dict, truth: dict[str, dict], twin: dict[str, dict] | None = None) -> dict:
    """Each estimate of :func:`evaluate` against ``truth`` (policy -> metric -> value, the reference world's
    run of the policy), and ``twin``'s likewise: per policy and metric the relative errors (estimate / truth -
    1), per metric each estimator's median absolute relative error over the policies, the best estimator's,
    the twin's, and whether the twin's is at most half the best's (issue 23's target)."""
    rows, summary = {}, {}
    for name, est in ope["policies"].items():
        rows[name] = {}
        for metric in METRICS:
            t = truth.get(name, {}).get(metric)
            w = None if twin is None else twin.get(name, {}).get(metric)
            rows[name][metric] = {"truth": t, "twin": w, "twin_relative_error": _relative(w, t),
                                  **{e: {**est[metric][e], "relative_error": _relative(est[metric][e]["value"], t)}
                                     for e in ESTIMATORS}}
    for metric in METRICS:
        errors = {key: [abs(e) for e in (r[metric][key]["relative_error"] for r in rows.values()) if e is not None]
                  for key in ESTIMATORS}
        errors["twin"] = [abs(r[metric]["twin_relative_error"]) for r in rows.values()
                          if r[metric]["twin_relative_error"] is not None]
        medians = {key: _clean(np.median(v)) if v else None for key, v in errors.items()}
        known = {e: medians[e] for e in ESTIMATORS if medians[e] is not None}
        best = min(known, key=known.get) if known else None
        twin_median = medians.pop("twin")
        ratio = twin_median / known[best] if best is not None and twin_median is not None and known[best] else None
        summary[metric] = {"median_abs_relative_error": medians, "best": best, "best_median": known.get(best),
                           "twin_median": twin_median, "twin_over_best": None if ratio is None else _clean(ratio),
                           "target_met": None if ratio is None else bool(ratio <= 0.5)}
    return {"about": ope["about"], "policies": rows, "summary": summary,
            "diagnostics": {n: p["diagnostics"] for n, p in ope["policies"].items()}}


def _relative(value, truth) -> float | None:
    return _clean(value / truth - 1.0) if value is not None and truth else None
