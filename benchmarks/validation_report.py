"""The validation report at default scale: the generator's synthetic data and the sabotage cases.

    python benchmarks/validation_report.py --world runs/bench/world --model runs/bench/model \\
        [--synthetic runs/bench/synthetic] [--out runs/bench/validation] [--cases synthetic,copy,...] [--seed 0]

Train and holdout users come from the model directory's split; its validation users (never trained on)
serve as the second holdout. Without --synthetic, 2,000 users are generated from the model over its
training window (seed 1), as benchmarks/model_fidelity.py does. Without --model the world's users are
split 80/10/10 by a hash of their id and the generator's case is skipped.
For each case prints whether each group of gates passed and the headline figures next to the holdout
ceiling, then one JSON line with every check. --out also writes each case's report directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from models.encoding import split_of
from models.event_log import EventLog, load_event_log
from models.validation import ValidationConfig, run_validation, sabotage
from models.validation.report import write_report
from models.validation.run import differential_privacy
from models.validation.samples import split_by_model

CASES = ("synthetic", "second_holdout", "copy", "shuffled", "shifted")
HEADLINE = ("bivariate_accuracy", "coherence_accuracy", "inter_event_time", "calendar_hour", "calendar_weekday",
            "discriminator", "response_utility", "identical_matches", "dcr_share", "membership_inference")


def real_parts(world: Path, model: Path | None) -> tuple[EventLog, EventLog, EventLog, dict | None]:
    """(train, holdout, second holdout, model manifest)."""
    log = load_event_log(world)
    if model is not None:
        train, holdout, second = split_by_model(log, model, ("train", "holdout", "validation"))
        return train, holdout, second, json.loads((model / "model.json").read_text())
    ids = log.events["user_id"].unique()
    part = split_of(ids, seed=0)
    return tuple(log.of_users(set(ids[part == k])) for k in (0, 2, 1)) + (None,)


def generated(model: Path, users: int) -> EventLog:
    """Synthetic users over the model's training window, in memory."""
    from models.generate import GenerateConfig, generate

    schema = json.loads((model / "model.json").read_text())["schema"]
    start, end = pd.Timestamp(schema["window_start"]), pd.Timestamp(schema["window_end"])
    config = GenerateConfig(users=users, start=start.tz_convert("UTC").tz_localize(None), days=(end - start).days,
                            seed=1)
    frame_users, events, _ = generate(model, config)
    return EventLog(events=events, users=frame_users, marks=tuple(schema["marks"]),
                    amount_types=tuple(schema["amount_types"]), event_files=())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="runs/bench/world", type=Path)
    parser.add_argument("--model", default=None, type=Path)
    parser.add_argument("--synthetic", default=None, type=Path,
                        help="the generator's output (default: generate --users from --model)")
    parser.add_argument("--users", type=int, default=2_000, help="users to generate when --synthetic is omitted")
    parser.add_argument("--out", default=None, type=Path)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, holdout, second, manifest = real_parts(args.world, args.model)
    makers = {"synthetic": lambda: load_event_log(args.synthetic) if args.synthetic else
              generated(args.model, args.users), "second_holdout": lambda: second,
              "copy": lambda: sabotage.copy_of(train), "shuffled": lambda: sabotage.shuffle_columns(train, args.seed),
              "shifted": lambda: sabotage.shift_time(train)}
    cases = [c for c in args.cases.split(",") if c != "synthetic" or args.synthetic or args.model]
    results = {}
    for case in cases:
        started = time.perf_counter()
        report = run_validation(train, holdout, makers[case](), ValidationConfig(seed=args.seed), manifest=manifest)
        seconds = time.perf_counter() - started
        if args.out is not None:
            write_report(report, args.out / case, overwrite=True)
        checks = {c["id"]: c for c in report["checks"]}
        print(f"{case}: {'PASSED' if report['passed'] else 'FAILED'} in {seconds:.0f} s ("
              + ", ".join(f"{g} {'pass' if ok else 'FAIL'}" for g, ok in report["groups"].items()) + ")")
        for name in HEADLINE:
            c = checks[name]
            if c["synthetic"] is not None:
                print(f"  {name:<22} {c['synthetic']:.3f}  holdout {c['holdout']:.3f}  threshold "
                      f"{c['threshold']:.3f}  {'pass' if c['passed'] else 'FAIL'}")
        results[case] = {"passed": report["passed"], "groups": report["groups"], "seconds": round(seconds, 1),
                         "compared_users": report["compared_users"],
                         "checks": {i: {k: c[k] for k in ("synthetic", "holdout", "threshold", "passed")}
                                    for i, c in checks.items()}}
    print(json.dumps({"benchmark": "validation_report", "world": str(args.world),
                      "model": str(args.model) if args.model else None,
                      "differential_privacy": differential_privacy(manifest)["text"], "cases": results}))


if __name__ == "__main__":
    main()
