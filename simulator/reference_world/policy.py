"""A recommender policy under test at the reference world's logins: the ground truth of a policy.

From day ``start`` on, a share ``share`` of each customer's logins are decision points (the login's own slot
draw ``u_show < share``; with ``share = laws.OFFER_SHOW_P`` exactly the logins where the bank shows an offer).
Each day the chunk's decision points form one :class:`DecisionBatch` in time order; the policy's answers are
shown through the world's own ``Chunk.respond`` with the uniforms the bank's slot would use, so a policy that
shows what the bank would have shown gets the bank's response to the bit. ``logged`` (``environment_choice``)
is the bank's own targeting. Before ``start`` the bank's logging policy acts (``behaviour.WorldOffers``), so
the history before it is the baseline's. At the start of each day the policy gets the :class:`Outcomes` of
its shows whose ``FEEDBACK_HOURS`` window has closed, read from the world's own events; nothing later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from twinsim.models.errors import TwinsimError
from twinsim.scenarios.policies import load_policy, policy_name
from twinsim.scenarios.policy import (
    FEEDBACK_HOURS,
    POLICY_UNIFORMS,
    RECENT_DAYS,
    RECENT_EVENTS,
    Catalogue,
    DecisionBatch,
    Outcomes,
    PolicyError,
    as_actions,
)
from twinsim.simulator.reference_world import laws
from twinsim.simulator.reference_world import streams as st
from twinsim.simulator.reference_world.behaviour import DAY, Chunk, E, Logins, Slots, WorldOffers
from twinsim.simulator.reference_world.population import Population, users_table
from twinsim.simulator.reference_world.scenario import MARK_CODES, _day_number

FEEDBACK_US = int(FEEDBACK_HOURS * 3600 * 1_000_000)
OFFER_EVENTS = (E["offer_shown"], E["offer_click"], E["offer_purchase"])
EVENT_COLUMNS = ("user", "seconds", "etype", "amount", "channel", "merchant_category", "product", "jitter")


def catalogue() -> Catalogue:
    """What a policy may show in the world: its products, and the users table's categorical attributes."""
    return Catalogue(products=list(laws.PRODUCTS),
                     segments={k: list(v) for k, v in laws.CATEGORICAL_ATTRIBUTES.items()})


@dataclass(frozen=True)
class PolicySetup:
    """Who decides at the world's logins: ``spec`` (None: the bank's logging policy throughout), from day
    ``start`` (of ``days``), at a share ``share`` of logins; ``name`` goes to the decisions table."""

    spec: str | None
    name: str
    start: int
    share: float
    days: int
    window_start: date

    def offers(self, pop: Population, streams: st.Streams, seed: int) -> PolicyOffers | None:
        """A fresh policy for one chunk (None: the bank's own offers), bound with a seed of the chunk's own."""
        if self.spec is None:
            return None
        return PolicyOffers(self, pop, streams, policy_seed(seed, pop.first_id))

    def start_date(self) -> date:
        return self.window_start + timedelta(days=self.start)


def policy_seed(seed: int, first_id: int) -> int:
    """The seed a chunk's fresh policy is bound with: a pure function of the world's seed and the chunk."""
    return int(np.random.SeedSequence([seed, first_id]).generate_state(1)[0])


@dataclass(frozen=True)
class Requests:
    """What one chunk's decision requests are made of: the customers' ``ids`` and ``attributes`` (chunk-local
    rows, the users table's), their ``streams`` and the window's start (microseconds since the epoch). The
    world's policy offers and the off-policy estimators (``simulator/recommend/ope.py``) build batches with it."""

    ids: np.ndarray
    attributes: pd.DataFrame
    streams: st.Streams
    start_us: int

    def batch(self, user: np.ndarray, number: np.ndarray, micros: np.ndarray, recent: pd.DataFrame) -> DecisionBatch:
        """The requests of chunk-local customers ``user`` (their decision ``number`` of the run, shown at
        ``micros`` since the window start), in the order given, with their ``recent`` events."""
        return DecisionBatch(
            request_id=np.array([f"{self.ids[u]}:{k}" for u, k in zip(user, number, strict=True)], dtype=object),
            user_id=self.ids[user],
            time=pd.DatetimeIndex(pd.to_datetime(self.start_us + micros, unit="us", utc=True)),
            attributes=self.attributes.iloc[user].reset_index(drop=True),
            recent=recent,
            uniforms=self.uniforms(user, number))

    def uniforms(self, user: np.ndarray, number: np.ndarray) -> np.ndarray:
        """Each request's own uniforms: keyed by (seed, customer, decision number), whatever the policy."""
        return self.streams.draw(st.POLICY, user, 0, POLICY_UNIFORMS, number)


