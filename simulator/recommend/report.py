"""The report of ``twinsim recommend``: report.json (every figure, NaN as null) and a self-contained report.html
(plots embedded as PNG) in validate's page style (``models/validation/report.py``), written beside the runs.

With ``truth`` (the same policies run in the reference world) it also holds, per policy and metric, the truth,
the twin and the relative error, whether the truth lies in the twin's interval, and Kendall's tau between the
two rankings of the policies by CTR and by purchases per show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from twinsim.models.artifacts import write_json
from twinsim.models.validation.report import esc, fmt, html_page, img_tag, png
from twinsim.simulator.recommend.metrics import CHURN_DAYS, RATIOS, compare, measure_run
from twinsim.simulator.recommend.ope import ESTIMATORS, METRICS, against_truth
from twinsim.simulator.whatif.runs import Run
from twinsim.simulator.whatif.uplift import _clean

RANKED = ("ctr", "purchases_per_show")  # the metrics whose policy rankings truth and twin are compared on
VERDICT = {True: "met", False: "not met", None: "n/a"}
HEADLINE = ("ctr", "purchases_per_show", "revenue_per_decision", "churn_30")
LABELS = {"customers": "customers", "decisions": "decisions", "shows": "shows", "show_rate": "show rate",
          "clicks": "clicks", "ctr": "CTR (clicked shows / shows)", "purchases": "purchases",
          "purchases_per_show": "purchases per show", "revenue": "revenue",
          "revenue_per_decision": "revenue per decision", "coverage_products": "coverage: catalogue products shown",
          "coverage_customers": "coverage: customers shown anything", "entropy": "diversity: normalised entropy",
          "gini": "diversity: Gini", "drift_tvd": "mix drift: TVD first vs last week",
          **{f"churn_{d}": f"churn within {d} days" for d in CHURN_DAYS},
          "latency_p50": "latency p50 (ms)", "latency_p90": "latency p90 (ms)", "latency_p99": "latency p99 (ms)",
          "latency_max": "latency max (ms)", "calls_per_s": "calls/s", "timeouts": "timeouts", "errors": "errors",
          "fallbacks": "fallbacks"}


def write_report(runs: dict[str, Run], out_dir: str | Path, values: dict[str, float], title: str, about: dict,
                 truth: dict[str, Run] | None = None, ope: dict | None = None) -> dict:
    """Measure every policy's run (``runs``: policy name -> its run, the first the reference), write report.json
    and report.html into ``out_dir`` and return the report. ``values``: the catalogue's value per purchase
    (every catalogue product); ``about``: what was compared (customers, days, start, environment,
    common_random_numbers, ...); ``truth``: the same policies in the reference world, if run; ``ope``: the
    off-policy estimates of the same policies (``ope.evaluate``), set against the truth and the twin (needs
    ``truth``)."""
    if not runs:
        raise ValueError("write_report needs at least one policy's run; give runs as {policy name: Run}")
    report = {"title": title, "about": dict(about), "catalogue": {str(k): float(v) for k, v in values.items()},
              **compare({name: measure_run(run, values) for name, run in runs.items()})}
    report["table"] = {name: scalars(m) for name, m in report["policies"].items()}
    report["truth"] = None
    if truth is not None:
        missing = [name for name in runs if name not in truth]
        if missing:
            raise ValueError(f"truth has no run of the policies {missing}; run the same policies in the reference "
                             f"world (truth holds {list(truth)})")
        report["truth"] = truth_against(report, compare({name: measure_run(truth[name], values) for name in runs}))
    report["ope"] = None
    if ope is not None:
        if truth is None:
            raise ValueError("the off-policy estimates are set against the truth: give truth too")
        report["ope"] = against_truth(ope, *({n: {m: side[n][m]["value"] for m in METRICS} for n in runs}
                                             for side in (report["truth"]["policies"], report["policies"])))
    report = jsonable(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    page = out_dir / "report.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(render_html(report), encoding="utf-8")
    tmp.replace(page)
    return report


def scalars(metrics: dict) -> dict[str, float | int | None]:
    """A policy's figures as one number each (:data:`LABELS`), for the side-by-side table and the truth errors."""
    out = {k: metrics[k] for k in ("customers", "decisions", "shows", "show_rate", "clicks", "purchases", "revenue")}
    out.update({name: metrics[name]["value"] for name in RATIOS})
    out["coverage_products"], out["coverage_customers"] = (metrics["coverage"][k] for k in ("products", "customers"))
    out.update(entropy=metrics["diversity"]["entropy"], gini=metrics["diversity"]["gini"],
               drift_tvd=metrics["drift"]["tvd_first_last"])
    s = metrics["service"]
    if s["remote"]:
        out.update({f"latency_{k}": v for k, v in (s["latency_ms"] or {}).items()}, calls_per_s=s["calls_per_s"])
    out.update(timeouts=s["timeouts"], errors=s["errors"], fallbacks=s["fallbacks"])
    return out


