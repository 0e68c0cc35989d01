"""The sampler's regression guard: generate and simulate events/s of this tree and another one (the previous
default), on the same model weights, alternating in one invocation so both see the same machine.

    python benchmarks/speed_side_by_side.py runs/model --old-tree /tmp/old --old-model runs/model-v7 \\
        [--users 20000] [--days 30] [--rounds 2]

``--old-tree`` is a checkout of the previous default (``git worktree add /tmp/old COMMIT``); ``--old-model``
the same model as that tree reads it (a model directory whose weights are identical, with the manifest of
the older format). Each measurement is a fresh process: ``benchmarks/generation_throughput.py`` (N users x D
days) and ``benchmarks/simulation_throughput.py`` (N users x D days after the 30-day sampled warm-up,
events/s counting the warm-up). Prints one JSON line per measurement, then the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(tree: Path, model: str, kind: str, users: int, days: int, new: bool) -> dict:
    script = tree / "benchmarks" / f"{kind}_throughput.py"
    args = ([model, "--users", str(users), "--days", str(days)] if kind == "generation" else
            [model, "--users", str(users), "--days", str(days), "--naive-users", "0"])
    env = dict(os.environ)
    if not new:  # an older tree may predate the twinsim package: its folders import from its root
        env["PYTHONPATH"] = str(tree)
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True, env=env,
                         cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--old-tree", type=Path, required=True)
    parser.add_argument("--old-model", required=True)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, old_model = str(Path(args.model_dir).resolve()), str(Path(args.old_model).resolve())
    rates: dict[tuple[str, str], list[int]] = {}
    for _ in range(args.rounds):
        for kind in ("generation", "simulation"):
            for name, tree, m in (("old", args.old_tree.resolve(), old_model), ("new", HERE.parent, model)):
                result = measure(tree, m, kind, args.users, args.days, new=name == "new")
                rates.setdefault((kind, name), []).append(result["events_per_second"])
                print(json.dumps({"tree": name, **result}), flush=True)
    summary = {kind: {name: statistics.median(rates[(kind, name)]) for name in ("old", "new")}
               for kind in ("generation", "simulation")}
    for v in summary.values():
        v["new_over_old"] = round(v["new"] / v["old"], 3)
    print(json.dumps({"benchmark": "speed_side_by_side", "users": args.users, "days": args.days,
                      "rounds": args.rounds, "events_per_second": summary}))


if __name__ == "__main__":
    main()
