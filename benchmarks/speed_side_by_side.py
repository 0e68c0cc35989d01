"""The sampler's regression guard: generate and simulate events/s of this tree and another one (the previous
default), on the same model weights, alternating in one invocation so both see the same machine.

    python benchmarks/speed_side_by_side.py runs/model --old-tree /tmp/old --old-model runs/model-v7 \\
        [--users 20000] [--days 30] [--rounds 2] [--workers 2]

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
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(tree: Path, model: str, kind: str, users: int, days: int, new: bool, workers: int = 1) -> dict:
    """One fresh process of ``tree``'s throughput benchmark; torch on one thread in both trees (the new
    tree's sampler always runs so), so the figure is the per-core cost of an event."""
    script = tree / "benchmarks" / f"{kind}_throughput.py"
    args = [model, "--users", str(users), "--days", str(days)]
    args += [] if kind == "generation" else ["--naive-users", "0"]
    args += ["--workers", str(workers)] if new else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    if not new:
        env["PYTHONPATH"] = _importable(tree)
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True, env=env,
                         cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _importable(tree: Path) -> str:
    """A PYTHONPATH under which ``tree`` imports: an older tree that is the ``twinsim`` package itself (its
    root holds ``__init__.py``) through a link named twinsim; one from before the package from its root."""
    if not (tree / "__init__.py").exists():
        return str(tree)
    parent = Path(tempfile.mkdtemp(prefix="twinsim-old-"))
    (parent / "twinsim").symlink_to(tree)
    return str(parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--old-tree", type=Path, required=True)
    parser.add_argument("--old-model", required=True)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="also the new tree with this many workers (1: not)")
    args = parser.parse_args()
    model, old_model = str(Path(args.model_dir).resolve()), str(Path(args.old_model).resolve())
    rates: dict[tuple[str, str], list[int]] = {}
    runs = [("old", args.old_tree.resolve(), old_model, 1), ("new", HERE.parent, model, 1)]
    if args.workers > 1:
        runs.append((f"new, {args.workers} workers", HERE.parent, model, args.workers))
    for _ in range(args.rounds):
        for kind in ("generation", "simulation"):
            for name, tree, m, workers in runs:
                result = measure(tree, m, kind, args.users, args.days, new=name != "old", workers=workers)
                rates.setdefault((kind, name), []).append(result["events_per_second"])
                print(json.dumps({"tree": name, **result}), flush=True)
    summary = {kind: {name: statistics.median(rates[(kind, name)]) for name, *_ in runs}
               for kind in ("generation", "simulation")}
    for v in summary.values():
        for name in list(v):
            if name != "old":
                v[f"{name} / old"] = round(v[name] / v["old"], 3)
    print(json.dumps({"benchmark": "speed_side_by_side", "users": args.users, "days": args.days,
                      "rounds": args.rounds, "events_per_second": summary}))


if __name__ == "__main__":
    main()
