"""The report on disk: report.json (every figure) and a self-contained report.html (plots embedded as PNG).

Both are written atomically into the output directory. The same report dict always gives the same files.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from twinsim.models.artifacts import atomic_output_dir, write_json

GROUPS = {
    "fidelity": "Fidelity: are the columns and their combinations distributed like the real data?",
    "sequence": "Sequences: do events hang together over each customer's history as they really do?",
    "calendar": "Calendar: do events happen at the right hours, weekdays and days of the month?",
    "utility": "Utility, dual track: is a model trained on synthetic customers as good on real ones?",
    "privacy": "Privacy: is no synthetic customer a copy or a near-copy of a real training customer?",
}
COLOURS = {"train": "#4c72b0", "holdout": "#55a868", "synthetic": "#c44e52"}


def write_report(report: dict, output: str | Path, overwrite: bool = False) -> Path:
    """Write report.json and report.html into ``output`` (atomically); return the directory."""
    return write_report_files(report, render_html(report), output, overwrite)


def write_report_files(report: dict, page: str, output: str | Path, overwrite: bool = False) -> Path:
    """Write ``report`` as report.json and ``page`` as report.html into ``output`` (atomically); return it.
    Shared by twinsim's reports (validation, backtest)."""
    output = Path(output)
    with atomic_output_dir(output, overwrite) as tmp:
        write_json(tmp / "report.json", report)
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return output


