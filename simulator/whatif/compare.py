"""Uplift between a baseline run and a scenario run of the same customers (one pair per model): every
outcome overall and per segment, the cumulative uplift day by day, exposures and budget, the A/B readout
of a control share, pooled across models by Rubin's rules (``uplift.py``). Runs are twin runs or
reference-world directories (``runs.py``), so the same figures come from the twin and from the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.simulator.whatif.outcomes import (
    Outcome,
    categorical_attributes,
    cumulative,
    outcomes_of,
    per_customer,
)
from twinsim.simulator.whatif.runs import Run, read_run
from twinsim.simulator.whatif.uplift import paired, pooled, pooled_all, two_sample


def uplift_between(baseline: str | Path | Sequence[str | Path], scenario: str | Path | Sequence[str | Path], *,
                   start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None,
                   terminal_types: Sequence[str] | None = None, headline: Sequence[str] | None = None) -> dict:
    """The uplift report (a dict of plain JSON values) of ``scenario`` against ``baseline``: two run directories,
    or one of each per model (the same data trained with different seeds), pooled by Rubin's rules. Customers
    are paired by user_id; only events in [start, end) count (default: the runs' window). ``headline``: the
    outcomes plotted and summarised (default: the campaigns' marks, amounts and churn)."""
    baselines, scenarios = _paths(baseline), _paths(scenario)
    if len(baselines) != len(scenarios) or not baselines:
        raise TwinsimError(f"give one baseline run per scenario run (got {len(baselines)} baseline and "
                           f"{len(scenarios)} scenario runs); e.g. uplift_between('w/baseline', 'w/scenario')")
    pairs = [(read_run(b, start, end), read_run(s, start, end)) for b, s in zip(baselines, scenarios, strict=True)]
    for b, s in pairs:
        if (b.start, b.end) != (s.start, s.end):
            raise TwinsimError(f"{b.path} covers {b.start} to {b.end} but {s.path} covers {s.start} to {s.end}; "
                               "compare runs of the same days, or pass start= and end=")
    runs = [r for pair in pairs for r in pair]
    terminal = sorted(terminal_types if terminal_types is not None else {t for r in runs for t in r.terminal_types})
    outcomes = outcomes_of(runs, terminal)
    names = [o.name for o in outcomes]
    scenario_json = pairs[0][1].scenario or {}
    chosen = list(headline) if headline is not None else default_headline(outcomes, scenario_json)
    unknown = [h for h in chosen if h not in names]
    if unknown:
        raise TwinsimError(f"headline outcome(s) {unknown} are not outcomes of these runs; e.g. {names[:3]}")
    models = [_one_model(b, s, outcomes, chosen, terminal) for b, s in pairs]
    overall = pooled_all([m["overall"] for m in models])
    report = {
        "twinsim": "whatif",
        "scenario": scenario_json,
        "window": {"start": pairs[0][0].start.isoformat(), "end": pairs[0][0].end.isoformat(),
                   "days": int(np.ceil((pairs[0][0].end - pairs[0][0].start) / pd.Timedelta(days=1)))},
        "runs": [{"kind": b.kind, "baseline": str(b.path), "scenario": str(s.path), "model": s.model,
                  "customers": m["customers"]} for (b, s), m in zip(pairs, models, strict=True)],
        "models": len(models),
        "includes_model_uncertainty": len(models) > 1,
        "interval": interval_text(len(models)),
        "terminal_types": terminal,
        "headline": chosen,
        "outcomes": [{**o.to_json(), **e} for o, e in zip(outcomes, overall, strict=True)],
        "segments": _pooled_segments([m["segments"] for m in models], names),
        "cumulative": _pooled_cumulative([m["cumulative"] for m in models], pairs[0][0]),
        "exposures": _exposures([s for _, s in pairs], scenario_json),
        "ab_test": _pooled_ab([m["ab"] for m in models], chosen),
    }
    report["summary"] = summary_lines(report)
    return report


def _paths(value) -> list[Path]:
    return [Path(value)] if isinstance(value, str | Path) else [Path(v) for v in value]


def interval_text(models: int) -> str:
    if models > 1:
        return (f"95 % intervals include model uncertainty: each model's paired interval is pooled with the spread "
                f"between the {models} models by Rubin's rules (t interval)")
    return ("95 % intervals cover simulation noise only (one model); they do not include model uncertainty: give "
            "more models trained with other seeds (--models) to include it")


def default_headline(outcomes: list[Outcome], scenario: dict) -> list[str]:
    """The outcomes a what-if is about: for each campaign, every type's count at the value of its most specific
    mark (the one the fewest event types carry: product rather than channel), then sums of amounts and the
    churned share; without campaigns, each type's count instead of the marks."""
    carriers: dict[str, set[str]] = {}
    for o in outcomes:
        if o.mark is not None:
            carriers.setdefault(o.mark, set()).add(o.event_type)
    chosen: list[str] = []
    for campaign in scenario.get("campaigns", []):
        marks = [m for m in campaign.get("marks", {}) if m in carriers]
        if not marks:
            chosen += [o.name for o in outcomes if o.kind == "count" and o.mark is None
                       and o.event_type == campaign.get("event_type")]
            continue
        mark = min(marks, key=lambda m: len(carriers[m]))
        value = campaign["marks"][mark]
        matching = [o for o in outcomes if o.mark == mark and o.value == value]
        chosen += [o.name for o in sorted(matching, key=lambda o: o.event_type != campaign.get("event_type"))]
    if not chosen:
        chosen = [o.name for o in outcomes if o.kind == "count" and o.mark is None]
    chosen += [o.name for o in outcomes if o.kind in ("amount", "churned")]
    return list(dict.fromkeys(chosen))


def _one_model(b: Run, s: Run, outcomes: list[Outcome], headline: list[str], terminal: list[str]) -> dict:
    """One model's paired estimates: overall, per segment, cumulative (headline) and the A/B readout."""
    ids_b, ids_s = pd.Index(b.users["user_id"]), pd.Index(s.users["user_id"])
    ids = ids_b.intersection(ids_s).sort_values()
    if not len(ids):
        raise TwinsimError(f"{b.path} and {s.path} share no customer (user_id); a paired what-if needs the same "
                           "customers in both runs: the same seed, users and start")
    base, scen = per_customer(b, outcomes, ids, terminal), per_customer(s, outcomes, ids, terminal)
    users = b.users.set_index("user_id").loc[ids]
    segments = {}
    for attribute in categorical_attributes(b.users):
        values = users[attribute].astype(object).where(users[attribute].notna(), None).to_numpy()
        segments[attribute] = {str(v): paired(base[values == v], scen[values == v])
                               for v in sorted({v for v in values if v is not None}, key=str)}
    index = {o.name: j for j, o in enumerate(outcomes)}
    curves = {h: paired(cumulative(b, outcomes[index[h]], ids, terminal), cumulative(s, outcomes[index[h]], ids,
                                                                                     terminal))
              for h in headline}
    return {"customers": {"paired": len(ids), "baseline_only": len(ids_b.difference(ids)),
                          "scenario_only": len(ids_s.difference(ids))},
            "overall": paired(base, scen), "segments": segments, "cumulative": curves,
            "ab": _ab(s, ids, base, scen, [index[h] for h in headline], headline)}


def _pooled_segments(per_model: list[dict], names: list[str]) -> dict:
    out: dict = {}
    for attribute in per_model[0]:
        values = sorted({v for m in per_model for v in m.get(attribute, {})})
        out[attribute] = {}
        for v in values:
            present = [m[attribute][v] for m in per_model if v in m.get(attribute, {})]
            estimates = pooled_all(present)
            out[attribute][v] = {"customers": estimates[0]["n"],
                                 "outcomes": dict(zip(names, (_compact(e) for e in estimates), strict=True))}
    return out


def _compact(e: dict) -> dict:
    keys = ("baseline", "scenario", "uplift", "ci", "relative", "relative_ci", "significant", "variance_ratio")
    return {k: e.get(k) for k in keys}


def _pooled_cumulative(per_model: list[dict], run: Run) -> dict:
    days = [str((run.start + pd.Timedelta(days=d)).date()) for d in range(len(next(iter(per_model[0].values()), [])))]
    out = {}
    for name in per_model[0]:
        estimates = pooled_all([m[name] for m in per_model])
        out[name] = {"days": days, "baseline": [e["baseline"] for e in estimates],
                     "scenario": [e["scenario"] for e in estimates], "uplift": [e["uplift"] for e in estimates],
                     "ci": [e["ci"] for e in estimates]}
    return out


def _budget(campaign: dict) -> tuple[int | None, int | None]:
    """(total, per day) of a campaign's budget in the scenario's JSON form (flat or as a ``budget`` table)."""
    nested = campaign.get("budget") if isinstance(campaign.get("budget"), dict) else {}
    total = campaign.get("budget_total", nested.get("total"))
    per_day = campaign.get("budget_per_day", nested.get("per_day"))
    return total, per_day


def _exposures(scenario_runs: list[Run], scenario: dict) -> dict:
    """Per campaign: exposures, customers reached, exposures per day and the budget used (the first model's
    run; the others' totals in ``per_model``)."""
    campaigns = {c.get("name"): c for c in scenario.get("campaigns", [])}
    out = {}
    frames = [r.exposures if r.exposures is not None else pd.DataFrame(columns=["user_id", "timestamp", "campaign"])
              for r in scenario_runs]
    for name in sorted(set(campaigns) | {str(c) for c in frames[0]["campaign"].unique()}):
        mine = frames[0][frames[0]["campaign"] == name]
        per_day = mine.groupby(mine["timestamp"].dt.strftime("%Y-%m-%d")).size() if len(mine) else pd.Series()
        total, day_budget = _budget(campaigns.get(name, {}))
        out[name] = {"exposures": int(len(mine)), "customers": int(mine["user_id"].nunique()),
                     "per_day": {str(k): int(v) for k, v in per_day.items()},
                     "budget_total": total, "budget_per_day": day_budget,
                     "budget_used": None if not total else len(mine) / total,
                     "busiest_day": int(per_day.max()) if len(per_day) else 0,
                     "per_model": [int((f["campaign"] == name).sum()) for f in frames]}
        if name in campaigns:
            out[name]["control"] = campaigns[name].get("control")
    return out


def _ab(s: Run, ids: pd.Index, base: np.ndarray, scen: np.ndarray, columns: list[int], headline: list[str]) -> dict:
    """Per campaign with a control arm: the A/B readout of the scenario run (treatment vs control customers)
    next to the paired uplift of the treated, for the headline outcomes."""
    if s.assignments is None:
        return {}
    out = {}
    for campaign, arms in s.assignments.groupby("campaign", observed=True):
        where = ids.get_indexer(arms["user_id"])
        arm = arms["arm"].astype(str).to_numpy()
        treat = np.unique(where[(where >= 0) & (arm == "treatment")])
        control = np.unique(where[(where >= 0) & (arm == "control")])
        if len(treat) < 2 or len(control) < 2:
            continue
        readout = two_sample(scen[treat][:, columns], scen[control][:, columns])
        truth = paired(base[treat][:, columns], scen[treat][:, columns])
        out[str(campaign)] = {"readout": dict(zip(headline, readout, strict=True)),
                              "paired_treated": dict(zip(headline, truth, strict=True))}
    return out


def _pooled_ab(per_model: list[dict], headline: list[str]) -> dict:
    campaigns = sorted({c for m in per_model for c in m}) if headline else []
    out = {}
    for c in campaigns:
        present = [m[c] for m in per_model if c in m]
        out[c] = {"treatment": present[0]["readout"][headline[0]]["n_treatment"],
                  "control": present[0]["readout"][headline[0]]["n_control"]}
        for key in ("readout", "paired_treated"):
            out[c][key] = {h: _compact(pooled([p[key][h] for p in present])) for h in headline}
    return out


def summary_lines(report: dict) -> list[str]:
    """The headline outcomes as lines of text: baseline, scenario, uplift and relative uplift with intervals."""
    by_name = {o["name"]: o for o in report["outcomes"]}
    lines = []
    for name in report["headline"]:
        o = by_name[name]
        ci = "n/a" if o["ci"] is None else f"{o['ci'][0]:+.4g} to {o['ci'][1]:+.4g}"
        rel = "" if o["relative"] is None else (
            f", {o['relative']:+.1%}" + ("" if o["relative_ci"] is None
                                         else f" ({o['relative_ci'][0]:+.1%} to {o['relative_ci'][1]:+.1%})"))
        lines.append(f"{name}: {o['baseline']:.4g} -> {o['scenario']:.4g} per customer, uplift {o['uplift']:+.4g} "
                     f"(95 % CI {ci}){rel}")
    return lines