def call_policy(policy, where: str, method: str, *args):
    """``policy.method(*args)``; an exception of the policy's own becomes a PolicyError naming ``where``."""
    try:
        return getattr(policy, method)(*args)
    except PolicyError:
        raise
    except Exception as e:  # the policy's own bug: name the policy and the call
        raise PolicyError(f"{where}: {method}() raised {type(e).__name__}: {e}") from e


def recent_events(events: dict[str, np.ndarray], day: int, user: np.ndarray, customers: int,
                  start_us: int) -> pd.DataFrame:
    """The latest events before ``day`` (at most RECENT_EVENTS each) of the chunk-local customers ``user``
    (one block per request, oldest first), from ``events``: the chunk's event codes by :data:`EVENT_COLUMNS`
    (at least those of the last RECENT_DAYS days before ``day``; earlier ones are ignored)."""
    ev = events
    wanted = np.zeros(customers, bool)
    wanted[user] = True
    seconds = ev["seconds"]
    rows = np.flatnonzero(wanted[ev["user"]] & (seconds < day * DAY) & (seconds >= (day - RECENT_DAYS) * DAY))
    micros = ev["seconds"][rows] * 1_000_000 + ev["jitter"][rows]
    rows = rows[np.lexsort((micros, ev["user"][rows]))]
    counts = np.bincount(ev["user"][rows], minlength=customers)
    rank_from_end = np.repeat(counts[counts > 0], counts[counts > 0]) - st.nth(counts[counts > 0])
    rows = rows[rank_from_end <= RECENT_EVENTS]
    counts = np.minimum(counts, RECENT_EVENTS)
    starts = np.cumsum(counts) - counts
    per_request = counts[user]
    take = rows[np.repeat(starts[user], per_request) + st.nth(per_request)]

    def labels(codes, vocabulary):
        return np.where(codes >= 0, np.asarray(vocabulary + ("",), dtype=object)[codes], None)

    return pd.DataFrame({
        "request": np.repeat(np.arange(len(user)), per_request),
        "timestamp": pd.to_datetime(start_us + ev["seconds"][take] * 1_000_000 + ev["jitter"][take],
                                    unit="us", utc=True),
        "event_type": np.asarray(laws.EVENT_TYPES, dtype=object)[ev["etype"][take]],
        "amount": ev["amount"][take].astype(np.float64),
        **{mark: labels(ev[mark][take], vocabulary) for mark, vocabulary in MARK_CODES.items()}})


def policy_setup(policy: str | None, policy_start, share: float | None, days: int, window_start: date) -> PolicySetup:
    """Check the options (errors name them, with an example) and load the policy once to fail early."""
    if policy is None:
        for option, value in (("--policy-start", policy_start), ("--share", share)):
            if value is not None:
                raise TwinsimError(f"{option} {value} needs --policy (the policy to run from then on); "
                                   f"e.g. --policy random {option} {value}")
        return PolicySetup(None, WorldOffers.name, 0, laws.OFFER_SHOW_P, days, window_start)
    spec = str(policy).strip()
    name = getattr(load_policy(spec), "name", None) or policy_name(spec)
    share = laws.OFFER_SHOW_P if share is None else share
    try:
        share = float(share)
    except (TypeError, ValueError):
        share = float("nan")
    if not 0.0 < share <= 1.0:
        raise TwinsimError(f"--share must be a number in (0, 1], the share of logins that are decision points (got "
                           f"{share}); e.g. --share {laws.OFFER_SHOW_P} (the logins where the bank shows an offer)")
    start = _start_day(0 if policy_start is None else policy_start, window_start)
    if not 0 <= start < days:
        last = window_start + timedelta(days=days - 1)
        raise TwinsimError(f"--policy-start {policy_start} is day {start}, outside the window (days 0 to {days - 1}, "
                           f"{window_start} to {last}); e.g. --policy-start {min(days - 1, 14)} or a date in it")
    return PolicySetup(spec, str(name), start, share, days, window_start)


