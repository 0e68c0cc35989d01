"""The backtest report: the twin's continuation of real customers past a cut, scored against what happened,
next to the baselines (own rate, BG/NBD, Pareto/NBD); report.json and a self-contained report.html.

Windows are half-open everywhere (see ``score``): the calibration period is ``timestamp < cut`` and the
horizon ``[cut, cut + horizon)``. docs/backtest.md explains every number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsim.models.validation.report import COLOURS, esc, fmt, html_page, img_tag, png, write_report_files
from twinsim.simulator.backtest.baselines import PENALIZERS, Progress, baselines, week_ends
from twinsim.simulator.backtest.score import (
    churn_by_horizon,
    in_window,
    per_customer_counts,
    score,
    weekly_cumulative,
)

TWIN = "twin"
METHODS = {TWIN: "twin", "own_rate": "own rate", "bg_nbd": "BG/NBD", "pareto_nbd": "Pareto/NBD"}
METHOD_COLOURS = {TWIN: COLOURS["synthetic"], "own_rate": "#8c8c8c", "bg_nbd": COLOURS["train"],
                  "pareto_nbd": "#dd8452", "actual": COLOURS["holdout"]}


def _utc(cut: pd.Timestamp) -> pd.Timestamp:
    cut = pd.Timestamp(cut)
    if cut.tzinfo is None:
        raise ValueError(f"cut {cut} has no time zone: pass a UTC timestamp, e.g. pd.Timestamp('2025-06-01', tz='UTC')")
    return cut.tz_convert("UTC")


def default_customers(events: pd.DataFrame, cut: pd.Timestamp, terminal_types: Sequence[str]) -> tuple[list, int]:
    """The customers a backtest continues: every customer with an event before the cut and no terminal event
    before it, sorted; and how many were left out for having churned already."""
    before = events.loc[events["timestamp"] < cut]
    seen = set(before["user_id"])
    churned = set(before.loc[before["event_type"].isin(terminal_types), "user_id"])
    return sorted(seen - churned), len(seen & churned)


def _twin(draws: Sequence[pd.DataFrame], users: list, types: list, cut: pd.Timestamp, end: pd.Timestamp,
          days: list[float]) -> dict[str, Any]:
    """Per-draw counts, their mean per customer and per-draw totals and weekly curves."""
    counts = [per_customer_counts(d, users, types, cut, end) for d in draws]
    weekly = [weekly_cumulative(d, users, types, cut, days) for d in draws]
    known = pd.Index(users)
    return {"mean": sum(counts[1:], counts[0]) / len(counts),
            "totals": pd.DataFrame([c.sum() for c in counts], columns=types).astype(float),
            "weekly": weekly,
            "events": [int(len(d)) for d in draws],
            "outside_horizon": int(sum((~in_window(d["timestamp"], cut, end)).sum() for d in draws)),
            "other_customers": int(sum((~d["user_id"].isin(known)).sum() for d in draws))}


def _weekly(days: list[float], actual: pd.DataFrame, forecasts: dict[str, pd.DataFrame],
            twin_weekly: list[pd.DataFrame], t: str) -> dict[str, Any]:
    out = {"days": days, "actual": actual[t].tolist(),
           "methods": {m: w[t].tolist() for m, w in forecasts.items() if t in w.columns}}
    if twin_weekly:
        stacked = np.stack([w[t].to_numpy() for w in twin_weekly])
        out["methods"] = {TWIN: stacked.mean(axis=0).tolist(), **out["methods"]}
        out["twin_min"], out["twin_max"] = stacked.min(axis=0).tolist(), stacked.max(axis=0).tolist()
    return out


def _sentence(t: str, entry: dict[str, Any]) -> str:
    best = entry["best_mae"]
    if best is None:
        return f"{t}: no method could be scored"
    others = ", ".join(f"{METHODS[m]} {fmt(v['mae'])}" for m, v in entry["methods"].items() if m != best)
    return f"{t}: {METHODS[best]} wins on per-customer MAE ({fmt(entry['methods'][best]['mae'])}; {others})"


def backtest_report(events: pd.DataFrame, cut: pd.Timestamp, horizon_days: float, draws: Sequence[pd.DataFrame],
                    terminal_types: Sequence[str] = (), types: Sequence[str] | None = None,
                    user_ids: Sequence[str] | None = None, progress: Progress | None = None,
                    penalizers: Sequence[float] = PENALIZERS) -> dict[str, Any]:
    """Score the twin's ``draws`` and the baselines against what the log shows in [cut, cut + horizon).

    ``events``: the full log (user_id, timestamp UTC, event_type, ...). ``draws``: K simulated event tables
    for the horizon, one per seed, holding the continued customers only (none: the baselines alone).
    ``types``: the types scored, by default every non-terminal type of the log. ``user_ids``: the customers
    scored, by default every customer with an event before the cut and no terminal event before it; each must
    have an event before the cut. ``progress`` is called with a line per step (the BTYD fits take a while).
    Returns a JSON-serialisable dict (layout in docs/backtest.md)."""
    cut = _utc(cut)
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, not {horizon_days}")
    end = cut + pd.Timedelta(days=horizon_days)
    terminal = sorted(set(terminal_types))
    types = sorted(set(events["event_type"].astype(str)) - set(terminal)) if types is None else list(types)
    churned_before = None
    if user_ids is None:
        user_ids, churned_before = default_customers(events, cut, terminal)
    users = list(user_ids)
    if not users:
        raise ValueError(f"no customer has an event before the cut {cut.isoformat()}")
    say = progress or (lambda _line: None)
    days = week_ends(horizon_days)

    say(f"counting events of {len(users):,} customers before and after the cut")
    calibration = per_customer_counts(events, users, types, None, cut)
    actual = per_customer_counts(events, users, types, cut, end)
    actual_weekly = weekly_cumulative(events, users, types, cut, days)
    forecasts, weekly, draw_totals, twin = {}, {}, None, None
    if draws:
        twin = _twin(draws, users, types, cut, end, days)
        forecasts[TWIN], draw_totals = twin["mean"], twin["totals"]
    fitted = baselines(events, users, types, cut, horizon_days, terminal, penalizers, say)
    for f in fitted:
        forecasts[f.method], weekly[f.method] = f.counts, f.weekly

    say("scoring")
    scored = score(actual, forecasts, calibration, draw_totals, twin=TWIN)
    for t in types:
        scored[t]["weekly"] = _weekly(days, actual_weekly, weekly, twin["weekly"] if twin else [], t)
    statuses = {f.method: f.status for f in fitted}
    missing = sorted({s["message"] for st in statuses.values() for s in st.values() if s["status"] == "missing"})
    if not draws:
        missing.insert(0, "no twin draws: the baselines alone are scored")
    twin_events = {"per_draw": twin["events"], "ignored_outside_horizon": twin["outside_horizon"],
                   "ignored_other_customers": twin["other_customers"]} if twin else None
    churn = churn_by_horizon(events, draws, users, terminal, cut, horizon_days)
    if churn is not None and churned_before is not None:
        churn["excluded_churned_before_cut"] += churned_before  # left out before scoring, by default_customers
    return {
        "kind": "backtest",
        "settings": {"cut": cut.isoformat(), "end": end.isoformat(), "horizon_days": float(horizon_days),
                     "replications": len(draws), "types": types, "terminal_types": terminal,
                     "window": "calibration: timestamp < cut; horizon: cut <= timestamp < cut + horizon",
                     "time_unit": "days", "penalizers": [float(p) for p in penalizers]},
        "customers": {"scored": len(users), "churned_before_cut": churned_before},
        "events": {"calibration": int(calibration.to_numpy().sum()), "horizon": int(actual.to_numpy().sum()),
                   "twin": twin_events},
        "methods": {m: METHODS[m] for m in forecasts},
        "baselines": statuses,
        "missing": missing,
        "types": scored,
        "winners": {t: scored[t]["best_mae"] for t in types},
        "summary": [_sentence(t, scored[t]) for t in types],
        "churn": churn,
    }


def write_report(report: dict, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write report.json and report.html into ``out_dir`` (atomically); return the directory."""
    return write_report_files(report, render_html(report), out_dir, overwrite)


