"""The what-if report on disk: uplift.json (every figure) and a self-contained uplift.html (plots embedded as
PNG), in validate's page style (``models/validation/report.py``). docs/whatif.md explains every number."""

from __future__ import annotations

from pathlib import Path

from twinsim.models.artifacts import write_json
from twinsim.models.validation.report import COLOURS, esc, fmt, html_page, img_tag, png


def write_uplift(report: dict, out_dir: str | Path) -> Path:
    """Write uplift.json and uplift.html into ``out_dir`` (each atomically, beside the runs); return the page."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "uplift.json", report)
    page = out_dir / "uplift.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(render_html(report), encoding="utf-8")
    tmp.replace(page)
    return page


def _num(x) -> str:
    return "n/a" if x is None else (f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}")


def _ci(ci) -> str:
    return "n/a" if ci is None else f"{_num(ci[0])} to {_num(ci[1])}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _pct_ci(ci) -> str:
    return "n/a" if ci is None else f"{ci[0]:+.1%} to {ci[1]:+.1%}"


def _td(text: str, strong: bool = False) -> str:
    return f"<td class='num'>{'<b>' if strong else ''}{esc(text)}{'</b>' if strong else ''}</td>"


def _row(name: str, e: dict, extra: str = "") -> str:
    return (f"<tr><td>{esc(name)}</td>{_td(_num(e['baseline']))}{_td(_num(e['scenario']))}"
            f"{_td(_num(e['uplift']), e['significant'])}{_td(_ci(e['ci']))}{_td(_pct(e['relative']))}"
            f"{_td(_pct_ci(e['relative_ci']))}{extra}</tr>")


HEAD = ("<tr><th>outcome (per customer)</th><th>baseline</th><th>scenario</th><th>uplift</th><th>95 % interval</th>"
        "<th>relative</th><th>95 % interval</th>")


def _outcome_table(outcomes: list[dict]) -> str:
    rows = "".join(_row(o["name"], o, _td(fmt(o.get("variance_ratio")))) for o in outcomes)
    return f"<table>{HEAD}<th>paired / unpaired variance</th></tr>{rows}</table>"


def plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: the cumulative uplift of each headline outcome day by day, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["cumulative"]
    if not curves:
        return {}
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items(), strict=False):
        x = list(range(1, len(c["days"]) + 1))
        ax.plot(x, [0.0 if u is None else u for u in c["uplift"]], color=COLOURS["synthetic"])
        low = [u if ci is None else ci[0] for u, ci in zip(c["uplift"], c["ci"], strict=True)]
        high = [u if ci is None else ci[1] for u, ci in zip(c["uplift"], c["ci"], strict=True)]
        ax.fill_between(x, [0.0 if v is None else v for v in low], [0.0 if v is None else v for v in high],
                        color=COLOURS["synthetic"], alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="#888", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("day of the window", fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    axes[0][0].set_ylabel("cumulative uplift per customer", fontsize=8)
    fig.tight_layout()
    return {"cumulative": png(fig)}


def _exposures(report: dict) -> str:
    if not report["exposures"]:
        return "<p>No campaign exposures: the scenario has no campaign.</p>"
    rows = []
    for name, e in report["exposures"].items():
        used = "n/a" if e["budget_used"] is None else f"{e['budget_used']:.0%}"
        budget = ["none" if b is None else f"{b:,}" for b in (e["budget_total"], e["budget_per_day"])]
        control = "none" if not e.get("control") else f"{e['control']:.0%}"
        cells = [f"{e['exposures']:,}", f"{e['customers']:,}", f"{e['busiest_day']:,}", *budget, used, control,
                 ", ".join(f"{n:,}" for n in e["per_model"])]
        rows.append(f"<tr><td>{esc(name)}</td>{''.join(_td(c) for c in cells)}</tr>")
    rows = "".join(rows)
    return ("<table><tr><th>campaign</th><th>exposures</th><th>customers reached</th><th>busiest day</th>"
            "<th>budget (total)</th><th>budget per day</th><th>budget used</th><th>control share</th>"
            f"<th>exposures per model</th></tr>{rows}</table>")


def _ab(report: dict) -> str:
    if not report["ab_test"]:
        return ("<p>The scenario holds out no control group (no <code>control</code> share), so there is no A/B "
                "readout.</p>")
    parts = []
    for campaign, ab in report["ab_test"].items():
        rows = "".join(_row(f"{name}: A/B (treatment vs control)", ab["readout"][name])
                       + _row(f"{name}: paired, treated customers", ab["paired_treated"][name])
                       for name in ab["readout"])
        parts.append(f"<h3>{esc(campaign)}: {ab['treatment']:,} treatment, {ab['control']:,} control customers</h3>"
                     f"<table>{HEAD}</tr>{rows}</table>")
    return ("<p>What a randomised test of the campaign would read: the scenario run's treatment customers against "
            "its held-out control customers (a two-sample difference), next to the paired uplift of the same "
            "treated customers against their own baseline (what common random numbers measure).</p>"
            + "".join(parts))


def _segments(report: dict) -> str:
    parts = []
    for attribute, values in report["segments"].items():
        rows = "".join(_row(f"{value} ({s['customers']:,}): {name}", s["outcomes"][name])
                       for value, s in values.items() for name in report["headline"])
        parts.append(f"<details><summary>by {esc(attribute)}</summary><table>{HEAD}</tr>{rows}</table></details>")
    return "".join(parts) or "<p>The users table has no categorical attribute.</p>"


def render_html(report: dict) -> str:
    images = plots(report)
    by_name = {o["name"]: o for o in report["outcomes"]}
    headline = [by_name[h] for h in report["headline"]]
    scenario = report["scenario"]
    customers = report["runs"][0]["customers"]
    window = report["window"]
    lines = "".join(f"<li>{esc(line)}</li>" for line in report["summary"])
    body = f"""\
<div class="banner {'ok' if report['includes_model_uncertainty'] else 'bad'}">{esc(report['interval'])}.</div>
<p><b>Scenario:</b> {esc(scenario.get('name', '?'))}: {esc(scenario.get('description', ''))}
<b>Window:</b> {esc(window['start'][:10])} to {esc(window['end'][:10])} ({window['days']} days).
<b>Customers paired:</b> {customers['paired']:,} (by user_id; {customers['baseline_only']:,} only in the baseline,
{customers['scenario_only']:,} only in the scenario). <b>Models:</b> {report['models']}.</p>
<ul>{lines}</ul>
<h2>Headline outcomes</h2>
<p class="meaning">Each customer lives through the window twice with the same random numbers, once as they are and
once under the scenario; the uplift is the mean of the per-customer differences. Bold: the interval excludes 0.
The last column is the paired variance over the variance two independent runs would have: what common random
numbers bought (0.1 means an interval about a third as wide).</p>
{_outcome_table(headline)}
<h2>Cumulative uplift over time</h2>
{img_tag(images, 'cumulative', 'cumulative uplift per customer, day by day, with 95 % intervals')}
<h2>Exposures and budget</h2>
{_exposures(report)}
<h2>A/B readout</h2>
{_ab(report)}
<h2>By segment</h2>
{_segments(report)}
<h2>Every outcome</h2>
<details><summary>{len(report['outcomes'])} outcomes</summary>{_outcome_table(report['outcomes'])}</details>
<p class="note">Runs: {esc('; '.join(f"{r['baseline']} vs {r['scenario']}" for r in report['runs']))}.
Terminal event types (churn): {esc(', '.join(report['terminal_types']) or 'none')}.</p>
"""
    return html_page(f"twinsim what-if: {scenario.get('name', 'scenario')}", body)
