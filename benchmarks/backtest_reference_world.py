"""Forward figures on the reference world (issue 20): the twin continues a 365-day world's customers past
its end and is scored against the same world's next 90 days (the world is prefix-stable, so a 455-day world
is the ground truth of the 365-day one's future), next to own rate, BG/NBD and Pareto/NBD; and new customers
simulated in a month inside and a month past the training window, against the world's own customers.

    python benchmarks/backtest_reference_world.py --out runs/bench/forward [--model DIR] [--replications 10]

Without --model, ``twinsim backtest`` trains the default model on the first 365 days (about 20 minutes on
2 cores). Prints one JSON document: per event type the totals (relative error) and per-customer MAE of every
method, the January-only totals of the continued customers, and events per customer-day of new customers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from twinsim.simulator.backtest.run import BacktestConfig, backtest
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world

CUT, HORIZON_DAYS = "2026-01-01", 90


def per_customer_day(events: pd.DataFrame, users: int, start: pd.Timestamp, days: int) -> float:
    inside = (events["timestamp"] >= start) & (events["timestamp"] < start + pd.Timedelta(days=days))
    return float(inside.sum()) / (users * days)


def new_customers(model: Path, world: pd.DataFrame, month: str, out: Path, users: int) -> dict:
    """Events per customer-day of ``users`` new twin customers in ``month`` (30 days of sampled warm-up
    before it) against the world's customers still open at its start."""
    start = pd.Timestamp(month, tz="UTC")
    days = (start + pd.offsets.MonthBegin(1) - start).days
    simulate(model, SimulateConfig(users=users, start=str(start.date()), days=days, seed=1), out, overwrite=True)
    twin = pd.read_parquet(out / "events", columns=["timestamp"])
    closed = world.loc[(world["event_type"] == "account_closed") & (world["timestamp"] < start), "user_id"]
    open_users = world["user_id"].nunique() - closed.nunique()
    real, synthetic = per_customer_day(world, open_users, start, days), per_customer_day(twin, users, start, days)
    return {"month": month, "twin": round(synthetic, 4), "world": round(real, 4),
            "relative": round(synthetic / real - 1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/forward"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--replications", type=int, default=10)
    parser.add_argument("--users", type=int, default=5000)
    args = parser.parse_args()
    world_dir = args.out / "world455"
    if not (world_dir / "world.json").exists():
        generate_reference_world(WorldConfig(users=args.users, days=365 + HORIZON_DAYS, seed=7), world_dir)
    config = BacktestConfig(cut=CUT, horizon_days=HORIZON_DAYS, replications=args.replications,
                            model=str(args.model) if args.model else None)
    report = backtest(world_dir, config, args.out / "backtest", say=lambda line: print(line, flush=True))
    model = Path(report["settings"]["model"])
    world = pd.read_parquet(world_dir / "events.parquet", columns=["user_id", "timestamp", "event_type"])
    world["event_type"] = world["event_type"].astype(str)

    january = {}  # the continued customers' first month: twin (mean of the draws) against the world
    cut, end = pd.Timestamp(CUT, tz="UTC"), pd.Timestamp("2026-02-01", tz="UTC")
    draws = [pd.read_parquet(p / "events", columns=["timestamp", "event_type"])
             for p in sorted((args.out / "backtest" / "draws").iterdir())]
    for t in ("login", "offer_click", "offer_purchase", "card_payment"):
        real = int(((world["event_type"] == t) & (world["timestamp"] >= cut) & (world["timestamp"] < end)).sum())
        twin = sum(int(((d["event_type"].astype(str) == t) & (d["timestamp"] < end)).sum()) for d in draws) / len(draws)
        january[t] = {"world": real, "twin": round(twin, 1), "relative": round(twin / real - 1, 4)}

    fresh = [new_customers(model, world, month, args.out / f"new-{month}", args.users)
             for month in ("2025-06-01", "2026-01-01")]
    print(json.dumps({
        "benchmark": "backtest_reference_world", "cut": CUT, "horizon_days": HORIZON_DAYS,
        "replications": args.replications,
        "types": {t: {"actual_total": e["actual_total"], "best_mae": e["best_mae"],
                      "methods": {m: {k: v[k] for k in ("total", "relative_error", "mae", "rmse", "corr")}
                                  for m, v in e["methods"].items()}}
                  for t, e in report["types"].items()},
        "churn": report["churn"] and report["churn"]["any"],
        "continued_january": january, "new_customers_per_day": fresh}, indent=1))


if __name__ == "__main__":
    main()