# --------------------------------------------------------------------------------------------- plots
def plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: the weekly cumulative count of each type, actual against every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for t, entry in report["types"].items():
        w = entry["weekly"]
        days = [0.0, *w["days"]]  # every curve starts from 0 events at the cut
        fig, ax = plt.subplots(figsize=(6, 3))
        if "twin_min" in w:
            ax.fill_between(days, [0.0, *w["twin_min"]], [0.0, *w["twin_max"]], color=METHOD_COLOURS[TWIN],
                            alpha=0.2, label=f"twin: range of {report['settings']['replications']} draws")
        ax.plot(days, [0.0, *w["actual"]], marker="o", color=METHOD_COLOURS["actual"], label="actual", linewidth=2)
        for m, values in w["methods"].items():
            ax.plot(days, [0.0, *values], color=METHOD_COLOURS[m], label=METHODS[m],
                    linestyle="-" if m == TWIN else "--")
        ax.set_xlabel("days after the cut")
        ax.set_ylabel(f"{t}: cumulative events")
        ax.legend(fontsize=8)
        out[f"weekly:{t}"] = png(fig)
    return out


# ---------------------------------------------------------------------------------------------- html
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _cell(text: str, bold: bool = False) -> str:
    return f"<td class='num'>{'<b>' + esc(text) + '</b>' if bold else esc(text)}</td>"