def _start_day(value, window_start: date) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    try:
        return _day_number(value, window_start)
    except (TypeError, ValueError) as e:
        raise TwinsimError(f"--policy-start {value!r} is neither a date (YYYY-MM-DD) nor a day number of the window; "
                           "e.g. --policy-start 2025-03-01 or --policy-start 60") from e


class PolicyOffers:
    """A policy acting at one chunk's logins (``behaviour.OfferPolicy``); the bank's own before ``start``."""

    def __init__(self, setup: PolicySetup, pop: Population, streams: st.Streams, seed: int) -> None:
        self.setup, self.world, self.streams = setup, WorldOffers(), streams
        self.where = f"--policy {setup.spec!r}"
        self.policy = load_policy(setup.spec)
        self.catalogue = catalogue()
        self.logged = bool(getattr(self.policy, "environment_choice", False))
        if callable(getattr(self.policy, "bind", None)):
            self._call("bind", self.catalogue, seed)
        self.learns = callable(getattr(self.policy, "feedback", None))
        attributes = users_table(pop).to_pandas()
        self.ids = attributes.pop("user_id").to_numpy(dtype=object)
        self.start_us = int(np.datetime64(setup.window_start, "us").astype(np.int64))
        self.requests = Requests(self.ids, attributes, streams, self.start_us)
        self.seen = 0  # EventBuffer parts already read
        self.events = {c: np.empty(0, np.int64) for c in EVENT_COLUMNS}  # the last RECENT_DAYS days
        self.offer_events = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
        self.pending = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, object))

    def _call(self, method: str, *args):
        return call_policy(self.policy, self.where, method, *args)

    def at_logins(self, chunk: Chunk, day: int, logins: Logins) -> None:
        if day < self.setup.start:
            self.world.at_logins(chunk, day, logins)
            return
        if not self.logged:
            self._read(chunk, day)
            self._feedback(chunk, day)
        slots = chunk.slots(day, logins, self.setup.share)
        n = chunk.decisions.number(slots.user, slots.micros)
        failure = latency = None
        if self.logged:
            offer, propensity = chunk.targeted(slots)
        else:
            offer, propensity = np.full(len(n), -1, np.int8), np.full(len(n), np.nan)
            if len(n):
                order = np.lexsort((slots.user, slots.micros))  # the batch: time order
                actions = as_actions(self._call("decide", self._batch(day, slots, n, order)), len(n), self.catalogue,
                                     self.where)
                offer[order] = [-1 if p is None else laws.PRODUCTS.index(p) for p in actions.product]
                if actions.propensity is not None:
                    propensity[order] = actions.propensity
                if actions.failure is not None:
                    failure = np.empty(len(n), object)
                    failure[order] = np.asarray(actions.failure, object)
                if actions.latency_ms is not None:
                    latency = np.empty(len(n))
                    latency[order] = np.asarray(actions.latency_ms, float)
        chunk.decisions.add(slots, n, offer, propensity, self.setup.name, failure, latency)
        shown = offer >= 0  # the world's response, in login order as the bank's own slot responds
        chunk.respond(day, slots.user[shown], slots.seconds[shown], slots.channel[shown], offer[shown],
                      slots.u[shown])
        if not self.logged:
            ids = [f"{self.ids[u]}:{k}" for u, k in zip(slots.user[shown], n[shown], strict=True)]
            self.pending = tuple(np.concatenate([a, b]) for a, b in zip(self.pending, (
                slots.user[shown], slots.micros[shown], offer[shown].astype(np.int64), np.array(ids, object)),
                strict=True))

    def _batch(self, day: int, slots: Slots, n: np.ndarray, order: np.ndarray) -> DecisionBatch:
        user = slots.user[order]
        return self.requests.batch(user, n[order], slots.micros[order],
                                   recent_events(self.events, day, user, len(self.ids), self.start_us))

    def _read(self, chunk: Chunk, day: int) -> None:
        """Fold the events added since the last read into the recent-events and offer-events stores."""
        new = chunk.out.columns(self.seen)
        self.seen = len(chunk.out.parts)
        cols = {c: np.concatenate([self.events[c], v]) for c, v in zip(EVENT_COLUMNS, new[:8], strict=True)}
        keep = cols["seconds"] >= (day - RECENT_DAYS) * DAY
        self.events = {c: v[keep] for c, v in cols.items()}
        offer = np.isin(new[2], OFFER_EVENTS)
        micros = new[1][offer] * 1_000_000 + new[7][offer]
        self.offer_events = tuple(np.concatenate([a, b]) for a, b in zip(self.offer_events, (
            new[0][offer], micros, new[2][offer].astype(np.int64), new[6][offer].astype(np.int64)), strict=True))

    def _feedback(self, chunk: Chunk, day: int) -> None:
        """Outcomes of the policy's shows whose window closed by the day's start, to ``policy.feedback``."""
        user, micros, product, ids = self.pending
        now_us = day * DAY * 1_000_000
        due = micros + FEEDBACK_US <= now_us
        self.pending = tuple(a[~due] for a in self.pending)
        floor = min(int(self.pending[1].min()) if len(self.pending[1]) else now_us, now_us)
        if self.learns and due.any():
            user, micros, product, ids = (a[due] for a in (user, micros, product, ids))
            happened = micros // 1_000_000 < chunk.closed_at[user]  # a show after the closure never happened
            user, micros, product, ids = (a[happened] for a in (user, micros, product, ids))
            clicked, purchased = (self._outcome(chunk, user, micros, product, E[t])
                                  for t in ("offer_click", "offer_purchase"))
            names = np.asarray(laws.PRODUCTS, dtype=object)[product]
            if len(ids):
                self._call("feedback", Outcomes(
                    request_id=ids, user_id=self.ids[user], product=names,
                    shown_time=pd.DatetimeIndex(pd.to_datetime(self.start_us + micros, unit="us", utc=True)),
                    clicked=clicked, purchased=purchased,
                    value=np.where(purchased, [self.catalogue.value(p) for p in names], 0.0)))
        keep = self.offer_events[1] >= floor
        self.offer_events = tuple(a[keep] for a in self.offer_events)

    def _outcome(self, chunk: Chunk, user, micros, product, etype: int) -> np.ndarray:
        """Whether the first ``etype`` event of the show's product after each show falls within its window,
        before the next show of that product, and before the customer's closure (the world's censoring)."""
        ev_user, ev_micros, ev_type, ev_product = self.offer_events
        if len(ev_micros) == 0 or len(user) == 0:
            return np.zeros(len(user), bool)
        base = int(ev_micros.min())
        span = int(ev_micros.max()) - base + 1
        k = len(laws.PRODUCTS)

        def first_after(kind: int) -> np.ndarray:
            mine = ev_type == kind
            comp = np.sort((ev_user[mine] * k + ev_product[mine]) * span + ev_micros[mine] - base)
            if len(comp) == 0:
                return np.full(len(user), np.iinfo(np.int64).max)
            key = user * k + product
            at = np.searchsorted(comp, key * span + micros - base, side="right")
            found = np.minimum(at, len(comp) - 1)
            same = (at < len(comp)) & (comp[found] // span == key)
            return np.where(same, comp[found] - key * span + base, np.iinfo(np.int64).max)

        hit = first_after(etype)
        return ((hit <= micros + FEEDBACK_US) & (hit < first_after(E["offer_shown"]))
                & (hit // 1_000_000 < chunk.closed_at[user]))


class DecisionTally:
    """The counts of the decisions tables written, for the ``policy`` section of ``world.json``."""

    def __init__(self, setup: PolicySetup) -> None:
        self.setup = setup
        self.counts = Counter()
        self.failures = Counter()

    def add(self, table: pa.Table) -> None:
        frame = table.select(["timestamp", "product", "failure"]).to_pandas()
        since = frame["timestamp"] >= pd.Timestamp(self.setup.start_date(), tz="UTC")
        shows = frame["product"].notna()
        self.counts.update(decisions=len(frame), shows=int(shows.sum()), policy_decisions=int(since.sum()),
                           policy_shows=int((since & shows).sum()))
        self.failures.update(frame["failure"].dropna().tolist())

    def manifest(self) -> dict:
        s = self.setup
        return {"spec": s.spec, "name": s.name, "start": s.start_date().isoformat(), "start_day": s.start,
                "share": s.share, **{k: int(self.counts[k]) for k in ("decisions", "shows", "policy_decisions",
                                                                      "policy_shows")},
                "failures": dict(sorted(self.failures.items()))}
