"""What-if fidelity (issue 22): the twin's uplift against the reference world's true uplift, scenario by scenario.

    python benchmarks/whatif_fidelity.py --out runs/whatif --models runs/whatif/model-s0 runs/whatif/model-s1

1. The reference world of ``--users`` customers over 365 + ``--days`` days (seed 7). It is prefix-stable, so its
   first 365 days, ``OUT/world365``, are the log the twins train on (``--models``: the same data, other seeds;
   more than one puts model uncertainty into the twin's interval):

       twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/whatif/world365
       twinsim train runs/whatif/world365 -o runs/whatif/model-s0 --seed 0      # and --seed 1, ...

2. Ground truth: for every scenario of ``benchmarks/whatif_scenarios/`` the world acts it out on its own
   customers over the last ``--days`` days (per-customer streams, so the baseline world and the scenario world
   are paired), and the true uplift is ``uplift_between(baseline world, scenario world)`` over those days.
3. The twin continues the same customers from the 365-day log (``--history``) with and without the scenario
   (common random numbers), each model; its uplift is pooled over the models by Rubin's rules.
4. Per (scenario, outcome): both uplifts with their 95 % intervals, the relative error, whether the twin's
   interval covers the true uplift, and the sign per segment where the true uplift is significant. Outcomes:
   offer clicks and purchases of the campaign's product (campaign scenarios); card spend, card payments and the
   churned share (every scenario; the macro shock's are the ones to read). Prints a Markdown table and the
   figures the issue asks for, writes ``OUT/fidelity.json``. Twin runs already complete in ``OUT/twin`` are
   reused (delete it after changing a model or the world's code).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd

from twinsim.scenarios.scenario import load_scenario
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world
from twinsim.simulator.reference_world.laws import world_vocabulary
from twinsim.simulator.whatif.compare import uplift_between

SCENARIOS = Path(__file__).parent / "whatif_scenarios"
TRAIN_DAYS = 365
SEED = 7  # the world's (the demo's)
COMMON = ("card_payment:amount", "card_payment", "churned")


def world(out: Path, users: int, days: int, scenario: Path | None = None) -> Path:
    """The world of ``days`` days (with ``scenario`` acted out), made afresh (seconds): whatever changed in the
    world's code, the baseline, the scenario worlds and the twins' history come from the same code."""
    name = f"world{days}" if scenario is None else f"world-{scenario.stem}"
    path = out / name
    generate_reference_world(WorldConfig(users=users, days=days, seed=SEED), path, overwrite=True, scenario=scenario)
    return path


def twin(model: Path, history: Path, start: str, days: int, scenario: str, out: Path, workers: int) -> Path:
    """The twin's continuation of ``history``'s customers under ``scenario``, made once (resumed if cut short)."""
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
        return out
    config = SimulateConfig(users=None, history=str(history), start=start, observed_until=start, days=days, seed=1,
                            scenario=scenario)
    simulate(model, config, out, resume=manifest.exists(), overwrite=not manifest.exists(), workers=workers)
    return out


def outcomes_for(scenario_file: Path) -> list[str]:
    """The outcomes read for a scenario: its campaigns' product clicks and purchases, then the common ones."""
    scenario = load_scenario(scenario_file, world_vocabulary(), pd.Timestamp("2025-01-01"))
    names = []
    for c in scenario.campaigns:
        product = c.marks.get("product")
        if product:
            names += [f"offer_click[product={product}]", f"offer_purchase[product={product}]"]
    return names + list(COMMON)


def covers(ci: list[float] | None, value: float | None) -> bool | None:
    return None if ci is None or value is None else bool(ci[0] <= value <= ci[1])