def truth_against(report: dict, truth: dict) -> dict:
    """Truth (the reference world's ``compare``) against the twin's: per policy and metric the truth, the twin,
    the relative error (twin / truth - 1) and, for the ratios, whether the truth lies in the twin's interval;
    Kendall's tau of the policies' rankings by :data:`RANKED`."""
    errors = {}
    for name, twin in report["policies"].items():
        real, rows = truth["policies"][name], {}
        for key, t in scalars(real).items():
            w = scalars(twin).get(key)
            row = {"truth": t, "twin": w, "relative_error": _clean(w / t - 1) if t and w is not None else None}
            if key in RATIOS:
                ci = twin[key]["ci"]
                row["covered"] = None if ci is None or t is None else bool(ci[0] <= t <= ci[1])
            rows[key] = row
        errors[name] = rows
    tau = {}
    for key in RANKED:
        pairs = [(truth["policies"][n][key]["value"], report["policies"][n][key]["value"]) for n in report["policies"]]
        pairs = [p for p in pairs if None not in p]
        if len(pairs) < 2:
            tau[key] = {"tau": None, "p_value": None, "policies": len(pairs)}
            continue
        result = stats.kendalltau(*zip(*pairs, strict=True))
        tau[key] = {"tau": _clean(result.statistic), "p_value": _clean(result.pvalue), "policies": len(pairs)}
    return {**truth, "errors": errors, "kendall_tau": tau}