def _spread(entry: dict[str, Any]) -> str:
    s = entry["twin_spread"]
    if s is None:
        return "n/a"
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} ({fmt(s['min'])} to {fmt(s['max'])})"


def _overview(report: dict) -> str:
    rows = "".join(
        f"<tr><td>{esc(t)}</td>{_cell(fmt(e['actual_total']))}{_cell(_spread(e))}"
        f"{_cell(_pct(e['methods'].get(TWIN, {}).get('relative_error')))}"
        f"<td><b>{esc(METHODS.get(e['best_mae'], 'n/a'))}</b></td></tr>" for t, e in report["types"].items())
    return ("<table><tr><th>event type</th><th>actual total</th><th>twin total: mean ± sd (range) of the draws</th>"
            "<th>twin relative error</th><th>best on MAE</th></tr>" + rows + "</table>")


def _status_text(report: dict, method: str, t: str) -> str:
    s = report["baselines"].get(method, {}).get(t, {"status": "missing"})
    return f"{s['status']}: {s.get('message', '')}".rstrip(": ")


def _methods_table(report: dict, t: str) -> str:
    entry = report["types"][t]
    rows = []
    for m, label in METHODS.items():
        v = entry["methods"].get(m)
        if v is None:
            if m != TWIN or report["settings"]["replications"]:
                rows.append(f"<tr><td>{esc(label)}</td><td colspan='5' class='na'>"
                            f"{esc(_status_text(report, m, t))}</td></tr>")
            continue
        best = m == entry["best_mae"]
        total = _spread(entry) if m == TWIN else fmt(v["total"])
        name = f"<b>{esc(label)}</b>" if best else esc(label)
        rows.append(f"<tr><td>{name}</td>{_cell(total, best)}{_cell(_pct(v['relative_error']), best)}"
                    f"{_cell(fmt(v['mae']), best)}{_cell(fmt(v['rmse']), best)}{_cell(fmt(v['corr']), best)}</tr>")
    return (f"<table><tr><th>method</th><th>total (actual {esc(fmt(entry['actual_total']))})</th>"
            "<th>relative error</th><th>MAE</th><th>RMSE</th><th>correlation</th></tr>" + "".join(rows) + "</table>")


def _bucket_table(report: dict, t: str) -> str:
    entry = report["types"][t]
    methods = [m for m in METHODS if m in entry["methods"]]
    head = ("<tr><th rowspan='2'>events of the type before the cut</th><th rowspan='2'>customers</th>"
            f"<th rowspan='2'>actual mean</th><th colspan='{len(methods)}'>mean forecast</th>"
            f"<th colspan='{len(methods)}'>MAE</th></tr><tr>"
            + "".join(f"<th>{esc(METHODS[m])}</th>" for m in methods) * 2 + "</tr>")
    rows = "".join(
        f"<tr><td>{esc(b['bucket'])}</td>{_cell(format(b['customers'], ','))}{_cell(fmt(b['actual_mean']))}"
        + "".join(_cell(fmt(b["methods"][m]["mean"])) for m in methods)
        + "".join(_cell(fmt(b["methods"][m]["mae"]), m == b["best_mae"]) for m in methods) + "</tr>"
        for b in entry["buckets"])
    return f"<table>{head}{rows}</table>"


