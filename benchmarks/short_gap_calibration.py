"""Does the model give the right chance to a next event within minutes? Teacher-forced, per current type.

    python benchmarks/short_gap_calibration.py --world runs/bench/world --model runs/bench/model \\
        [--synthetic DIR] [--users 400] [--minutes 10]

For every event of ``--users`` holdout customers (the model's split), the model's probability that the
next event comes within ``--minutes`` (one minus the survival of all types' latent times, given the real
history up to that event) next to how often it did. Grouped by the type of the current event. With
``--synthetic`` (a generated dataset of this model) the same on synthetic customers: there the two columns
must agree if generation samples the model faithfully, so a gap between them is a sampler bug, and a gap
on real customers is the model's own error. Prints both tables and one JSON line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from validation_report import model_benchmark_parser

from twinsim.models.encoding import encode
from twinsim.models.event_log import load_event_log
from twinsim.models.model_dir import load_model
from twinsim.models.time_head import clock_hours, grid_position, next_event_log_prob
from twinsim.models.validation.samples import split_by_model
from twinsim.models.windows import EVENT, collate, make_windows, user_ended


@torch.no_grad()
def short_gap_table(model, schema, log, minutes: float, batch: int = 128) -> pd.DataFrame:
    """Per current event type: events, mean model P(next gap < minutes) and the share that was."""
    enc = encode(log, schema)
    win, ended = make_windows(enc, model.cfg.window), user_ended(enc, schema.terminal_codes)
    gap_h, frames = minutes / 60.0, []
    for i in range(0, len(win.user), batch):
        rows = np.arange(i, min(i + batch, len(win.user)))
        b = collate(enc, win, rows, model.cfg.window, ended, model.bos, schema.window_start_s)
        ev = (b["target_kind"] == EVENT).numpy()
        # the exact clock hour of every token (the batch holds only its floor)
        users, rel = win.user[rows], win.start[rows][:, None] + np.arange(model.cfg.window)
        has = rel < enc.lengths[users][:, None]
        t = np.where(has, enc.time_s[np.where(has, enc.offsets[users][:, None] + rel, 0)], schema.window_start_s)
        x = clock_hours(np.concatenate([np.full((len(rows), 1), schema.window_start_s), t], axis=1))[ev]
        bin_, log_width, frac = grid_position(x, np.full(len(x), gap_h))
        pdf, surv = model.time.log_prob(model.hidden(b)[ev], b["grid_day"][ev], b["clock_hour"][ev],
                                        torch.full((len(x),), float(np.log(gap_h))), torch.from_numpy(bin_),
                                        torch.from_numpy(log_width).float(), torch.from_numpy(frac).float())
        _, log_surv = next_event_log_prob(pdf, surv)
        frames.append(pd.DataFrame({"type": b["type"].numpy()[ev], "model": 1.0 - log_surv.exp().numpy(),
                                    "actual": b["target_log_gap"].numpy()[ev] < np.log(gap_h)}))
    d = pd.concat(frames)
    names = [*schema.event_types, "(start)"]
    d["type"] = [names[c] for c in d["type"]]
    out = d.groupby("type").agg(events=("model", "size"), model=("model", "mean"), actual=("actual", "mean"))
    out.loc["all"] = [len(d), d["model"].mean(), d["actual"].mean()]
    return out


def main() -> None:
    parser = model_benchmark_parser(__doc__, users=400)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    model, schema, _ = load_model(args.model)
    model.eval()
    (holdout,) = split_by_model(load_event_log(args.world), args.model, ("holdout",))
    samples = {"real holdout": holdout}
    if args.synthetic is not None:
        samples["synthetic"] = load_event_log(args.synthetic)
    result = {}
    for name, log in samples.items():
        ids = log.events["user_id"].astype(str).drop_duplicates().iloc[:args.users]
        table = short_gap_table(model, schema, log.of_users(set(ids)), args.minutes)
        print(f"{name}, {len(ids)} customers: P(next event within {args.minutes:g} min), model vs actual")
        print(table.round(4).to_string(), end="\n\n")
        result[name] = table.round(5).to_dict(orient="index")
    print(json.dumps({"benchmark": "short_gap_calibration", "model": str(args.model), "minutes": args.minutes,
                      "tables": result}))


if __name__ == "__main__":
    main()