def fmt(x) -> str:
    """A figure as report text: 3 decimals, or thousands separators from 100 on; None as n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, list):
        return " to ".join(fmt(v) for v in x)
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 100 else f"{x:,.0f}"
    return str(x)


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[passed]


def format_summary(report: dict) -> str:
    """The report as lines of text for the terminal."""
    lines = [f"{'check':<24}{'synthetic':>10}{'holdout':>10}{'threshold':>11}  result"]
    for c in report["checks"]:
        threshold = "per item" if c["threshold"] is None and c["passed"] is not None else fmt(c["threshold"])
        lines.append(f"{c['id']:<24}{fmt(c['synthetic']):>10}{fmt(c['holdout']):>10}{threshold:>11}  "
                     f"{_verdict(c['passed'])}")
    groups = ", ".join(f"{g} {_verdict(ok)}" for g, ok in report["groups"].items())
    lines.append(f"{'PASSED' if report['passed'] else 'FAILED'}: {groups}; compared {report['compared_users']:,} "
                 f"synthetic with as many holdout customers; differential privacy: "
                 f"{report['differential_privacy']['text']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots
def png(fig) -> str:
    """A matplotlib figure as base64 PNG, for an <img> data URL; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: accuracy against the ceiling, calendar profiles, survival, DCR, utility."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    accuracy = [c for c in report["checks"] if c["id"].endswith(("accuracy", "inter_event_time"))
                or c["id"].startswith("calendar_")]
    fig, ax = plt.subplots(figsize=(8, 3))
    x = range(len(accuracy))
    ax.bar([i - 0.2 for i in x], [c["holdout"] or 0 for c in accuracy], 0.4, label="holdout (ceiling)",
           color=COLOURS["holdout"])
    ax.bar([i + 0.2 for i in x], [c["synthetic"] or 0 for c in accuracy], 0.4, label="synthetic",
           color=COLOURS["synthetic"])
    ax.scatter(list(x), [c["threshold"] or 0 for c in accuracy], marker="_", s=400, color="black", label="threshold")
    ax.set_xticks(list(x), [c["title"].replace("Calendar: ", "") for c in accuracy], rotation=25, ha="right")
    ax.set_ylim(max(0.0, min([c["synthetic"] or 0 for c in accuracy] + [0.8]) - 0.05), 1.0)
    ax.set_ylabel("accuracy (1 - TVD)")
    ax.legend(loc="lower left", fontsize=8)
    out["accuracy"] = png(fig)

    calendar = report["curves"]["calendar"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
    for ax, kind in zip(axes, ("hour", "weekday", "day_of_month"), strict=True):
        start = 1 if kind == "day_of_month" else 0
        for name in ("train", "holdout", "synthetic"):
            values = calendar[name][kind][start:]
            ax.plot(range(start, start + len(values)), values, label=name, color=COLOURS[name])
        ax.set_title(f"share of events by {kind.replace('_', ' ')}", fontsize=9)
    axes[0].legend(fontsize=8)
    out["calendar"] = png(fig)

    survival = report["curves"]["survival"]
    if survival:
        fig, ax = plt.subplots(figsize=(6, 3))
        reference = survival["synthetic"]
        ax.step(reference["days"], reference["reference"], label="train", color=COLOURS["train"])
        for name in ("holdout", "synthetic"):
            ax.step(survival[name]["days"], survival[name]["sample"], label=name, color=COLOURS[name])
        ax.set_xlabel("days since the customer's first event")
        ax.set_ylabel("share still a customer")
        ax.legend(fontsize=8)
        out["survival"] = png(fig)

    dcr = report["curves"]["dcr"]
    fig, ax = plt.subplots(figsize=(6, 3))
    for name in ("holdout", "synthetic"):
        values = dcr[name]
        ax.step(values, [(i + 1) / len(values) for i in range(len(values))], label=name, color=COLOURS[name])
    ax.set_xlabel("distance to the closest training customer (standardised profile)")
    ax.set_ylabel("share of customers")
    ax.legend(fontsize=8)
    out["dcr"] = png(fig)

    tasks = [(t, r) for t, r in report["utility"].items() if r.get("applicable")]
    if tasks:
        fig, ax = plt.subplots(figsize=(6, 2.6))
        metrics = ("auc", "precision", "recall", "f1")
        for j, (task, r) in enumerate(tasks):
            for k, track in enumerate(("real", "synthetic")):
                colour = COLOURS["holdout" if track == "real" else "synthetic"]
                ax.bar([i * 3 + j * 1.3 + k * 0.6 for i in range(len(metrics))], [r[track][m] for m in metrics], 0.6,
                       label=f"{task}: trained on {track}", color=colour, alpha=1.0 if j == 0 else 0.55)
        ax.set_xticks([i * 3 + 0.9 for i in range(len(metrics))], [m.upper() for m in metrics])
        ax.set_ylabel("on holdout customers")
        ax.legend(fontsize=7, ncol=2)
        out["utility"] = png(fig)
    return out


# ---------------------------------------------------------------------------------------------- html
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;font-size:.92em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top} th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37;font-weight:600} .FAIL{color:#cf222e;font-weight:700} .na{color:#777}
.banner{padding:.8em 1em;border-radius:6px;font-size:1.15em;margin:1em 0}
.banner.ok{background:#dafbe1} .banner.bad{background:#ffebe9}
details{margin:.2em 0} summary{cursor:pointer;color:#555;font-size:.9em} img{max-width:100%}
.meaning{color:#444;font-size:.92em} .note{color:#666;font-size:.85em}
"""


def esc(x) -> str:
    """``x`` as HTML-escaped text."""
    return html.escape(str(x))


def _items_table(items: list[dict]) -> str:
    if not items:
        return ""
    keys = [k for k in items[0] if k != "name"]
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{esc(it['name'])}</td>"
        + "".join(f"<td class='num'>{esc(fmt(it[k]) if k != 'passed' else _verdict(it[k]))}</td>" for k in keys)
        + "</tr>" for it in items)
    return (f"<details><summary>{len(items)} item(s)</summary><table><tr><th>item</th>{head}</tr>{rows}</table>"
            "</details>")


def _check_rows(checks: list[dict]) -> str:
    rows = []
    for c in checks:
        verdict = _verdict(c["passed"])
        css = "na" if c["passed"] is None else verdict
        threshold = fmt(c["threshold"]) if c["threshold"] is not None else "per item"
        if c["passed"] is None:
            threshold = "-"
        note = f"<div class='note'>{esc(c['note'])}</div>" if c["note"] else ""
        rows.append(
            f"<tr><td><b>{esc(c['title'])}</b><div class='meaning'>{esc(c['meaning'])}</div>{note}"
            f"{_items_table(c['items'])}</td>"
            f"<td class='num'>{esc(fmt(c['synthetic']))}</td><td class='num'>{esc(fmt(c['holdout']))}</td>"
            f"<td class='num'>{esc(threshold)}<div class='note'>{esc(c['rule'])}</div></td>"
            f"<td class='{css}'>{esc(verdict)}</td></tr>")
    return ("<table><tr><th>check and what it means</th><th>synthetic</th><th>ceiling: holdout (utility: "
            "real-trained)</th>"
            "<th>threshold</th><th>result</th></tr>" + "".join(rows) + "</table>")


def img_tag(images: dict[str, str], name: str, alt: str) -> str:
    """An <img> of the base64 PNG ``images[name]``; empty when there is none."""
    return f"<p><img alt='{esc(alt)}' src='data:image/png;base64,{images[name]}'></p>" if name in images else ""


def render_html(report: dict) -> str:
    images = plots(report)
    ok = report["passed"]
    inputs = "".join(
        f"<tr><td>{esc(name)}</td><td class='num'>{v['users']:,}</td><td class='num'>{v['events']:,}</td>"
        f"<td>{esc(', '.join(v['files']) or '(in memory)')}</td></tr>" for name, v in report["inputs"].items())
    sections = []
    for group, heading in GROUPS.items():
        checks = [c for c in report["checks"] if c["group"] == group]
        verdict = _verdict(report["groups"].get(group))
        body = _check_rows(checks)
        body += {"fidelity": img_tag(images, "accuracy", "accuracy against the holdout ceiling"),
                 "sequence": img_tag(images, "survival", "Kaplan-Meier churn survival"),
                 "calendar": img_tag(images, "calendar", "calendar profiles"),
                 "utility": img_tag(images, "utility", "utility: real- vs synthetic-trained models"),
                 "privacy": img_tag(images, "dcr", "distance to the closest training customer")}[group]
        sections.append(f"<h2>{esc(heading)} <span class='{verdict if verdict != 'n/a' else 'na'}'>{verdict}</span>"
                        f"</h2>{body}")
    settings = report["settings"]
    return html_page("twinsim validation report", f"""\
<div class="banner {'ok' if ok else 'bad'}"><b>{'PASSED' if ok else 'FAILED'}</b>:
{esc(', '.join(f'{g} {_verdict(v)}' for g, v in report['groups'].items()))}</div>
<p>Every figure compares the synthetic customers with the real <b>training</b> customers the generator learned from.
Next to it stands the same figure for real <b>holdout</b> customers, whom the generator never saw: that is the
ceiling, what a perfect generator would reach. Both sides use the same number of customers
({report['compared_users']:,}), drawn with seed {settings['seed']}. Each threshold is stated next to its figure;
docs/validation.md explains every number.</p>
<table><tr><th>input</th><th>customers</th><th>events</th><th>source</th></tr>{inputs}</table>
<p><b>Differential privacy:</b> {esc(report['differential_privacy']['text'])}.
<b>Terminal event types:</b> {esc(', '.join(settings['terminal']) or 'none')}.
<b>Response task:</b> {esc(settings['response'] if isinstance(settings['response'], str)
                          else ' -> '.join(settings['response']))}.</p>
{''.join(sections)}
""")


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page in the reports' style: ``title`` as its title and heading, then ``body``."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
{body}</body></html>
"""
