"""Holdout NLL per event of trained models, each scored in every evaluation layout, side by side.

    python benchmarks/holdout_nll_layouts.py --world runs/world --models runs/model runs/model-c512 \\
        [--chunks none 512]

``none`` scores every holdout event in the half-overlapping windows training uses by default (each event
sees at least half a window of context); a number scores it in chunks of that many events with banded
attention, which is what sampling computes (``models/windows.py``). Training layouts differ, so compare
models within one column. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from twinsim.models.encoding import encode
from twinsim.models.event_log import load_event_log
from twinsim.models.model_dir import load_model
from twinsim.models.training import evaluate, split_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--chunks", nargs="+", default=["none", "512"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = load_event_log(args.world)
    rows = []
    for path in args.models:
        model, schema, manifest = load_model(path)
        holdout = split_log(encode(log, schema), schema)["holdout"]
        trained = manifest.get("train_config", {}).get("chunk")
        row = {"model": path, "trained_chunk": trained}
        for name in args.chunks:
            row[name] = round(evaluate(model, holdout, schema, chunk=None if name == "none" else int(name))["total"], 4)
        rows.append(row)
    print(f"{'model':<28} {'trained':>8} " + " ".join(f"{'eval ' + c:>10}" for c in args.chunks))
    for row in rows:
        print(f"{row['model']:<28} {str(row['trained_chunk'] or 'none'):>8} "
              + " ".join(f"{row[c]:>10.4f}" for c in args.chunks))
    print(json.dumps({"holdout_nll_per_event": rows}))


if __name__ == "__main__":
    main()
