"""Does a model trained on the reference world reproduce its laws? Train (timed), generate, compare.

    python benchmarks/model_fidelity.py --world runs/bench/world --model runs/bench/model [--users 5000]

Creates the default reference world (5,000 users x 365 days, seed 7) and trains a default model if the
directories do not exist yet, then generates as many synthetic users over the same year and compares
each law (simulator/reference_world/fidelity.py) between the real holdout-free world and the synthetic
data. Prints the table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from twinsim.models.event_log import load_event_log
from twinsim.models.generate import GenerateConfig, generate
from twinsim.models.training import train
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world
from twinsim.simulator.reference_world.fidelity import compare_laws, format_checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="runs/bench/world")
    parser.add_argument("--model", default="runs/bench/model")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    world, model = Path(args.world), Path(args.model)
    if not world.exists():
        generate_reference_world(WorldConfig(users=5_000, days=365, seed=7), world)
    train_seconds = None
    if not (model / "model.json").exists():
        started = time.perf_counter()
        train(load_event_log(world), model, overwrite=True)
        train_seconds = round(time.perf_counter() - started, 1)
    manifest = json.loads((model / "model.json").read_text())
    start = pd.Timestamp(manifest["schema"]["window_start"]).tz_convert("UTC").tz_localize(None)
    days = (pd.Timestamp(manifest["schema"]["window_end"]) - pd.Timestamp(manifest["schema"]["window_start"])).days
    _, synthetic, summary = generate(model, GenerateConfig(users=args.users, start=start, days=days, seed=args.seed))
    real = pd.read_parquet(world / "events.parquet")
    checks = compare_laws(real, synthetic)
    print(format_checks(checks))
    print(json.dumps({
        "benchmark": "model_fidelity", "train_seconds": train_seconds,
        "epoch_seconds": [h["seconds"] for h in manifest["history"]],
        "holdout_nll_per_event": manifest["metrics"]["holdout_nll_per_event"],
        "generation": {k: summary[k] for k in ("users", "events", "seconds", "events_per_second")},
        "laws_passed": sum(c.passed for c in checks), "laws": len(checks),
        "checks": [asdict(c) for c in checks],
    }))


if __name__ == "__main__":
    main()
