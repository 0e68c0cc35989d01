"""Do synthetic customers stay as active, or as quiet, as they started? Real ones do.

    python benchmarks/activity_persistence.py --world runs/bench/world --model runs/bench/model \\
        [--synthetic DIR] [--users 2000] [--types card_payment,login]

Every reference-world customer has a spending and a login rate of their own for the whole year. A model
that under-reads a customer's own history pulls each synthetic customer a little towards the average one
every month; over a year the heavy payers grow lighter, the quiet ones busier, and the population's
spread of activity shrinks. A per-customer discriminator sees exactly that (``docs/validation.md``,
session 14).

For each event type, for the training customers and for ``--users`` synthetic ones (generated as
``validation_report.py`` does, or read from ``--synthetic``), prints the correlation across customers of
log(1 + monthly count) between the window's first month and its months 2, 6 and 12, and the 5th, 50th and 95th
percentiles of the year's count; then one JSON line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from validation_report import generated, model_benchmark_parser, real_parts

from twinsim.models.event_log import load_event_log

MONTHS = (2, 6, 12)
QUANTILES = (0.05, 0.5, 0.95)


def persistence(events: pd.DataFrame, event_type: str) -> dict:
    """Month-1 correlations and yearly-count percentiles of ``event_type`` over the customers of ``events``."""
    users = events["user_id"].unique()
    of_type = events[events["event_type"] == event_type]
    stamp = pd.to_datetime(events["timestamp"])
    first = stamp.min()
    stamp = stamp[of_type.index]
    month = (stamp.dt.year - first.year) * 12 + stamp.dt.month - first.month + 1  # 1: the window's first month
    monthly = of_type.groupby([of_type["user_id"], month]).size().unstack(fill_value=0)
    monthly = monthly.reindex(index=users, columns=range(1, max(MONTHS) + 1), fill_value=0)
    logs = np.log1p(monthly.to_numpy(float))
    year = monthly.sum(axis=1)
    return {"corr_month_1": {m: round(float(np.corrcoef(logs[:, 0], logs[:, m - 1])[0, 1]), 3) for m in MONTHS},
            "year_count": {q: round(float(year.quantile(q)), 1) for q in QUANTILES}}


def main() -> None:
    parser = model_benchmark_parser(__doc__, users=2_000)
    parser.add_argument("--types", default="card_payment,login", help="event types, comma-separated")
    args = parser.parse_args()

    train, _, _, _ = real_parts(args.world, args.model)
    synthetic = load_event_log(args.synthetic) if args.synthetic else generated(args.model, args.users)
    result = {}
    for event_type in args.types.split(","):
        result[event_type] = {}
        for name, log in (("train", train), ("synthetic", synthetic)):
            found = persistence(log.events, event_type)
            result[event_type][name] = found
            corr = " ".join(f"m{m} {found['corr_month_1'][m]:.2f}" for m in MONTHS)
            counts = " ".join(f"p{round(q * 100)} {found['year_count'][q]:.0f}" for q in QUANTILES)
            print(f"{event_type:14s} {name:9s} month-1 correlation with {corr};  year's count {counts}")
    print(json.dumps({"benchmark": "activity_persistence", "model": str(args.model), "types": result}))


if __name__ == "__main__":
    main()
