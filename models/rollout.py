"""The sampling state of a batch of rows, each holding one user, and the three moves that advance it.

* ``propose(rows)`` feeds each row's latest event to the model and draws the row's *pending* next event
  (time, type, marks, amount) from its own random streams;
* ``commit(rows)`` lets the pending events of ``rows`` happen: they enter the rows' history;
* ``impose(rows, ...)`` replaces the pending events of ``rows`` by given ones (an offer a scenario shows,
  an event of a known history), which ``commit`` then records like drawn ones.

``generate`` proposes and commits every row in lockstep; the simulation engine commits only the rows
whose pending event falls before the end of the current tick. Either way a row's draws are keyed by
(seed, user, event number, purpose) and every network call runs on at least ``MIN_ROWS`` rows, so a user's
events do not depend on which other users share the batch or are due at the same time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twinsim.models import kernels
from twinsim.models.encoding import (
    MEMORY_COUNT_DAYS,
    MEMORY_SUM_DAYS,
    MIN_GAP_HOURS,
    NEVER,
    Schema,
    context_at,
    memory_inputs,
)
from twinsim.models.rowwise import MIN_ROWS, rowwise
from twinsim.models.time_head import mixture_numpy
from twinsim.models.transformer import EventTransformer, KVCache
from twinsim.models.windows import decay_over, mark_happened, recency

PURPOSE_ATTRIBUTES, PURPOSE_TIME, PURPOSE_TYPE, PURPOSE_AMOUNT, PURPOSE_MARKS = 1, 2, 3, 4, 10
FULL_STEP_SHARE = 0.25  # rows stepped on the prefix they make up at least this share of (see ``_step``)


@contextmanager
def network_calls():
    """Sampling's network calls: no gradients, and plain BLAS instead of oneDNN. oneDNN caches a compiled
    kernel for every new matrix shape, and sampling due rows makes a new shape almost every step: the cache
    held gigabytes in a million-user simulation (RSS +130 MB per 16 k users; flat without it, at about the
    same speed)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.mkldnn.enabled = was


@dataclass
class Events:
    """Events as flat arrays: row (or user) index, epoch seconds, type code, mark codes, amount (NaN: none)."""

    user: np.ndarray
    time_s: np.ndarray
    type: np.ndarray
    marks: np.ndarray
    amount: np.ndarray

    @classmethod
    def concat(cls, parts: list[Events], n_marks: int) -> Events:
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty((0, n_marks), np.int64),
                       np.empty(0))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("user", "time_s", "type", "marks",
                                                                            "amount")))

    def take(self, index: np.ndarray) -> Events:
        return Events(self.user[index], self.time_s[index], self.type[index], self.marks[index], self.amount[index])

    def __len__(self) -> int:
        return len(self.user)


