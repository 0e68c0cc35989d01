"""Whole training epochs of the default model, side by side: this tree and another (an older commit).

    python benchmarks/training_epoch.py --world runs/world [--old-tree /tmp/oldpp] [--epochs 1] \\
        [--rounds 1] [--max-train-users N]

Each configuration runs ``twinsim train``'s own ``train`` in a fresh process (the old tree's package through
PYTHONPATH), one after another, ``--rounds`` times in turn, and reports per configuration: the first epoch's
seconds as ``train`` records them (steps and the validation pass), the whole run's wall seconds (data
preparation, the final holdout scoring and the model directory included) and the holdout NLL per event.
Ratios are to the first configuration. Medians over rounds; one JSON line at the end.

For an old tree: ``git worktree add /tmp/old COMMIT; mkdir -p /tmp/oldpp; ln -sfn /tmp/old /tmp/oldpp/twinsim``
and pass ``--old-tree /tmp/oldpp``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = """
import json, sys, time
from twinsim.models.event_log import load_event_log
from twinsim.models.training import TrainConfig, train
def main():
    world, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    started = time.perf_counter()
    metrics = train(load_event_log(world), out, config=TrainConfig(**options), overwrite=True)
    history = json.load(open(out + "/history.json"))["history"]
    print(json.dumps({"epoch_s": history[0]["seconds"], "wall_s": time.perf_counter() - started,
                      "holdout": metrics["holdout_nll_per_event"]["transformer"]["total"]}))
if __name__ == "__main__":
    main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True)
    parser.add_argument("--old-tree", help="a folder holding the old tree as a package named twinsim")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-train-users", type=int)
    args = parser.parse_args()
    base = {"epochs": args.epochs} | ({"max_train_users": args.max_train_users} if args.max_train_users else {})
    configs = ({"old tree": (args.old_tree, base)} if args.old_tree else {}) | {"this tree": (None, base)}
    results: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "run_train.py"
        script.write_text(RUN)
        for r in range(args.rounds):
            for name, (tree, options) in configs.items():
                env = dict(os.environ) | ({"PYTHONPATH": tree} if tree else {})
                started = time.perf_counter()
                done = subprocess.run([sys.executable, str(script), args.world, str(Path(tmp) / "model"),
                                       json.dumps(options)], env=env, capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}, {name}: {results[name][-1]} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
    first = None
    summary = {}
    for name, runs in results.items():
        epoch, wall = (float(np.median([x[k] for x in runs])) for k in ("epoch_s", "wall_s"))
        first = first or epoch
        summary[name] = {"epoch_s": epoch, "wall_s": wall, "holdout": runs[-1]["holdout"],
                         "speed_up": first / epoch}
        print(f"{name:>12}: epoch {epoch:7.1f} s ({first / epoch:.2f}x)  whole run {wall:7.1f} s  "
              f"holdout {runs[-1]['holdout']:.4f}")
    print(json.dumps({"epochs": args.epochs, "rounds": args.rounds, "configs": summary}))


if __name__ == "__main__":
    main()