def segment_signs(truth: dict, estimate: dict, outcome: str) -> tuple[int, int]:
    """(segments where the true uplift of ``outcome`` is significant, of those where the twin's has its sign)."""
    significant = agree = 0
    for attribute, values in truth["segments"].items():
        for value, entry in values.items():
            t = entry["outcomes"].get(outcome)
            e = estimate["segments"].get(attribute, {}).get(value, {}).get("outcomes", {}).get(outcome)
            if t is None or not t.get("significant") or e is None or e.get("uplift") is None:
                continue
            significant += 1
            agree += (e["uplift"] > 0) == (t["uplift"] > 0)
    return significant, agree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/whatif"))
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="twins trained on OUT/world365")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--days", type=int, default=60, help="days after the training year the scenarios run on")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="scenario file stems to run (default: all)")
    args = ap.parse_args()
    started = time.perf_counter()
    files = sorted(p for p in SCENARIOS.glob("*.toml") if not args.only or p.stem in args.only)
    history = world(args.out, args.users, TRAIN_DAYS)
    truth_base = world(args.out, args.users, TRAIN_DAYS + args.days)
    start = str((pd.Timestamp("2025-01-01") + pd.Timedelta(days=TRAIN_DAYS)).date())
    end = str((pd.Timestamp(start) + pd.Timedelta(days=args.days)).date())
    rows, report = [], {"users": args.users, "days": args.days, "window": [start, end],
                        "models": [str(m) for m in args.models], "scenarios": {}}
    for f in files:
        print(f"-- {f.stem}", flush=True)
        truth = uplift_between(truth_base, world(args.out, args.users, TRAIN_DAYS + args.days, f), start=start, end=end)
        runs = [(twin(m, history, start, args.days, "baseline", args.out / "twin" / m.name / "baseline", args.workers),
                 twin(m, history, start, args.days, str(f), args.out / "twin" / m.name / f.stem, args.workers))
                for m in args.models]
        estimate = uplift_between([b for b, _ in runs], [s for _, s in runs], start=start, end=end)
        by_name_t = {o["name"]: o for o in truth["outcomes"]}
        by_name_e = {o["name"]: o for o in estimate["outcomes"]}
        entry = {"exposures": {"world": truth["exposures"], "twin": estimate["exposures"]}, "outcomes": {}}
        for name in outcomes_for(f):
            t, e = by_name_t.get(name), by_name_e.get(name)
            if t is None or e is None:
                entry["outcomes"][name] = {"missing_in": "world" if t is None else "twin"}
                continue
            relative_error = (abs(e["uplift"] - t["uplift"]) / abs(t["uplift"]) if t["uplift"] else None)
            significant, agree = segment_signs(truth, estimate, name)
            entry["outcomes"][name] = {
                "true": t["uplift"], "true_ci": t["ci"], "true_significant": t["significant"],
                "true_relative": t["relative"], "twin": e["uplift"], "twin_ci": e["ci"], "twin_relative": e["relative"],
                "relative_error": relative_error, "covered": covers(e["ci"], t["uplift"]),
                "variance_ratio_twin": e.get("variance_ratio"), "variance_ratio_world": t.get("variance_ratio"),
                "segments_significant": significant, "segments_same_sign": agree}
            rows.append((f.stem, name, entry["outcomes"][name]))
        report["scenarios"][f.stem] = entry
    report["summary"] = summarise(rows)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "fidelity.json").write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(json.dumps(report["summary"], indent=2))


def summarise(rows) -> dict:
    """The issue's figures: median relative error of clicks and purchases, sign per significant segment, interval
    coverage, and purchases' paired/unpaired variance ratio."""
    def offer(kind):
        return [r for _, name, r in rows if name.startswith(f"offer_{kind}[") and r.get("relative_error") is not None]

    out = {}
    for kind in ("click", "purchase"):
        chosen = offer(kind)
        out[f"median_relative_error_{kind}s"] = (round(statistics.median(r["relative_error"] for r in chosen), 3)
                                                 if chosen else None)
    campaign = [r for _, name, r in rows if name.startswith("offer_") and "covered" in r]
    everything = [r for _, _, r in rows if r.get("covered") is not None]
    out["coverage_clicks_purchases"] = (f"{sum(r['covered'] for r in campaign)}/{len(campaign)}" if campaign else None)
    out["coverage_all_outcomes"] = f"{sum(r['covered'] for r in everything)}/{len(everything)}"
    out["segments_same_sign"] = (f"{sum(r['segments_same_sign'] for r in campaign)}/"
                                 f"{sum(r['segments_significant'] for r in campaign)}")
    ratios = [r["variance_ratio_twin"] for r in offer("purchase") if r.get("variance_ratio_twin") is not None]
    out["max_variance_ratio_purchases_twin"] = round(max(ratios), 4) if ratios else None
    return out


def table(rows) -> str:
    def ci(x):
        return "-" if x is None else f"[{x[0]:.4g}, {x[1]:.4g}]"

    lines = ["| scenario | outcome | true uplift [95 % CI] | twin uplift [95 % CI] | rel. error | covered | "
             "segments same sign |", "|---|---|---|---|---|---|---|"]
    for stem, name, r in rows:
        if "true" not in r:
            lines.append(f"| {stem} | {name} | missing in {r['missing_in']} | | | | |")
            continue
        err = "-" if r["relative_error"] is None else f"{100 * r['relative_error']:.0f} %"
        signs = f"{r['segments_same_sign']}/{r['segments_significant']}"
        lines.append(f"| {stem} | {name} | {r['true']:.4g} {ci(r['true_ci'])} | {r['twin']:.4g} {ci(r['twin_ci'])} | "
                     f"{err} | {'yes' if r['covered'] else 'no'} | {signs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
