"""Training throughput: windows/s of the training loop against the old loop's settings, side by side.

    python benchmarks/training_throughput.py runs/demo/world [--users 1000] [--steps 6] [--rounds 4]

Both loops train their own copy of the default model (same seed) on the same shuffled windows of ``--users``
training users. They take turns, one block at a time, each block the same number of windows (``--steps``
steps of the new batch size), so that a busy machine slows both alike: the ratio is what to read, not the
absolute figures. "old" is the loop as it was before the training-speed work, kept here verbatim (64
windows per step in one loop on torch's own threads, the old ``collate`` with the query recency of every
token, AdamW without the fused kernel, clipping per parameter); "new" is ``models/training.py`` with the
``TrainConfig`` defaults (256 windows per step split between two worker threads, ``Workers``). Prints one
JSON line: windows/s of each, their ratio (over all rounds, and the median of the rounds' ratios), and
seconds per epoch extrapolated to every training window of WORLD; ``validation_seconds`` times one
validation pass each way (old: one loop; new: the workers), which an epoch adds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch

from twinsim.models import kernels, time_head
from twinsim.models.encoding import NEVER, encode, fit_schema
from twinsim.models.event_log import load_event_log
from twinsim.models.profile import fit_profile
from twinsim.models.training import (
    PARTS,
    TrainConfig,
    Workers,
    evaluate,
    make_optimiser,
    model_config_for,
    split_log,
    train_step,
)
from twinsim.models.transformer import EventTransformer
from twinsim.models.windows import CENSOR, EVENT, NONE, collate, decay_over, make_windows, recency, user_ended

OLD_BATCH = 64


def old_collate(log, win, rows, window, ended, bos_type, bos_time_s):
    """``windows.collate`` as it was (verbatim but for names): the query recency of every token, (B, W + 1, F)."""
    users = win.user[rows]
    start, first_target = win.start[rows], win.first_target[rows]
    n = log.lengths[users]
    base = log.offsets[users]
    rel = start[:, None] + np.arange(window)[None, :]
    has_token = rel < n[:, None]
    event = np.where(has_token, base[:, None] + rel, 0)

    def tokens(values, fill):
        body = np.where(has_token.reshape(has_token.shape + (1,) * (values.ndim - 1)), values[event], fill)
        return np.concatenate([np.broadcast_to(fill, (len(rows), 1) + values.shape[1:]), body], axis=1)

    tok_calendar = tokens(log.calendar, 0)
    tok_calendar[:, 0] = kernels.calendar(np.array([bos_time_s]))[0]
    tok_time = tokens(log.time_s, bos_time_s)
    tok_days = (tok_time - bos_time_s) / 86400.0
    tok_last = tokens(log.last_days, NEVER)
    tok_recent = tokens(log.recent, 0.0)
    j = start[:, None] + np.arange(window + 1)[None, :]
    responsible = j >= first_target[:, None]
    is_event = responsible & (j < n[:, None])
    is_censor = responsible & (j == n[:, None]) & ~ended[users][:, None]
    target = np.where(is_event, base[:, None] + j, 0)
    last_time = log.time_s[base + n - 1]
    censor_gap_h = np.maximum((log.window_end_s - last_time) / 3600.0, 1.0 / 3600.0)
    kind = np.where(is_event, EVENT, np.where(is_censor, CENSOR, NONE))
    target_log_gap = np.where(is_event, log.log_gap[target], np.log(censor_gap_h)[:, None])
    target_days = (log.time_s[target] - bos_time_s) / 86400.0
    clock = time_head.clock_hours(tok_time)
    target_bin, bin_log_width, bin_frac = time_head.grid_position(clock, np.exp(target_log_gap.astype(np.float64)))

    def t(x, dtype=None):
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        return tensor if dtype is None else tensor.to(dtype)

    return {
        "type": t(np.concatenate([np.full((len(rows), 1), bos_type), np.where(has_token, log.event_type[event],
                                                                                bos_type)], axis=1), torch.long),
        "marks": t(tokens(log.marks, 0), torch.long),
        "calendar": t(tok_calendar, torch.long),
        "cont": t(np.concatenate([tokens(log.log_gap, 0.0)[..., None], tokens(log.amount_z, 0.0)[..., None],
                                  tokens(log.context, 0.0)], axis=2), torch.float32),
        "time_days": t(tok_days, torch.float32),
        "recency": t(recency(tok_days, tok_last, tok_recent, np.ones_like(tok_days))),
        "memory": t(tokens(log.memory, 0.0), torch.float32),
        "query_recency": t(recency(target_days, tok_last, tok_recent, decay_over(target_days - tok_days))),
        "valid": t(np.concatenate([np.ones((len(rows), 1), bool), has_token], axis=1)),
        "static_cat": t(log.static_cat[users], torch.long),
        "static_num": t(log.static_num[users], torch.float32),
        "target_kind": t(kind, torch.long),
        "target_log_gap": t(target_log_gap, torch.float32),
        "clock_hour": t(np.floor(clock), torch.long),
        "grid_day": t(time_head.utc_day(tok_time), torch.long),
        "target_bin": t(target_bin, torch.long),
        "target_bin_log_width": t(bin_log_width, torch.float32),
        "target_bin_frac": t(bin_frac, torch.float32),
        "target_type": t(log.event_type[target], torch.long),
        "target_marks": t(log.marks[target], torch.long),
        "target_amount_z": t(log.amount_z[target], torch.float32),
        "target_has_amount": t(is_event & ~np.isnan(log.amount[target])),
        "target_calendar": t(log.calendar[target], torch.long),
        "target_context": t(log.context[target], torch.float32),
    }


def old_step(model, optimiser, schedule, train_log, win, rows, ended, bos_time_s):
    """The old loop's step, as it was: collate in the loop, AdamW without the fused kernel, clipping per parameter."""
    batch = old_collate(train_log, win, rows, model.cfg.window, ended, model.bos, bos_time_s)
    batch["query_recency"] = batch["query_recency"][batch["target_kind"] == EVENT]  # what the old nll indexed
    parts = model.nll(batch)
    loss = sum(parts[k] for k in PARTS) / parts["events"].clamp(min=1)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    schedule.step()
    return loss.item()


