"""Training speed per layout: milliseconds a step and the epoch they add up to, side by side in one run.

    python benchmarks/training_throughput.py --world runs/world [--chunks none 256 512] [--steps 20] \\
        [--rounds 3] [--threads 1]

The default model on the world's training users (the split ``twinsim train`` makes), one fresh model per
layout: ``none`` is the half-overlapping windows of the window's length, a number is ``--chunk`` (banded
attention, models/windows.py). Each round times ``--steps`` optimisation steps of each layout in turn
(collate, forward, backward, AdamW; the same token budget a step), as CPU time of this process so that
other work on the machine skews it less. Prints per layout: windows, steps an epoch, tokens and scored
events a step, ms a step (median over rounds), the epoch's projected seconds and its ratio to the first
layout; and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from twinsim.models.encoding import encode, fit_schema
from twinsim.models.event_log import load_event_log
from twinsim.models.profile import fit_profile
from twinsim.models.training import TrainConfig, mean_loss, model_config_for, split_log
from twinsim.models.transformer import EventTransformer
from twinsim.models.windows import NONE, batches, collate, make_windows, user_ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True)
    parser.add_argument("--chunks", nargs="+", default=["none", "256", "512"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig()
    log = load_event_log(args.world)
    log, schema = fit_profile(log, fit_schema(log, split_seed=config.seed))
    train_log = split_log(encode(log, schema), schema)["train"]
    ended = user_ended(train_log, schema.terminal_codes)
    cfg = model_config_for(schema)
    budget = config.batch_size * (cfg.window + 1)
    layouts = {}
    for name in args.chunks:
        chunk = None if name == "none" else int(name)
        win = make_windows(train_log, cfg.window, chunk, cfg.n_layers)
        torch.manual_seed(0)
        model = EventTransformer(cfg)
        steps = batches(win, cfg.window, budget, np.random.default_rng(0))
        layouts[name] = {"win": win, "model": model, "steps": steps, "ms": [], "tokens": [], "scored": [],
                         "opt": torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                                         fused=True)}  # as train() steps
    for r in range(args.rounds):
        for lay in layouts.values():
            model, opt = lay["model"], lay["opt"]
            model.train()
            picks = lay["steps"][r * args.steps:(r + 1) * args.steps]
            started = time.process_time()
            for rows in picks:
                batch = collate(train_log, lay["win"], rows, cfg.window, ended, model.bos, schema.window_start_s)
                loss = mean_loss(model.nll(batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                lay["tokens"].append(batch["valid"].numel())
                lay["scored"].append(int((batch["target_kind"] != NONE).sum()))
            lay["ms"].append(1000 * (time.process_time() - started) / len(picks))
    out, first = [], None
    print(f"{'layout':>8} {'windows':>8} {'steps':>6} {'tokens/step':>11} {'scored/step':>11} {'ms/step':>8} "
          f"{'epoch s':>8} {'speed-up':>8}")
    for name, lay in layouts.items():
        ms = float(np.median(lay["ms"]))
        epoch = ms * len(lay["steps"]) / 1000
        first = first or epoch
        row = {"layout": name, "windows": len(lay["win"].user), "steps": len(lay["steps"]),
               "tokens_per_step": float(np.mean(lay["tokens"])), "scored_per_step": float(np.mean(lay["scored"])),
               "ms_per_step": round(ms, 1), "epoch_s": round(epoch, 1), "speedup": round(first / epoch, 2)}
        out.append(row)
        print(f"{name:>8} {row['windows']:>8,} {row['steps']:>6,} {row['tokens_per_step']:>11,.0f} "
              f"{row['scored_per_step']:>11,.0f} {ms:>8.1f} {epoch:>8.0f} {row['speedup']:>7.2f}x")
    print(json.dumps({"threads": args.threads, "steps": args.steps, "rounds": args.rounds, "layouts": out}))


if __name__ == "__main__":
    main()
