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

from twinsim.models import kernels
from twinsim.models.encoding import Schema, static_arrays
from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import load_model, read_table
from twinsim.models.profile import without_profile
from twinsim.models.rollout import PURPOSE_ATTRIBUTES, Events, Rollout
from twinsim.models.rowwise import MIN_ROWS, one_thread
from twinsim.models.transformer import EventTransformer


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
        if name in schema.numeric_attributes:  # one of the bin's quantiles (``training.attribute_table``)
            bins = np.asarray(meta["numeric_bin_values"][name])
            users[name] = bins[values.astype(int), np.minimum((u[:, 1 + j] * bins.shape[1]).astype(int),
                                                               bins.shape[1] - 1)]
        else:
            users[name] = pd.Categorical(values)
    return users


class Sampler:
    """Autoregressive event sampling for a population of users over ``[start_s, end_s)``."""

    def __init__(self, model: EventTransformer, schema: Schema, context: pd.DataFrame | None, seed: int) -> None:
        self.model, self.schema, self.context, self.seed = model, schema, context, seed

    @torch.no_grad()
    def run(self, static_cat: np.ndarray, static_num: np.ndarray, start_s: float, end_s: float,
            batch_size: int = 4096, on_progress: Callable[[int, int], None] | None = None,
            first_user: int = 0) -> Events:
        """Events of users ``first_user..first_user+n-1`` (``Events.user``: that index, the key of the user's
        random streams; row ``i`` of the static inputs is user ``first_user + i``), user-contiguous."""
        n = len(static_cat)
        width = max(min(batch_size, n), MIN_ROWS)  # rows beyond n pad the batch (see models/rowwise.py)
        roll = Rollout(self.model, self.schema, self.context, self.seed, width, start_s)
        static_all = self.model.static(torch.from_numpy(static_cat), torch.from_numpy(static_num))
        first = np.minimum(np.arange(width), n - 1)
        roll.start(np.arange(width), first_user + first, static_all[torch.from_numpy(first)], start_s)
        pending = min(width, n)
        active = np.arange(width) < n
        out: list[Events] = []
        done_users = 0
        while active.any():
            roll.propose()
            alive = active & (roll.pending["t_next"] < end_s)
            if alive.any():
                events = roll.commit(np.flatnonzero(alive))
                events.user = roll.user[events.user]
                out.append(events)
            finished = active & (~alive | roll.is_terminal(roll.pending["type"]))
            if finished.any():
                done_users += int(finished.sum())
                slots = np.flatnonzero(finished)
                refill = slots[: max(0, min(len(slots), n - pending))]
                if len(refill):
                    new_users = np.arange(pending, pending + len(refill))
                    pending += len(refill)
                    roll.start(refill, first_user + new_users, static_all[torch.from_numpy(new_users)], start_s)
                active[slots[len(refill):]] = False
                if on_progress is not None:
                    on_progress(done_users, n)
                if pending == n and 0 < active.sum() < len(active) // 2 and len(active) > MIN_ROWS:
                    # the tail: drop empty slots, keeping at least MIN_ROWS rows
                    spare = np.flatnonzero(~active)[: max(0, MIN_ROWS - int(active.sum()))]
                    keep = np.sort(np.concatenate([np.flatnonzero(active), spare]))
                    roll.select(keep)
                    active = active[keep]
        events = Events.concat(out, len(self.model.mark_heads))
        return events.take(np.lexsort((events.time_s, events.user)))


def generate(model_dir: str | Path, config: GenerateConfig, on_progress: Callable[[int, int], None] | None = None,
             workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(users, events, summary) in the event-log contract for ``config.users`` new customers, sampled in
    ``workers`` processes (default 1: this one; contiguous chunks of users, the same bits either way)."""
    config.validate()
    if workers is not None and workers < 1:
        raise TwinsimError(f"--workers must be at least 1 (got {workers}); e.g. --workers 4")
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
    if (workers or 1) > 1 and config.users >= 2 * MIN_ROWS:
        from twinsim.simulator.parallel import sample_in_workers

        raw = sample_in_workers(model_dir, config.seed, static_cat, static_num, start_s, end_s, config.batch_size,
                                workers, on_progress)
    else:
        with one_thread():  # as in every worker: the thread count changes the last bits (models/rowwise.py)
            raw = sampler.run(static_cat, static_num, start_s, end_s, config.batch_size, on_progress)
    seconds = time.perf_counter() - started
    events = events_frame(raw, users["user_id"].to_numpy(), schema)
    users = without_profile(users)
    summary = {"users": config.users, "events": len(events), "seconds": round(seconds, 3),
               "events_per_second": round(len(events) / max(seconds, 1e-9)),
               "window": {"start": start.isoformat(),
                          "end_exclusive": (start + pd.Timedelta(days=config.days)).isoformat()},
               "seed": config.seed, "where": config.where, "model": str(model_dir), "workers": workers or 1,
               "time_resolution": schema.resolution.describe()}
    return users, events, summary


def events_frame(raw: Events, user_ids: np.ndarray, schema: Schema) -> pd.DataFrame:
    """Flat sampled arrays -> an events table in the contract (categoricals, UTC timestamps). A model of a log
    of dates writes dates: each event at its UTC day's time of day of that log (``TimeResolution.snap``;
    events of one day keep their sampled order)."""
    time_s = schema.resolution.snap(raw.time_s)
    frame = pd.DataFrame({
        "user_id": user_ids[raw.user],
        "timestamp": pd.to_datetime(np.round(time_s * 1e6).astype(np.int64), unit="us", utc=True),
        "event_type": pd.Categorical.from_codes(raw.type, categories=schema.event_types),
        "amount": raw.amount,
    })
    for j, (name, vocab) in enumerate(schema.marks.items()):
        codes = raw.marks[:, j] - 1  # index 0 is <none>
        frame[name] = pd.Categorical.from_codes(np.where(codes < 0, -1, codes), categories=vocab[1:])
    return frame