def jsonable(x):
    """``x`` with numpy numbers as Python numbers and NaN / infinity as None, so it is valid JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _clean(x)
    return x


# --------------------------------------------------------------------------------------------- plots
def _colours(names) -> dict[str, str]:
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {n: matplotlib.colors.to_hex(cycle[i % len(cycle)]) for i, n in enumerate(names)}


def plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: rates with intervals (and truth), fatigue curves, weekly product mix, churn, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies, truth = report["policies"], report["truth"]
    names = list(policies)
    colour = _colours(names)
    out = {}

    def bars(ax, key: str) -> None:
        for i, n in enumerate(names):
            m = policies[n][key]
            value, ci = m["value"], m["ci"]
            err = None if ci is None or value is None else [[value - ci[0]], [ci[1] - value]]
            ax.bar(i, value or 0.0, 0.6, yerr=err, capsize=4, color=colour[n])
            if truth is not None and truth["policies"][n][key]["value"] is not None:
                ax.scatter(i, truth["policies"][n][key]["value"], marker="_", s=500, color="black",
                           label="reference world (truth)" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(LABELS[key], fontsize=9)
        if truth is not None:
            ax.legend(fontsize=7)

    rates = ("ctr", "purchases_per_show", "revenue_per_decision")
    fig, axes = plt.subplots(1, len(rates), figsize=(4 * len(rates), 2.8), squeeze=False)
    for ax, key in zip(axes[0], rates, strict=True):
        bars(ax, key)
    fig.tight_layout()
    out["rates"] = png(fig)

    churn = [f"churn_{d}" for d in CHURN_DAYS if any(policies[n][f"churn_{d}"]["value"] is not None for n in names)]
    if churn:
        fig, axes = plt.subplots(1, len(churn), figsize=(4 * len(churn), 2.8), squeeze=False)
        for ax, key in zip(axes[0], churn, strict=True):
            bars(ax, key)
        fig.tight_layout()
        out["churn"] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    for n in names:
        curve = policies[n]["fatigue"]
        ax.plot(range(1, len(curve) + 1), [np.nan if c["ctr"] is None else c["ctr"] for c in curve], marker="o",
                color=colour[n], label=n)
    ax.set_xticks(range(1, len(curve) + 1), [c["n"] for c in curve])
    ax.set_xlabel("n-th showing of the same product to the same customer")
    ax.set_ylabel("CTR")
    ax.legend(fontsize=8)
    out["fatigue"] = png(fig)

    products = list(policies[names[0]]["mix"])
    pcolour = _colours(products)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 2.8), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], names, strict=True):
        weeks = policies[n]["drift"]["weeks"]
        x = [w["week"] + 1 for w in weeks]
        shares = [[(w["share"].get(p) or 0.0) for w in weeks] for p in products]
        ax.stackplot(x, shares, labels=products, colors=[pcolour[p] for p in products])
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("week of the run", fontsize=8)
    axes[0][0].set_ylabel("share of shows")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    out["mix"] = png(fig)

    remote = [n for n in names if policies[n]["service"]["latency_ms"]]
    if remote:
        keys = ("p50", "p90", "p99", "max")
        fig, ax = plt.subplots(figsize=(6, 2.8))
        width = 0.8 / len(remote)
        for j, n in enumerate(remote):
            ax.bar([i + j * width for i in range(len(keys))], [policies[n]["service"]["latency_ms"][k] for k in keys],
                   width, color=colour[n], label=n)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys)
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=8)
        out["latency"] = png(fig)
    return out


# ---------------------------------------------------------------------------------------------- html
def _td(text: str, strong: bool = False) -> str:
    return f"<td class='num'>{'<b>' if strong else ''}{esc(text)}{'</b>' if strong else ''}</td>"


def _about(report: dict) -> str:
    about = dict(report["about"])
    known = {k: about.pop(k, None) for k in ("customers", "days", "start", "environment", "common_random_numbers")}
    crn = known["common_random_numbers"]
    crn_text = {True: "with common random numbers: every policy meets the same customers with the same random "
                      "numbers, so differences are paired by customer",
                False: "without common random numbers: the runs are independent",
                None: "(whether the runs share random numbers is not recorded)"}[crn if crn is None else bool(crn)]
    text = (f"{len(report['policies'])} policies ({esc(', '.join(report['policies']))}) were run on "
            f"{fmt(known['customers'])} customers over {fmt(known['days'])} days from {esc(known['start'] or 'n/a')}"
            f" in {esc(known['environment'] or 'n/a')}, {esc(crn_text)}. The reference policy is "
            f"<b>{esc(report['reference'])}</b>; the others are compared with it. Catalogue: "
            + esc(", ".join(f"{p} ({v:g} per purchase)" for p, v in report["catalogue"].items())) + ".")
    rest = "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt(v))}</td></tr>" for k, v in about.items())
    return f"<p>{text}</p>" + (f"<table>{rest}</table>" if rest else "")


def _headline(report: dict) -> str:
    head = "".join(f"<th>{esc(LABELS[k])}</th><th>95 % interval</th>" for k in HEADLINE)
    rows = []
    for n, m in report["policies"].items():
        cells = "".join(_td(fmt(m[k]["value"])) + _td(fmt(m[k]["ci"])) for k in HEADLINE)
        rows.append(f"<tr><td>{esc(n)}</td>{cells}</tr>")
    return f"<table><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>"


def _paired(report: dict) -> str:
    if not report["paired"]:
        return "<p>One policy only: nothing to compare it with.</p>"
    head = "".join(f"<th>{esc(LABELS[k])}: difference</th><th>95 % interval</th>" for k in HEADLINE)
    rows = []
    for n, p in report["paired"].items():
        cells = "".join(_td(fmt(p[k]["difference"]), p[k]["significant"]) + _td(fmt(p[k]["ci"])) for k in HEADLINE)
        rows.append(f"<tr><td>{esc(n)} ({p['customers']:,} customers)</td>{cells}</tr>")
    return (f"<p class='meaning'>Each policy minus the reference ({esc(report['reference'])}) over the customers both "
            "runs have, paired by customer. Bold: the interval excludes 0.</p>"
            f"<table><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>")


def _table(report: dict) -> str:
    names, truth = list(report["policies"]), report["truth"]
    keys = list(dict.fromkeys(k for n in names for k in report["table"][n]))
    if truth is None:
        head = "".join(f"<th>{esc(n)}</th>" for n in names)
        rows = "".join(f"<tr><td>{esc(LABELS[k])}</td>" + "".join(_td(fmt(report["table"][n].get(k))) for n in names)
                       + "</tr>" for k in keys)
        return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"
    head = "".join(f"<th>{esc(n)}: truth</th><th>twin</th><th>relative error</th>" for n in names)
    rows = []
    for k in keys:
        cells = []
        for n in names:
            e = truth["errors"][n].get(k, {})
            rel = e.get("relative_error")
            cells.append(_td(fmt(e.get("truth"))) + _td(fmt(e.get("twin")), e.get("covered") is False)
                         + _td("n/a" if rel is None else f"{rel:+.1%}"))
        rows.append(f"<tr><td>{esc(LABELS[k])}</td>{''.join(cells)}</tr>")
    tau = "; ".join(f"{LABELS[k]}: {fmt(t['tau'])} over {t['policies']} policies"
                    for k, t in truth["kendall_tau"].items())
    return (f"<p class='meaning'>Truth: the same policies run in the reference world. Bold twin figure: the truth "
            f"lies outside the twin's 95 % interval. Kendall's tau of the policies' rankings (1: the twin ranks them "
            f"as the truth does): {esc(tau)}.</p><table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>")


def _service(report: dict) -> str:
    remote = {n: m["service"] for n, m in report["policies"].items() if m["service"]["remote"]}
    if not remote:
        return "<p>No policy was called over the network: there are no latencies.</p>"
    rows = []
    for n, s in remote.items():
        lat = s["latency_ms"] or {}
        failures = ", ".join(f"{k}: {v:,}" for k, v in s["failures"].items()) or "none"
        cells = [fmt(s["calls"]), fmt(s["calls_per_s"]), *(fmt(lat.get(k)) for k in ("p50", "p90", "p99", "max")),
                 fmt(s["timeouts"]), fmt(s["errors"]), fmt(s["fallbacks"])]
        rows.append(f"<tr><td>{esc(n)}</td>{''.join(_td(c) for c in cells)}<td>{esc(failures)}</td></tr>")
    return ("<table><tr><th>policy</th><th>calls</th><th>calls/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
            "<th>max ms</th><th>timeouts</th><th>errors</th><th>fallbacks</th><th>failures by reason</th></tr>"
            f"{''.join(rows)}</table>")


def _segments(report: dict) -> str:
    names = list(report["policies"])
    segments = list(dict.fromkeys(s for n in names for s in report["policies"][n]["segments"]))
    if not segments:
        return "<p>The users table has no <code>segment</code> attribute.</p>"
    head = "".join(f"<th>{esc(n)}: CTR</th><th>95 % interval</th>" for n in names)
    rows = []
    for s in segments:
        cells = []
        for n in names:
            ctr = report["policies"][n]["segments"].get(s, {}).get("ctr", {"value": None, "ci": None})
            cells.append(_td(fmt(ctr["value"])) + _td(fmt(ctr["ci"])))
        rows.append(f"<tr><td>{esc(s)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>segment</th>{head}</tr>{''.join(rows)}</table>"


def _ope(report: dict) -> str:
    """The off-policy estimates against the truth and the twin (the ``ope`` section), or nothing."""
    ope = report.get("ope")
    if not ope:
        return ""
    head = "".join(f"<th>{esc(LABELS[m])}: truth</th>" + "".join(f"<th>{e.upper()}</th>" for e in ESTIMATORS)
                   + "<th>twin</th>" for m in METRICS)
    rows = []
    for name, row in ope["policies"].items():
        cells = []
        for m in METRICS:
            r = row[m]
            cells.append(_td(_rate(r["truth"])) + "".join(_td(_rate(r[e]["value"], r[e]["relative_error"]))
                                                          for e in ESTIMATORS)
                         + _td(_rate(r["twin"], r["twin_relative_error"])))
        rows.append(f"<tr><td>{esc(name)}</td>{''.join(cells)}</tr>")
    lines = []
    for m, s in ope["summary"].items():
        medians = ", ".join(f"{e.upper()} {_share(v)}" for e, v in s["median_abs_relative_error"].items())
        lines.append(f"{LABELS[m]}: median |relative error| {medians}; best {esc(str(s['best']).upper())}; twin "
                     f"{_share(s['twin_median'])}; target (twin at most half the best): {VERDICT[s['target_met']]}")
    about = ope["about"]
    return (f"<h2>Off-policy estimates from the logged data</h2><p class='meaning'>DM, IPW, SNIPW and DR of each "
            f"policy's value per show from the logging policy's {about['decisions']:,} logged decisions "
            f"({esc(about['start'][:10])} to {esc(about['end'][:10])}), against the truth; in brackets the relative "
            f"error. {'<br>'.join(esc(x) for x in lines)}.</p>"
            f"<table><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>")


def _rate(value, relative=None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" + ("" if relative is None else f" ({relative:+.0%})")


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render_html(report: dict) -> str:
    images = plots(report)
    body = f"""\
{_about(report)}
<h2>Headline</h2>
<p class="meaning">CTR: shows clicked within 24 hours (the first click of the product after the show, before it
is shown again) over shows; purchases likewise; revenue: the catalogue's value of each purchased show. Intervals
are 95 %, clustered by customer (delta method).</p>
{_headline(report)}
{img_tag(images, 'rates', 'CTR, purchases per show and revenue per decision by policy, with 95 % intervals')}
<h2>Against the reference policy</h2>
{_paired(report)}
<h2>Fatigue</h2>
<p class="meaning">CTR by the n-th time the same product is shown to the same customer in the run (10+ pooled).</p>
{img_tag(images, 'fatigue', 'CTR by n-th exposure of the same product')}
<h2>What was shown, week by week</h2>
{img_tag(images, 'mix', 'weekly share of each product among shows, per policy')}
<h2>Churn</h2>
<p class="meaning">The share of customers with an account at the start who close it within 30 / 90 days
(n/a where the run is shorter).</p>
{img_tag(images, 'churn', 'churn within 30 and 90 days by policy') or '<p>The run is shorter than 30 days.</p>'}
<h2>Service</h2>
{_service(report)}
{img_tag(images, 'latency', 'latency percentiles of remote policies')}
<h2>By segment</h2>
{_segments(report)}
<h2>Every metric</h2>
{_table(report)}
{_ope(report)}
"""
    return html_page(report["title"], body)
