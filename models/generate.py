"""Generation: sample new customers (static attributes, then event sequences) from a trained model.

Sampling is batched and *continuous*: a fixed number of slots each hold one user; a user that ends
(terminal event or the end of the window) hands its slot to the next user, so every model step advances
a full batch. The key-value cache is a ring buffer (see ``transformer.py``). All draws come from the
counter-based streams in ``kernels.uniforms`` keyed by (seed, user, event number, purpose), so a user's
events do not depend on the batch size or on the other users.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models import kernels
from models.encoding import (
    MEMORY_COUNT_DAYS,
    MEMORY_SUM_DAYS,
    MIN_GAP_HOURS,
    NEVER,
    Schema,
    context_at,
    memory_inputs,
    static_arrays,
)
from models.errors import TwinsimError
from models.model_dir import load_model, read_table
from models.rowwise import MIN_ROWS, rowwise
from models.time_head import mixture_numpy
from models.transformer import EventTransformer, KVCache
from models.windows import decay_over, mark_happened, recency

PURPOSE_ATTRIBUTES, PURPOSE_TIME, PURPOSE_TYPE, PURPOSE_AMOUNT, PURPOSE_MARKS = 1, 2, 3, 4, 10


@dataclass
class GenerateConfig:
    users: int
    start: pd.Timestamp
    days: int
    seed: int = 0
    where: dict[str, list[str]] = field(default_factory=dict)
    batch_size: int = 4096

    def validate(self) -> None:
        if self.users < 1:
            raise TwinsimError(f"-n/--users must be at least 1 (got {self.users}); e.g. -n 1000")
        if self.days < 1:
            raise TwinsimError(f"--days must be at least 1 (got {self.days}); e.g. --days 90")
        if self.batch_size < 1:
            raise TwinsimError(f"--batch-size must be at least 1 (got {self.batch_size})")


def parse_where(items: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """``("segment=student,retiree", "region=north")`` -> ``{"segment": [...], "region": [...]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise TwinsimError(f"--where {item!r} is not NAME=VALUE; e.g. --where segment=student")
        out[name.strip()] = [v.strip() for v in values.split(",")]
    return out


def sample_attributes(model_dir: Path, schema: Schema, n: int, seed: int,
                      where: dict[str, list[str]]) -> pd.DataFrame:
    """Static attributes of ``n`` new users drawn from the learned joint frequencies (given ``where``)."""
    table = read_table(model_dir, "attributes")
    meta = json.loads((model_dir / "attributes.json").read_text())
    names = [c for c in table.columns if c != "count"]
    for name, values in where.items():
        if name not in names:
            raise TwinsimError(f"--where {name}=...: the model has no attribute {name!r}; attributes: {names}")
        if name in schema.numeric_attributes:
            raise TwinsimError(f"--where {name}: conditioning on numeric attributes is not supported; "
                               f"use a categorical one of {list(schema.categorical_attributes)}")
        known = set(table[name])
        unknown = [v for v in values if v not in known]
        if unknown:
            raise TwinsimError(f"--where {name}={','.join(values)}: unknown value(s) {unknown}; known: {sorted(known)}")
        table = table[table[name].isin(values)]
    u = kernels.uniforms(seed, np.arange(n, dtype=np.int64), np.zeros(n, np.int64), PURPOSE_ATTRIBUTES,
                         1 + len(names))
    cdf = np.cumsum(table["count"].to_numpy(float))
    rows = table.iloc[np.minimum(np.searchsorted(cdf / cdf[-1], u[:, 0], side="right"), len(table) - 1)]
    users = pd.DataFrame({"user_id": [f"s{i:07d}" for i in range(n)]})
    for j, name in enumerate(names):
        values = rows[name].to_numpy()
        if name in schema.numeric_attributes:
            edges = np.asarray(meta["numeric_bin_edges"][name])
            lo, hi = edges[values.astype(int)], edges[np.minimum(values.astype(int) + 1, len(edges) - 1)]
            drawn = lo + (hi - lo) * u[:, 1 + j]
            users[name] = np.round(drawn).astype(np.int64) if name in meta.get("numeric_integer", []) else drawn
        else:
            users[name] = pd.Categorical(values)
    return users


class Sampler:
    """Autoregressive event sampling for a population of users over ``[start_s, end_s)``."""

    def __init__(self, model: EventTransformer, schema: Schema, context: pd.DataFrame | None, seed: int) -> None:
        self.model, self.schema, self.context, self.seed = model, schema, context, seed
        self.amount_codes = np.array(schema.amount_codes, dtype=np.int64)
        self.amount_slot = schema.amount_slots
        self.amount_mean = np.array([schema.amount_log_mean[t] for t in schema.amount_types])
        self.amount_std = np.array([schema.amount_log_std[t] for t in schema.amount_types])
        self.terminal = np.array(schema.terminal_codes, dtype=np.int64)

    @torch.no_grad()
    def run(self, static_cat: np.ndarray, static_num: np.ndarray, start_s: float, end_s: float,
            batch_size: int = 4096, on_progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Events of users ``0..n-1`` as flat arrays (user, time_s, type, marks, amount), user-contiguous."""
        model, cfg = self.model, self.model.cfg
        n = len(static_cat)
        width = max(min(batch_size, n), MIN_ROWS)  # rows beyond n pad the batch (see models/rowwise.py)
        cache = KVCache.empty(cfg, width)
        slot_user = np.minimum(np.arange(width), n - 1)
        pending = min(width, n)
        static_all = model.static(torch.from_numpy(static_cat), torch.from_numpy(static_num))
        static = static_all[torch.from_numpy(slot_user)]
        time_s = np.full(width, start_s)
        steps = np.zeros(width, dtype=np.int64)
        last = np.full((width, self.schema.recency_size), NEVER)  # days since start_s, per recency column
        recent = np.zeros((width, self.schema.recency_size))  # decayed counts per column, as of time_s
        memory = np.zeros((width, self.schema.memory_size))  # raw memory (kernels.remember), as of time_s
        token = self._bos_tokens(width, start_s)
        cache.reset(torch.arange(width))
        active = np.arange(width) < n
        out: list[tuple[np.ndarray, ...]] = []
        done_users = 0
        while active.any():
            h = model.step(token, static, cache)
            gap_h, t_next, cal_next, ctx_next, type_, marks, amount, amount_z, seen = self._draw(
                h, slot_user, steps, time_s, last, recent, token["memory"], start_s)
            decay = decay_over(gap_h / 24.0)
            alive = active & (t_next < end_s)
            t_days = (t_next - start_s) / 86400.0
            recent[alive] *= decay[alive, None]
            for key in self.schema.recency_keys(type_, marks):
                rows = np.flatnonzero(alive & (key >= 0))
                cols = key[rows]
                last[rows, cols] = t_days[rows]
                recent[rows, cols] += 1.0
                mark_happened(seen, rows, cols, recent[rows, cols])
            kernels.remember(memory, np.flatnonzero(alive), gap_h / 24.0, type_, amount, amount_z, self.amount_slot,
                             len(self.amount_codes), MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
            if alive.any():
                out.append((slot_user[alive], t_next[alive], type_[alive], marks[alive], amount[alive]))
            finished = active & (~alive | np.isin(type_, self.terminal))
            time_s = np.where(alive, t_next, time_s)
            steps += 1
            token = self._event_tokens(type_, marks, cal_next, np.log(gap_h), amount_z, ctx_next, time_s, start_s,
                                       seen, memory_inputs(memory, len(self.amount_codes)))
            if finished.any():
                done_users += int(finished.sum())
                slots = np.flatnonzero(finished)
                refill = slots[: max(0, min(len(slots), n - pending))]
                if len(refill):
                    new_users = np.arange(pending, pending + len(refill))
                    pending += len(refill)
                    slot_user[refill] = new_users
                    static[torch.from_numpy(refill)] = static_all[torch.from_numpy(new_users)]
                    time_s[refill], steps[refill], last[refill] = start_s, 0, NEVER
                    recent[refill], memory[refill] = 0.0, 0.0
                    cache.reset(torch.from_numpy(refill))
                    bos = self._bos_tokens(len(refill), start_s)
                    for k in token:
                        token[k][torch.from_numpy(refill)] = bos[k]
                active[slots[len(refill):]] = False
                if on_progress is not None:
                    on_progress(done_users, n)
                if pending == n and 0 < active.sum() < len(active) // 2 and len(active) > MIN_ROWS:
                    # the tail: drop empty slots, keeping at least MIN_ROWS rows
                    spare = np.flatnonzero(~active)[: max(0, MIN_ROWS - int(active.sum()))]
                    keep = np.sort(np.concatenate([np.flatnonzero(active), spare]))
                    rows = torch.from_numpy(keep)
                    cache.select(rows)
                    static, token = static[rows], {k: v[rows] for k, v in token.items()}
                    slot_user, time_s, steps, last, recent, memory, active = (
                        x[keep] for x in (slot_user, time_s, steps, last, recent, memory, active))
        if not out:
            empty = np.empty(0)
            return {"user": empty.astype(np.int64), "time_s": empty, "type": empty.astype(np.int64),
                    "marks": np.empty((0, len(cfg.mark_sizes)), np.int64), "amount": empty}
        user, t, ty, mk, am = (np.concatenate(c) for c in zip(*out, strict=True))
        order = np.lexsort((t, user))
        return {"user": user[order], "time_s": t[order], "type": ty[order], "marks": mk[order], "amount": am[order]}

    def _bos_tokens(self, rows: int, start_s: float) -> dict[str, torch.Tensor]:
        cfg = self.model.cfg
        return {"type": torch.full((rows,), self.model.bos, dtype=torch.long),
                "marks": torch.zeros((rows, len(cfg.mark_sizes)), dtype=torch.long),
                "calendar": torch.from_numpy(np.repeat(kernels.calendar(np.array([start_s])), rows, axis=0)),
                "cont": torch.zeros((rows, 2 + cfg.n_context)),
                "recency": torch.from_numpy(recency(np.zeros(rows), np.full((rows, self.schema.recency_size), NEVER),
                                                    np.zeros((rows, self.schema.recency_size)), np.ones(rows))),
                "memory": torch.zeros((rows, self.schema.memory_size)),
                "time_days": torch.zeros(rows)}

    def _event_tokens(self, type_, marks, calendar, log_gap, amount_z, context, time_s, start_s, recency_now,
                      memory_now):
        cont = np.concatenate([log_gap[:, None], amount_z[:, None], context], axis=1).astype(np.float32)
        return {"type": torch.from_numpy(type_), "marks": torch.from_numpy(marks),
                "calendar": torch.from_numpy(calendar), "cont": torch.from_numpy(cont),
                "recency": torch.from_numpy(recency_now.astype(np.float32)),
                "memory": torch.from_numpy(memory_now),
                "time_days": torch.from_numpy(((time_s - start_s) / 86400.0).astype(np.float32))}

    def _draw(self, h: torch.Tensor, users: np.ndarray, steps: np.ndarray, time_s: np.ndarray, last: np.ndarray,
              recent: np.ndarray, memory_now: torch.Tensor, start_s: float):
        """The next event of every row; ``memory_now`` is the memory input of the token just fed (the
        memory before this event), from which the amount's repeat component reads the latest amounts."""
        model = self.model
        u = kernels.uniforms(self.seed, users, steps, PURPOSE_TIME, 3)
        gap_h = np.maximum(model.time.sample(h, time_s, u), MIN_GAP_HOURS)
        t_next = time_s + gap_h * 3600.0
        cal_next = kernels.calendar(t_next)
        ctx_next = context_at(t_next, self.context, self.schema)
        seen = recency((t_next - start_s) / 86400.0, last, recent, decay_over(gap_h / 24.0))  # before the event
        q = model.query(h, torch.from_numpy(cal_next), torch.from_numpy(np.log(gap_h).astype(np.float32)),
                        torch.from_numpy(ctx_next), torch.from_numpy(seen))
        probs = torch.softmax(model.type_head(q).double(), -1).numpy()
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
            rows = torch.from_numpy(carries)
            params = rowwise(model.amount_mixture, cond[rows], torch.from_numpy(marks[carries]), memory_now[rows],
                             torch.from_numpy(type_[carries]))
            z = kernels.sample_normal_mixture(*mixture_numpy(params), u_amount[:, 0], u_amount[:, 1])
            which = self.amount_slot[type_[carries]]
            amount_z[carries] = z
            log_amount = np.maximum(z * self.amount_std[which] + self.amount_mean[which], 0.0)  # magnitudes: >= 0
            amount[carries] = np.round(np.expm1(log_amount), 2)
        return gap_h, t_next, cal_next, ctx_next, type_, marks, amount, amount_z, seen


def generate(model_dir: str | Path, config: GenerateConfig,
             on_progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(users, events, summary) in the event-log contract for ``config.users`` new customers."""
    config.validate()
    model_dir = Path(model_dir)
    model, schema, manifest = load_model(model_dir)
    users = sample_attributes(model_dir, schema, config.users, config.seed, config.where)
    static_cat, static_num = static_arrays(users, schema)
    start = pd.Timestamp(config.start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    start_s = start.timestamp()
    end_s = start_s + config.days * 86400.0
    sampler = Sampler(model, schema, read_table(model_dir, "context"), config.seed)
    started = time.perf_counter()
    raw = sampler.run(static_cat, static_num, start_s, end_s, config.batch_size, on_progress)
    seconds = time.perf_counter() - started
    events = events_frame(raw, users["user_id"].to_numpy(), schema)
    summary = {"users": config.users, "events": len(events), "seconds": round(seconds, 3),
               "events_per_second": round(len(events) / max(seconds, 1e-9)),
               "window": {"start": start.isoformat(),
                          "end_exclusive": (start + pd.Timedelta(days=config.days)).isoformat()},
               "seed": config.seed, "where": config.where, "model": str(model_dir)}
    return users, events, summary


def events_frame(raw: dict[str, np.ndarray], user_ids: np.ndarray, schema: Schema) -> pd.DataFrame:
    """Flat sampled arrays -> an events table in the contract (categoricals, UTC timestamps)."""
    frame = pd.DataFrame({
        "user_id": user_ids[raw["user"]],
        "timestamp": pd.to_datetime(np.round(raw["time_s"] * 1e6).astype(np.int64), unit="us", utc=True),
        "event_type": pd.Categorical.from_codes(raw["type"], categories=schema.event_types),
        "amount": raw["amount"],
    })
    for j, (name, vocab) in enumerate(schema.marks.items()):
        codes = raw["marks"][:, j] - 1  # index 0 is <none>
        frame[name] = pd.Categorical.from_codes(np.where(codes < 0, -1, codes), categories=vocab[1:])
    return frame
