"""A summary of an event log: what ``twinsim inspect`` prints (as text or JSON)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from twinsim.models.event_log import AMOUNT, EventLog

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
AMOUNT_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99, 1.0)


def _q(p: float) -> str:
    return {0.0: "min", 1.0: "max"}.get(p, f"p{round(p * 100):02d}")


def summarize(log: EventLog) -> dict[str, Any]:
    """Plain-data summary: counts, date range, per-type counts, per-user and amount quantiles."""
    ev = log.events
    per_user = ev.groupby("user_id", sort=False).size()
    by_type = ev.groupby("event_type", observed=True)
    first, last = ev["timestamp"].min(), ev["timestamp"].max()
    summary: dict[str, Any] = {
        "files": {"events": [str(p) for p in log.event_files], "users": [str(p) for p in log.user_files]},
        "users": int(per_user.size),
        "users_in_table": None if log.users is None else len(log.users),
        "events": len(ev),
        "date_range": {"first": first.isoformat(), "last": last.isoformat(),
                       "days": round((last - first) / pd.Timedelta(days=1), 2)},
        "time_resolution": log.resolution.to_json(),
        "event_types": {
            str(t): {"events": int(len(g)), "share": round(len(g) / len(ev), 4), "users": int(g["user_id"].nunique())}
            for t, g in sorted(by_type, key=lambda kv: -len(kv[1]))
        },
        "events_per_user": {_q(p): float(v) for p, v in zip(QUANTILES, per_user.quantile(QUANTILES), strict=True)},
        "amounts": {},
        "marks": {m: _top(ev[m]) for m in log.marks},
        "attributes": {} if log.users is None else {a: _describe(log.users[a]) for a in log.attributes},
        "notes": list(log.notes),
    }
    if AMOUNT in ev:
        for t in log.amount_types:
            amounts = ev.loc[ev["event_type"] == t, AMOUNT]
            summary["amounts"][t] = {"count": int(amounts.size), "mean": round(float(amounts.mean()), 2),
                                     **{_q(p): round(float(v), 2) for p, v in
                                        zip(AMOUNT_QUANTILES, amounts.quantile(AMOUNT_QUANTILES), strict=True)}}
    return summary


def _top(values: pd.Series, k: int = 5) -> dict[str, Any]:
    counts = values.value_counts(dropna=True)
    return {"categories": int((counts > 0).sum()), "missing_share": round(float(values.isna().mean()), 4),
            "top": {str(c): int(n) for c, n in counts.head(k).items() if n > 0}}


def _describe(values: pd.Series) -> dict[str, Any]:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return {"kind": "numeric", **{_q(p): float(v) for p, v in
                                      zip(QUANTILES, values.quantile(QUANTILES), strict=True)}}
    return {"kind": "categorical", **_top(values)}


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`'s output."""
    lines = [
        f"events file(s): {', '.join(s['files']['events'])}",
        f"users file(s):  {', '.join(s['files']['users']) or '(none)'}",
        f"users:  {s['users']:,}" + ("" if s["users_in_table"] is None else f" with events, {s['users_in_table']:,} in "
                                     "the users table"),
        f"events: {s['events']:,}",
        f"dates:  {s['date_range']['first']} .. {s['date_range']['last']} ({s['date_range']['days']:g} days)",
        f"time resolution: {s['time_resolution']['text']}",
        "",
        f"{'event type':<18}{'events':>12}{'share':>8}{'users':>10}",
    ]
    for t, row in s["event_types"].items():
        lines.append(f"{t:<18}{row['events']:>12,}{row['share']:>8.1%}{row['users']:>10,}")
    lines += ["", "events per user: " + "  ".join(f"{k} {v:g}" for k, v in s["events_per_user"].items())]
    if s["amounts"]:
        keys = [k for k in next(iter(s["amounts"].values())) if k != "count"]
        lines += ["", f"{'amount by type':<18}{'count':>10}" + "".join(f"{k:>11}" for k in keys)]
        for t, row in s["amounts"].items():
            lines.append(f"{t:<18}{row['count']:>10,}" + "".join(f"{row[k]:>11,.2f}" for k in keys))
    if s["marks"]:
        lines += ["", "marks:"]
        for m, row in s["marks"].items():
            top = ", ".join(f"{c} {n:,}" for c, n in row["top"].items())
            lines.append(f"  {m}: {row['categories']} categories, {row['missing_share']:.0%} empty; top: {top}")
    if s["attributes"]:
        lines += ["", "user attributes:"]
        for a, row in s["attributes"].items():
            if row["kind"] == "numeric":
                detail = "  ".join(f"{k} {row[k]:g}" for k in ("min", "p50", "max"))
            else:
                top = ", ".join(f"{c} {n:,}" for c, n in row["top"].items())
                detail = f"{row['categories']} categories; top: {top}"
            lines.append(f"  {a}: {detail}")
    return "\n".join(lines)
