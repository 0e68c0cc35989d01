"""A policy in the loop of one cohort: its decision points, the requests it is asked, the offers it shows and
what comes of them (``scenarios/policy.py`` has the interface, ``docs/recommenders.md`` the user's view).

From the run's start, each trigger event of a customer (a login) is a decision point with the run's
``share`` (the customer's own draw, keyed by its trigger count: every policy run on the same customers gets
the same decision points) and is asked of the policy 1 to 20 seconds after it (the delay the reference
world's offers have). A shown offer is the controlled event type with the chosen product (and the trigger's
channel), imposed at that time; the model never draws that type itself (``Rollout.exclude``). What the
customer does next is drawn from the model given it. Clicks and purchases of the shown product within
``FEEDBACK_HOURS`` are the offer's outcome, fed back to a learning policy once its window has closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twinsim.models import kernels
from twinsim.models.encoding import MIN_GAP_HOURS, Schema
from twinsim.models.errors import TwinsimError
from twinsim.models.rollout import Events, Rollout
from twinsim.scenarios.policies import load_policy, policy_name
from twinsim.scenarios.policy import (
    FEEDBACK_HOURS,
    POLICY_UNIFORMS,
    PURPOSE_DECISION,
    PURPOSE_POLICY,
    RECENT_DAYS,
    RECENT_EVENTS,
    Actions,
    Catalogue,
    DecisionBatch,
    Outcomes,
    as_actions,
)

DELAY_S = (1, 20)  # an offer is shown this many whole seconds after its trigger (inclusive)
DAY_S = 86400.0


@dataclass(frozen=True)
class DecisionSpec:
    """What a run's policy is and where it decides: small and picklable (it travels in ``RunSpec``); each
    cohort makes its own policy from ``policy``."""

    policy: str  # a spec for ``load_policy``
    trigger: str = "login"
    share: float = 1.0
    event_type: str = "offer_shown"
    mark: str = "product"
    values: dict[str, float] = field(default_factory=dict)
    http: dict = field(default_factory=dict)  # concurrency, timeout_s, fallback

    @property
    def name(self) -> str:
        return policy_name(self.policy)

    def catalogue(self, schema: Schema) -> Catalogue:
        return Catalogue(products=list(schema.marks[self.mark][1:]), event_type=self.event_type, mark=self.mark,
                         values=dict(self.values),
                         segments={k: list(v[1:]) for k, v in schema.categorical_attributes.items()})

    def check(self, schema: Schema) -> None:
        """Whether the model can act this out: the trigger and controlled types and the mark exist."""
        for what, value in (("--trigger", self.trigger), ("the offer's event type", self.event_type)):
            if value not in schema.event_types:
                raise TwinsimError(f"{what} {value!r}: the model has no such event type; it has "
                                   f"{', '.join(schema.event_types)}")
        if self.mark not in schema.marks:
            raise TwinsimError(f"the offer's mark {self.mark!r}: the model has no such mark; it has "
                               f"{', '.join(schema.marks)} (a policy shows products: the model must know offers)")
        if not 0.0 < self.share <= 1.0:
            raise TwinsimError(f"--share {self.share}: the share of trigger events that are decision points must be "
                               "in (0, 1]; e.g. --share 0.25 (a quarter of logins show an offer slot)")
        unknown = sorted(set(self.values) - set(schema.marks[self.mark][1:]))
        if unknown:
            raise TwinsimError(f"--values: {unknown} are not products of the model ({schema.marks[self.mark][1:]})")


class Grow:
    """Columns that grow by appending (amortised), read and updated by index."""

    def __init__(self, **dtypes) -> None:
        self.n, self.cols = 0, {k: np.zeros(64, dtype=d) for k, d in dtypes.items()}

    def append(self, **values) -> np.ndarray:
        k = len(next(iter(values.values())))
        while self.n + k > len(next(iter(self.cols.values()))):
            self.cols = {name: np.concatenate([c, np.zeros_like(c)]) for name, c in self.cols.items()}
        for name, v in values.items():
            self.cols[name][self.n:self.n + k] = v
        self.n += k
        return np.arange(self.n - k, self.n)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]


class Decisions:
    """The policy state of one cohort of ``roll``'s rows: ``users`` (its rows of the population's user table),
    ``members`` (population indices: the keys of their random streams)."""

    def __init__(self, spec: DecisionSpec, schema: Schema, roll: Rollout, users: pd.DataFrame,
                 members: np.ndarray, seed: int, start_s: float) -> None:
        self.spec, self.schema, self.roll, self.seed, self.start_s = spec, schema, roll, seed, start_s
        self.catalogue = spec.catalogue(schema)
        self.policy = load_policy(spec.policy, **spec.http)
        self.where = f"--policy {spec.policy!r}"
        if callable(getattr(self.policy, "bind", None)):
            self.policy.bind(self.catalogue, seed)
        self.environment_choice = bool(getattr(self.policy, "environment_choice", False))
        self.learns = callable(getattr(self.policy, "feedback", None))
        roll.keep_hidden()
        n = len(members)
        self.members, self.user_ids = members, users["user_id"].to_numpy()
        self.attributes = users.drop(columns="user_id").reset_index(drop=True)
        self.trigger = schema.event_types.index(spec.trigger)
        self.shown_type = schema.event_types.index(spec.event_type)
        self.mark = list(schema.marks).index(spec.mark)
        self.channel = list(schema.marks).index("channel") if "channel" in schema.marks else -1
        self.click = _code(schema, "offer_click")
        self.purchase = _code(schema, "offer_purchase")
        k = len(schema.marks[spec.mark])  # product codes, 0 = no product
        self.triggers = np.zeros(n, dtype=np.int64)  # trigger events since the start, per row
        self.count = np.zeros(n, dtype=np.int64)  # decisions so far, per row
        self.due = np.full(n, np.inf)  # the time of each row's pending decision
        self.due_channel = np.zeros(n, dtype=np.int64)
        self.open = np.full((n, k), -1, dtype=np.int64)  # per row and product: its latest show (an index)
        self.shows = Grow(row=np.int64, product=np.int64, time=np.float64, request=object, clicked=bool,
                          purchased=bool, fed=bool)
        self.log: list[pd.DataFrame] = []
        self.recent = {"time": np.full((n, RECENT_EVENTS), -np.inf), "type": np.full((n, RECENT_EVENTS), -1),
                       "amount": np.full((n, RECENT_EVENTS), np.nan),
                       "marks": np.zeros((n, RECENT_EVENTS, len(schema.marks)), dtype=np.int64)}
        self.stats = {"decisions": 0, "shows": 0, "failures": {}, "policy_seconds": 0.0}

    # -- what happens -----------------------------------------------------------------------------------------
    def observe(self, rows: np.ndarray, events: Events) -> None:
        """Events ``rows`` just committed: their recent events, new decision points, offers' outcomes."""
        r = self.recent
        for key, value in (("time", events.time_s), ("type", events.type), ("amount", events.amount),
                           ("marks", events.marks)):
            r[key][rows, :-1] = r[key][rows, 1:]
            r[key][rows, -1] = value
        after = events.time_s >= self.start_s
        hit = np.flatnonzero((events.type == self.trigger) & after & ~np.isfinite(self.due[rows]))
        if len(hit):
            who = rows[hit]
            u = kernels.uniforms(self.seed, self.members[who], self.triggers[who], PURPOSE_DECISION, 2)
            self.triggers[who] += 1
            point = u[:, 0] < self.spec.share
            delay = DELAY_S[0] + np.floor(u[:, 1] * (DELAY_S[1] - DELAY_S[0] + 1))
            self.due[who[point]] = events.time_s[hit[point]] + delay[point]
            if self.channel >= 0:
                self.due_channel[who[point]] = events.marks[hit[point], self.channel]
        for code, column in ((self.click, "clicked"), (self.purchase, "purchased")):
            if code < 0:
                continue
            hit = np.flatnonzero(events.type == code)
            show = self.open[rows[hit], events.marks[hit, self.mark]]
            ok = show >= 0
            hit, show = hit[ok], show[ok]
            within = events.time_s[hit] <= self.shows["time"][show] + FEEDBACK_HOURS * 3600.0
            self.shows.cols[column][show[within]] = True

    def decide(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ask the policy about the pending decisions of ``rows``; returns the shows: (rows, times, product
        codes, channel codes)."""
        # the time the offer gets: at least a second after the row's latest event (``Rollout.impose``)
        at = np.maximum(self.due[rows], self.roll.time_s[rows] + MIN_GAP_HOURS * 3600.0)
        order = np.lexsort((rows, at))
        rows, at = rows[order], at[order]
        number = self.count[rows]
        self.count[rows] += 1
        self.due[rows] = np.inf
        request_id = np.array([f"{u}:{k}" for u, k in zip(self.user_ids[rows], number, strict=True)], dtype=object)
        products = np.array(self.catalogue.products, dtype=object)
        started = time.perf_counter()
        if self.environment_choice:  # the logged policy, as the model learned it
            probs = self.roll.mark_probabilities(rows, self.shown_type, at)[self.mark][:, 1:]
            probs = probs / probs.sum(axis=1, keepdims=True)
            u = kernels.uniforms(self.seed, self.members[rows], number, PURPOSE_POLICY, POLICY_UNIFORMS)[:, 0]
            pick = kernels.sample_categorical(probs, u)
            actions = Actions(product=products[pick], propensity=probs[np.arange(len(rows)), pick])
        else:
            answer = self.policy.decide(self._batch(rows, at, request_id, number))
            actions = as_actions(answer, len(rows), self.catalogue, self.where)
        self.stats["policy_seconds"] += time.perf_counter() - started
        self._log(rows, at, request_id, actions)
        shown = np.flatnonzero(actions.product != None)  # noqa: E711 (an object array)
        codes = np.array([self.schema.marks[self.spec.mark].index(p) for p in actions.product[shown]], dtype=np.int64)
        index = self.shows.append(row=rows[shown], product=codes, time=at[shown],
                                  request=request_id[shown],
                                  clicked=False, purchased=False, fed=False)
        self.open[rows[shown], codes] = index
        self.stats["decisions"] += len(rows)
        self.stats["shows"] += len(shown)
        return rows[shown], at[shown], codes, self.due_channel[rows[shown]]

    def feed_back(self, now_s: float) -> None:
        """The outcomes of shows whose window closed by ``now_s``, to a learning policy (once each)."""
        if not self.learns:
            return
        s = self.shows
        ready = np.flatnonzero(~s["fed"] & (s["time"] + FEEDBACK_HOURS * 3600.0 <= now_s))
        if not len(ready):
            return
        s.cols["fed"][ready] = True
        rows, product = s["row"][ready], s["product"][ready]
        names = np.array(self.schema.marks[self.spec.mark], dtype=object)[product]
        request_id = s["request"][ready]
        purchased = s["purchased"][ready]
        self.policy.feedback(Outcomes(
            request_id=request_id, user_id=self.user_ids[rows], product=names,
            shown_time=pd.to_datetime(np.round(s["time"][ready] * 1e6).astype(np.int64), unit="us", utc=True),
            clicked=s["clicked"][ready].copy(), purchased=purchased.copy(),
            value=np.where(purchased, [self.catalogue.value(p) for p in names], 0.0)))

    # -- requests and the log ---------------------------------------------------------------------------------
    def _batch(self, rows, at, request_id, number) -> DecisionBatch:
        r = self.recent
        keep = (r["time"][rows] >= at[:, None] - RECENT_DAYS * DAY_S) & (r["time"][rows] < at[:, None])
        which, slot = np.nonzero(keep)
        who = rows[which]
        schema = self.schema
        recent = {"request": which,
                  "timestamp": pd.to_datetime(np.round(r["time"][who, slot] * 1e6).astype(np.int64), unit="us",
                                              utc=True),
                  "event_type": pd.Categorical.from_codes(r["type"][who, slot], categories=schema.event_types),
                  "amount": r["amount"][who, slot]}
        for j, (name, values) in enumerate(schema.marks.items()):
            code = r["marks"][who, slot, j]
            recent[name] = np.where(code > 0, np.array(values, dtype=object)[code], None)
        return DecisionBatch(
            request_id=request_id, user_id=self.user_ids[rows],
            time=pd.DatetimeIndex(pd.to_datetime(np.round(at * 1e6).astype(np.int64), unit="us", utc=True)),
            attributes=self.attributes.iloc[rows].reset_index(drop=True), recent=pd.DataFrame(recent),
            uniforms=kernels.uniforms(self.seed, self.members[rows], number, PURPOSE_POLICY, POLICY_UNIFORMS))

    def _log(self, rows, at, request_id, actions: Actions) -> None:
        n = len(rows)
        failure = actions.failure if actions.failure is not None else np.full(n, None, dtype=object)
        for reason in failure[failure != None]:  # noqa: E711
            self.stats["failures"][reason] = self.stats["failures"].get(reason, 0) + 1
        self.log.append(pd.DataFrame({
            "user_id": self.user_ids[rows], "request_id": request_id.astype(str),
            "timestamp": pd.to_datetime(np.round(at * 1e6).astype(np.int64), unit="us", utc=True),
            "product": pd.array(actions.product, dtype="string"),
            "propensity": (actions.propensity if actions.propensity is not None else np.full(n, np.nan)).astype(float),
            "failure": pd.array(failure, dtype="string"),
            "latency_ms": (actions.latency_ms if actions.latency_ms is not None
                           else np.full(n, np.nan)).astype(float),
            "policy": self.spec.name}))

    def table(self) -> pd.DataFrame | None:
        """Every decision of the cohort, in the order asked."""
        if not self.log:
            return None
        return pd.concat(self.log, ignore_index=True)

    def finish(self) -> dict:
        """The cohort's counts (and the policy's own ``stats()``, an HTTP policy's calls and latencies)."""
        out = {**self.stats, "policy_seconds": round(self.stats["policy_seconds"], 3)}
        if callable(getattr(self.policy, "stats", None)):
            out["service"] = self.policy.stats()
        if callable(getattr(self.policy, "close", None)):
            self.policy.close()
        return out


def policy_totals(cohorts: list[dict]) -> dict:
    """A run's policy counts over its cohorts' (``Decisions.finish``): decisions, shows, failures by reason,
    seconds in the policy, and an HTTP policy's service figures (``service_totals``)."""
    failures: dict[str, int] = {}
    for c in cohorts:
        for k, v in c["failures"].items():
            failures[k] = failures.get(k, 0) + v
    out = {"decisions": sum(c["decisions"] for c in cohorts), "shows": sum(c["shows"] for c in cohorts),
           "failures": dict(sorted(failures.items())),
           "policy_seconds": round(sum(c["policy_seconds"] for c in cohorts), 3)}
    services = [c["service"] for c in cohorts if "service" in c]
    if services:
        out["service"] = service_totals(services)
    return out


def service_totals(services: list[dict]) -> dict:
    """An HTTP policy's ``stats()`` of every cohort as one: counts summed, calls per second over the time
    spent calling, the most in flight; latency percentiles come from the decisions' ``latency_ms``."""
    calls = sum(s["calls"] for s in services)
    busy = sum(s["calls"] / s["calls_per_s"] for s in services if s["calls"] and s["calls_per_s"] > 0)
    merged = {}
    for key in ("failures", "feedback_failures"):
        merged[key] = {}
        for s in services:
            for k, v in s.get(key, {}).items():
                merged[key][k] = merged[key].get(k, 0) + v
    return {"url": services[0]["url"], "concurrency": services[0]["concurrency"],
            "timeout_s": services[0]["timeout_s"], "calls": calls,
            **{k: sum(s[k] for s in services) for k in ("answered", "fallbacks", "feedback_posts",
                                                        "feedback_outcomes")},
            **merged, "calls_per_s": calls / busy if busy > 0 else None,
            "max_in_flight": max(s["max_in_flight"] for s in services)}


def _code(schema: Schema, name: str) -> int:
    return schema.event_types.index(name) if name in schema.event_types else -1