def _twin_share(e: dict[str, Any]) -> str:
    if e["twin"] is None:
        return "n/a"
    return f"{_share(e['twin'])} ({_share(e['twin_min'])} to {_share(e['twin_max'])})"


def _churn(report: dict) -> str:
    churn = report["churn"]
    if churn is None:
        return "<p class='na'>The log has no terminal event type: no churn to compare.</p>"
    rows = "".join(
        f"<tr><td>{esc(name)}</td>{_cell(_share(e['actual']))}"
        f"{_cell(_twin_share(e))}{_cell(_share(e['previous_window']))}</tr>"
        for name, e in [("any terminal event", churn["any"]), *churn["by_type"].items()])
    return (f"<p>Share of the {churn['customers']:,} customers not churned before the cut who churn in the horizon "
            f"(customers churned before the cut are excluded: {churn['excluded_churned_before_cut']:,}). "
            "<i>Previous window</i> is the naive forecast: the same share in the window of the same length just "
            f"before the cut ({churn['previous_window_customers']:,} customers then).</p>"
            "<table><tr><th>terminal type</th><th>actual</th><th>twin: mean (range) of the draws</th>"
            "<th>previous window</th></tr>" + rows + "</table>")


def _fits(report: dict) -> str:
    rows = []
    for method, per_type in report["baselines"].items():
        if method == "own_rate":
            continue
        for t, s in per_type.items():
            detail = ", ".join(f"{k} {v:.4g}" for k, v in s.get("params", {}).items())
            failed = "; ".join(f"penalizer {f['penalizer']}: {f['error']}" for f in s.get("tried", []))
            rows.append(f"<tr><td>{esc(METHODS[method])}</td><td>{esc(t)}</td><td>{esc(s['status'])}</td>"
                        f"<td class='num'>{esc(fmt(s.get('penalizer')))}</td><td>{esc(detail or s.get('message', ''))}"
                        f"<div class='note'>{esc(failed)}</div></td></tr>")
    return ("<details><summary>BTYD fits: status, penalizer used, parameters (rates per day)</summary><table><tr>"
            "<th>model</th><th>type</th><th>status</th><th>penalizer</th><th>parameters or reason</th></tr>"
            + "".join(rows) + "</table></details>")


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page."""
    images = plots(report)
    s = report["settings"]
    missing = "".join(f"<div class='banner bad'>{esc(m)}</div>" for m in report["missing"])
    twin = report["events"]["twin"]
    ignored = ""
    if twin and (twin["ignored_outside_horizon"] or twin["ignored_other_customers"]):
        ignored = (f"<p class='note'>Ignored twin events: {twin['ignored_outside_horizon']:,} outside the horizon, "
                   f"{twin['ignored_other_customers']:,} of customers not scored.</p>")
    sections = "".join(
        f"<h2>{esc(t)}</h2>{_methods_table(report, t)}"
        f"{img_tag(images, f'weekly:{t}', f'{t}: weekly cumulative events')}"
        f"<p class='meaning'>By how often the customer did it before the cut:</p>{_bucket_table(report, t)}"
        for t in report["types"])
    body = f"""<p>Every customer is continued past the cut <b>{esc(s['cut'])}</b> for <b>{s['horizon_days']:g}
days</b> (to {esc(s['end'])}; {esc(s['window'])}), {s['replications']} times with different seeds, and the
counts of each event type are compared with what the {report['customers']['scored']:,} customers actually did,
next to the baselines a user would otherwise pick: each customer's <i>own rate</i> before the cut, and the
BG/NBD and Pareto/NBD models fitted per type. The twin's forecast per customer is the mean of its draws; the
spread of its total over the draws is the simulation noise. The best method on per-customer MAE is in bold.
docs/backtest.md explains every number.</p>
{missing}{ignored}
<ul>{''.join(f'<li>{esc(line)}</li>' for line in report['summary'])}</ul>
{_overview(report)}
{sections}
<h2>Churn by the horizon</h2>{_churn(report)}
<h2>Baseline fits</h2>{_fits(report)}
"""
    return html_page("twinsim backtest report", body)