class Rollout:
    """``width`` rows of users being sampled, plus ``idle`` rows that only pad small subsets (at least
    MIN_ROWS of them if subsets are stepped); ``origin_s`` is the time (epoch seconds) the cache's and the
    recency inputs' day counts start from. ``cache``: a key-value cache to reuse (its first rows)."""

    def __init__(self, model: EventTransformer, schema: Schema, context: pd.DataFrame | None, seed: int,
                 width: int, origin_s: float, idle: int = 0, cache: KVCache | None = None) -> None:
        self.model, self.schema, self.context, self.seed, self.origin_s = model, schema, context, seed, origin_s
        cfg = model.cfg
        self.amount_codes = np.array(schema.amount_codes, dtype=np.int64)
        self.amount_slot = schema.amount_slots
        self.amount_mean = np.array([schema.amount_log_mean[t] for t in schema.amount_types])
        self.amount_std = np.array([schema.amount_log_std[t] for t in schema.amount_types])
        self.terminal = np.array(schema.terminal_codes, dtype=np.int64)
        self.width, self.idle = width + idle, np.arange(width, width + idle)
        rows = self.width
        # a cache of at least ``rows`` rows may be reused: what earlier users left in it is never attended to
        self.cache = KVCache.empty(cfg, rows) if cache is None else cache.prefix(rows)
        self.user = np.zeros(rows, dtype=np.int64)  # the key of each row's random streams
        self.static = torch.zeros(rows, cfg.d_model)
        self.time_s = np.full(rows, origin_s)  # time of the row's latest event (or of its start)
        self.steps = np.zeros(rows, dtype=np.int64)  # events drawn or imposed so far
        self.last = np.full((rows, schema.recency_size), NEVER)  # days since origin, per recency column
        self.recent = np.zeros((rows, schema.recency_size))  # decayed counts per column, as of time_s
        self.memory = np.zeros((rows, schema.memory_state_size))  # raw memory (kernels.remember), as of time_s
        self.token = self._bos_tokens(rows, origin_s)
        self.pending: dict[str, np.ndarray] = {}  # the next event of every row (see ``_draw``)
        self.cache.reset(torch.arange(rows))
        self.excluded: np.ndarray | None = None  # types never drawn (controlled: only imposed), see ``exclude``
        self.hidden: torch.Tensor | None = None  # each row's latest hidden state, kept once ``keep_hidden``

    # -- rows -------------------------------------------------------------------------------------------------
    def start(self, rows: np.ndarray, users: np.ndarray, static: torch.Tensor, start_s: float | np.ndarray) -> None:
        """Put new ``users`` (stream keys) with ``static`` embeddings into ``rows``, with no history, at ``start_s``."""
        index = torch.from_numpy(rows)
        self.user[rows], self.static[index] = users, static
        self.time_s[rows], self.steps[rows], self.last[rows] = start_s, 0, NEVER
        self.recent[rows], self.memory[rows] = 0.0, 0.0
        self.cache.reset(index)
        bos = self._bos_tokens(len(rows), start_s)
        for k in self.token:
            self.token[k][index] = bos[k]

    def select(self, keep: np.ndarray) -> None:
        """Keep only rows ``keep``, in that order, followed by the idle rows."""
        keep = np.concatenate([keep, self.idle])
        index = torch.from_numpy(keep)
        self.cache.select(index)
        self.static, self.token = self.static[index], {k: v[index] for k, v in self.token.items()}
        if self.hidden is not None:
            self.hidden = self.hidden[index]
        self.user, self.time_s, self.steps, self.last, self.recent, self.memory = (
            x[keep] for x in (self.user, self.time_s, self.steps, self.last, self.recent, self.memory))
        self.pending = {k: v[keep] for k, v in self.pending.items()}
        self.width = len(keep)
        self.idle = np.arange(self.width - len(self.idle), self.width)

    def exclude(self, types: list[int]) -> None:
        """From the next draw on, the customers never do ``types`` of their own accord (controlled event types:
        they happen only where ``impose`` puts them); ``[]`` lifts it."""
        self.excluded = np.isin(np.arange(self.model.time.types), types) if len(types) else None

    def keep_hidden(self) -> None:
        """Keep every row's latest hidden state (for :meth:`mark_probabilities` and :meth:`redraw`)."""
        if self.hidden is None:
            self.hidden = torch.zeros(self.width, self.model.cfg.d_model)

    def redraw(self, rows: np.ndarray, silent_until_s: float) -> None:
        """Draw ``rows``' pending events again from the hidden states they were drawn from (``keep_hidden``),
        given no event until ``silent_until_s``: after ``exclude`` changed what the customers may do."""
        n, rows = len(rows), self._padded(rows)
        silent_h = np.maximum((silent_until_s - self.time_s[rows]) / 3600.0, 0.0)
        silent_h[n:] = 0.0
        with network_calls():
            self._store(rows, self._draw(self.hidden[torch.from_numpy(rows)], rows, silent_h))

    def mark_probabilities(self, rows: np.ndarray, type_: int, time_s: np.ndarray) -> list[np.ndarray]:
        """Per mark, (rows, values) probabilities of an event of ``type_`` at ``time_s`` for ``rows``, as the
        model would draw its marks there (``keep_hidden``): what the logged policy would have shown."""
        gap_h = np.maximum((time_s - self.time_s[rows]) / 3600.0, MIN_GAP_HOURS)
        at = self._at(rows, time_s, gap_h)
        with network_calls(), torch.no_grad():
            model = self.model
            h = self.hidden[torch.from_numpy(rows)]
            q = model.query(h, torch.from_numpy(at["calendar"]), torch.from_numpy(np.log(gap_h).astype(np.float32)),
                            torch.from_numpy(at["context"]), torch.from_numpy(at["seen"]))
            cond = q + model.next_type_emb(torch.full((len(rows),), type_, dtype=torch.long))
            return [torch.softmax(head(cond).double(), -1).numpy() for head in model.mark_heads]

    # -- moves ------------------------------------------------------------------------------------------------
    def propose(self, rows: np.ndarray | None = None, silent_until_s: float | np.ndarray | None = None) -> None:
        """Feed each row's latest token to the model and draw its pending next event (all rows if None).
        ``silent_until_s``: the rows are known to have had no event until then (a log's observation end),
        so their next event is drawn given that silence (``TimeHead.sample``)."""
        with network_calls():
            if rows is None:
                h = self.model.step(self.token, self.static, self.cache)
                if self.hidden is not None:
                    self.hidden[:] = h
                self._store(slice(None), self._draw(h, slice(None)))
                return
            silent_h = None
            if silent_until_s is not None:
                silent_h = np.maximum((np.broadcast_to(silent_until_s, rows.shape) - self.time_s[rows]) / 3600.0, 0.0)
            n = len(rows)
            rows = self._padded(rows)
            if silent_h is not None:
                silent_h = np.concatenate([silent_h, np.zeros(len(rows) - n)])
            h = self._step(rows)
            if self.hidden is not None:
                self.hidden[torch.from_numpy(rows)] = h
            self._store(rows, self._draw(h, rows, silent_h))

    def feed(self, rows: np.ndarray) -> None:
        """Feed each row's latest token to the model without drawing (replaying a known history)."""
        with network_calls():
            self._step(self._padded(rows))

    def _step(self, rows: np.ndarray) -> torch.Tensor:
        """Feed ``rows``' tokens (sorted) and return their hidden states. Rows that fill a good share of
        the prefix of the batch up to the last of them are computed on that prefix, as views (every row of
        it computed, only ``rows`` fed): gathering many rows out of the cache copies them, which costs
        more than computing the rows in between."""
        index = torch.from_numpy(rows)
        m = max(int(rows[-1]) + 1, MIN_ROWS)
        if len(rows) >= MIN_ROWS and len(rows) >= FULL_STEP_SHARE * m:
            token = {k: v[:m] for k, v in self.token.items()}
            return self.model.step(token, self.static[:m], self.cache.prefix(m), only=index)[index]
        return self.model.step({k: v[index] for k, v in self.token.items()}, self.static[index], self.cache, index)

    def _padded(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` and enough idle rows for a network call of at least MIN_ROWS rows (models/rowwise.py)."""
        if len(rows) >= MIN_ROWS:
            return rows
        if len(self.idle) < MIN_ROWS - len(rows):
            raise ValueError(f"stepping {len(rows)} rows needs {MIN_ROWS} idle rows (Rollout(idle=MIN_ROWS))")
        return np.concatenate([rows, self.idle[: MIN_ROWS - len(rows)]])

    def impose(self, rows: np.ndarray, time_s: np.ndarray, type_: np.ndarray, marks: np.ndarray,
               amount: np.ndarray) -> None:
        """Make the given events the pending ones of ``rows`` (times must not precede the rows' latest event)."""
        if np.any(time_s < self.time_s[rows]):
            raise ValueError("an imposed event precedes the row's latest event")
        gap_h = np.maximum((time_s - self.time_s[rows]) / 3600.0, MIN_GAP_HOURS)
        t_next = np.maximum(time_s, self.time_s[rows] + MIN_GAP_HOURS * 3600.0)  # the given time, to the bit
        which = self.amount_slot[type_]
        carries = (which >= 0) & ~np.isnan(amount)
        amount_z = np.zeros(len(rows), dtype=np.float32)
        amount_z[carries] = ((np.log1p(np.abs(amount[carries])) - self.amount_mean[which[carries]])
                             / self.amount_std[which[carries]])
        self._store(rows, {"gap_h": gap_h, "t_next": t_next, "type": type_, "marks": marks, "amount": amount,
                           "amount_z": amount_z, **self._at(rows, t_next, gap_h)})

    def commit(self, rows: np.ndarray) -> Events:
        """The pending events of ``rows`` happen: update the rows' history and next token; return the events."""
        p = {k: v[rows] for k, v in self.pending.items()}
        recent, last, seen = self.recent[rows], self.last[rows], p["seen"]
        recent *= decay_over(p["gap_h"] / 24.0)[:, None]
        t_days = (p["t_next"] - self.origin_s) / 86400.0
        everyone = np.arange(len(rows))
        for key in self.schema.recency_keys(p["type"], p["marks"]):
            hit = everyone[key >= 0]
            cols = key[hit]
            last[hit, cols] = t_days[hit]
            recent[hit, cols] += 1.0
            mark_happened(seen, hit, cols, recent[hit, cols])
        self.recent[rows], self.last[rows] = recent, last
        memory = self.memory[rows]
        kernels.remember(memory, everyone, p["gap_h"] / 24.0, p["type"], p["amount"], p["amount_z"], self.amount_slot,
                         len(self.amount_codes), MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
        self.memory[rows] = memory
        self.time_s[rows] = p["t_next"]
        self.steps[rows] += 1
        token = self._event_tokens(p["type"], p["marks"], p["calendar"], np.log(p["gap_h"]), p["amount_z"],
                                   p["context"], p["t_next"], seen, memory_inputs(memory, len(self.amount_codes)))
        index = torch.from_numpy(rows)
        for k, v in token.items():
            self.token[k][index] = v
        return Events(rows, p["t_next"], p["type"], p["marks"], p["amount"])

    def is_terminal(self, type_: np.ndarray) -> np.ndarray:
        return np.isin(type_, self.terminal)

    # -- internals --------------------------------------------------------------------------------------------
    def _store(self, rows, values: dict[str, np.ndarray]) -> None:
        if not self.pending:
            self.pending = {k: np.zeros((self.width, *np.shape(v)[1:]), dtype=np.asarray(v).dtype)
                            for k, v in values.items()}
        for k, v in values.items():
            self.pending[k][rows] = v

    def _at(self, rows, t_next: np.ndarray, gap_h: np.ndarray) -> dict[str, np.ndarray]:
        """What the model sees of a next event's time: calendar, context, and the recency inputs before it."""
        seen = recency((t_next - self.origin_s) / 86400.0, self.last[rows], self.recent[rows],
                       decay_over(gap_h / 24.0))
        return {"calendar": self.schema.calendar(t_next), "context": context_at(t_next, self.context, self.schema),
                "seen": seen}

    def _on_dates(self, t_next: np.ndarray, time_s: np.ndarray, silent_h: np.ndarray | None) -> np.ndarray:
        """Drawn times of a model of dates moved to the nearest date (at the log's time of day), never before
        a known silence ends (then the first date after it) and at least a second after the latest event."""
        resolution = self.schema.resolution
        out = resolution.nearest(t_next)
        if silent_h is not None:
            bound = time_s + silent_h * 3600.0
            first_after = resolution.nearest(bound + 0.5 * 86400.0 - 1e-6)  # the first date at or after bound
            out = np.where(out < bound, first_after, out)
        return np.maximum(out, time_s + MIN_GAP_HOURS * 3600.0)

    def _bos_tokens(self, rows: int, start_s: float | np.ndarray) -> dict[str, torch.Tensor]:
        cfg = self.model.cfg
        start = np.broadcast_to(np.asarray(start_s, dtype=np.float64), (rows,))
        return {"type": torch.full((rows,), self.model.bos, dtype=torch.long),
                "marks": torch.zeros((rows, len(cfg.mark_sizes)), dtype=torch.long),
                "calendar": torch.from_numpy(self.schema.calendar(start)),
                "cont": torch.zeros((rows, 2 + cfg.n_context)),
                "recency": torch.from_numpy(recency(np.zeros(rows), np.full((rows, self.schema.recency_size), NEVER),
                                                    np.zeros((rows, self.schema.recency_size)), np.ones(rows))),
                "memory": torch.zeros((rows, self.schema.memory_size)),
                "time_days": torch.from_numpy(((start - self.origin_s) / 86400.0).astype(np.float32))}

    def _event_tokens(self, type_, marks, calendar, log_gap, amount_z, context, time_s, recency_now, memory_now):
        cont = np.concatenate([log_gap[:, None], amount_z[:, None], context], axis=1).astype(np.float32)
        return {"type": torch.from_numpy(type_), "marks": torch.from_numpy(marks),
                "calendar": torch.from_numpy(calendar), "cont": torch.from_numpy(cont),
                "recency": torch.from_numpy(recency_now.astype(np.float32)),
                "memory": torch.from_numpy(memory_now),
                "time_days": torch.from_numpy(((time_s - self.origin_s) / 86400.0).astype(np.float32))}

    def _draw(self, h: torch.Tensor, rows, silent_h: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The next event of ``rows`` given their hidden state ``h`` (and ``silent_h`` hours of known silence
        after their latest event). The amount's repeat component reads the latest amounts from the memory
        input of the token just fed (the memory before this event)."""
        model = self.model
        users, steps, time_s = self.user[rows], self.steps[rows], self.time_s[rows]
        memory_now = self.token["memory"][rows if isinstance(rows, slice) else torch.from_numpy(rows)]
        u = kernels.uniforms(self.seed, users, steps, PURPOSE_TIME, 3 * model.time.types)
        gap_h, log_hazard = model.time.sample(h, time_s, u, MIN_GAP_HOURS, silent_h, self.excluded)
        if self.excluded is not None:
            log_hazard[:, self.excluded] = -np.inf  # the type's intensity is the environment's, never the customer's
        t_next = time_s + gap_h * 3600.0
        if self.schema.resolution.is_day:  # a model of dates reads dates: the next step sees what the log had
            t_next = self._on_dates(t_next, time_s, silent_h)
            gap_h = (t_next - time_s) / 3600.0
        at = self._at(rows, t_next, gap_h)
        q = model.query(h, torch.from_numpy(at["calendar"]), torch.from_numpy(np.log(gap_h).astype(np.float32)),
                        torch.from_numpy(at["context"]), torch.from_numpy(at["seen"]))
        probs = torch.softmax(model.type_logits(q, torch.from_numpy(log_hazard)).double(), -1).numpy()
        type_ = kernels.sample_categorical(probs, kernels.uniforms(self.seed, users, steps, PURPOSE_TYPE, 1)[:, 0])
        cond = q + model.next_type_emb(torch.from_numpy(type_))
        marks = np.zeros((len(users), len(model.mark_heads)), dtype=np.int64)
        if len(model.mark_heads):
            u_marks = kernels.uniforms(self.seed, users, steps, PURPOSE_MARKS, len(model.mark_heads))
            for j, head in enumerate(model.mark_heads):
                marks[:, j] = kernels.sample_categorical(torch.softmax(head(cond).double(), -1).numpy(), u_marks[:, j])
        amount = np.full(len(users), np.nan)
        amount_z = np.zeros(len(users), dtype=np.float32)
        carries = np.flatnonzero(np.isin(type_, self.amount_codes))
        if len(carries):
            u_amount = kernels.uniforms(self.seed, users[carries], steps[carries], PURPOSE_AMOUNT, 2)
            sub = torch.from_numpy(carries)
            params = rowwise(model.amount_mixture, cond[sub], torch.from_numpy(marks[carries]), memory_now[sub],
                             torch.from_numpy(type_[carries]))
            z = kernels.sample_normal_mixture(*mixture_numpy(params), u_amount[:, 0], u_amount[:, 1])
            which = self.amount_slot[type_[carries]]
            amount_z[carries] = z
            log_amount = np.maximum(z * self.amount_std[which] + self.amount_mean[which], 0.0)  # magnitudes: >= 0
            amount[carries] = np.round(np.expm1(log_amount), 2)
        return {"gap_h": gap_h, "t_next": t_next, "type": type_, "marks": marks, "amount": amount,
                "amount_z": amount_z, **at}