def schedule_for(optimiser, steps):
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)) + 0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world")
    parser.add_argument("--users", type=int, default=1000, help="training users to draw windows from")
    parser.add_argument("--steps", type=int, default=6, help="steps of the new loop per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of each loop, alternating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig(seed=args.seed)
    log = load_event_log(args.world)
    log, schema = fit_profile(log, fit_schema(log, split_seed=args.seed))
    splits = split_log(encode(log, schema), schema)
    train_log = splits["train"]
    full_windows = len(make_windows(train_log, model_config_for(schema).window).user)
    if train_log.n_users > args.users:
        mask = np.zeros(train_log.n_users, bool)
        mask[np.random.default_rng(args.seed).choice(train_log.n_users, args.users, replace=False)] = True
        train_log = train_log.subset(mask)
    cfg = model_config_for(schema)
    win, ended = make_windows(train_log, cfg.window), user_ended(train_log, schema.terminal_codes)
    block = args.steps * config.batch_size  # windows per block, the same for both loops
    need = block * (args.rounds + 1)
    order = np.random.default_rng(args.seed).permutation(len(win.user))
    order = np.resize(order, need)  # wraps around where the users hold fewer windows than asked

    models = {}
    for name in ("old", "new"):
        torch.manual_seed(args.seed)
        model = EventTransformer(cfg)
        model.train()
        if name == "old":
            optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=config.weight_decay)
        else:
            optimiser = make_optimiser(model, config.lr, config.weight_decay)
        models[name] = (model, optimiser, schedule_for(optimiser, 10_000))

    workers = Workers(config.threads)

    def make_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return collate(train_log, win, rows, cfg.window, ended, cfg.n_types, schema.window_start_s)

    def run(name: str, rows: np.ndarray) -> float:
        model, optimiser, schedule = models[name]
        started = time.perf_counter()
        if name == "old":
            for i in range(0, len(rows), OLD_BATCH):
                old_step(model, optimiser, schedule, train_log, win, rows[i:i + OLD_BATCH], ended,
                         schema.window_start_s)
        else:
            for i in range(0, len(rows), config.batch_size):
                train_step(model, optimiser, schedule, workers, make_batch, rows[i:i + config.batch_size])
        return time.perf_counter() - started

    for name in ("old", "new"):  # warm-up block: first calls, allocator, Numba caches
        run(name, order[:block])
    seconds = {"old": [], "new": []}
    for r in range(args.rounds):
        rows = order[(r + 1) * block:(r + 2) * block]
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            seconds[name].append(run(name, rows))
    workers.close()
    validation = {}
    for name, threads in (("old", 1), ("new", config.threads)):
        started = time.perf_counter()
        evaluate(models[name][0], splits["validation"], schema, threads=threads)
        validation[name] = round(time.perf_counter() - started, 1)
    rate = {name: block * args.rounds / sum(s) for name, s in seconds.items()}
    per_round = [o / n for o, n in zip(seconds["old"], seconds["new"], strict=True)]
    print(json.dumps({
        "benchmark": "training_throughput", "world": args.world, "users": train_log.n_users,
        "windows_per_block": block, "rounds": args.rounds, "batch_size": {"old": OLD_BATCH, "new": config.batch_size},
        "windows_per_second": {k: round(v, 1) for k, v in rate.items()},
        "ratio": round(rate["new"] / rate["old"], 2),
        "ratio_per_round": [round(x, 2) for x in per_round], "ratio_median": round(statistics.median(per_round), 2),
        "train_windows": full_windows,
        "seconds_per_epoch": {k: round(full_windows / v, 1) for k, v in rate.items()},
        "validation_seconds": validation,
        "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
