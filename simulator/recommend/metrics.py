"""What a recommender policy's run comes to: offers matched with their outcomes, and every figure of the report.

Every rate is a ratio of per-customer sums (CTR = clicks / shows, purchases per show, revenue per decision,
churn = churned / alive customers), so each gets a 95 % interval clustered by customer from the delta method:
R = sum(y) / sum(x) has the linearised values z_i = (y_i - R x_i) / mean(x) and variance var(z) / n over the n
customers. Policies run on the same customers (common random numbers), so a policy against the reference pairs
by customer: the difference of the two ratios over the customers both runs have, with z_B - z_A per customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twinsim.scenarios.policy import FEEDBACK_HOURS, Catalogue
from twinsim.simulator.whatif.runs import WORLD_TERMINAL, Run, _utc
from twinsim.simulator.whatif.uplift import Z95, _clean, with_interval

FATIGUE_MAX = 10  # the fatigue curve's exposures 1..9 and, pooled, 10 and later
CHURN_DAYS = (30, 90)
WEEK = pd.Timedelta(days=7)
PERCENTILES = (50, 90, 99)
SUMS = ("decisions", "shows", "clicks", "purchases", "revenue", "alive", *(f"churned_{d}" for d in CHURN_DAYS))
RATIOS = {"ctr": ("clicks", "shows"), "purchases_per_show": ("purchases", "shows"),
          "revenue_per_decision": ("revenue", "decisions"),
          **{f"churn_{d}": (f"churned_{d}", "alive") for d in CHURN_DAYS}}


@dataclass
class Measured:
    """One policy's run measured: ``metrics`` (the report's figures, JSON-ready) and ``sums`` (per customer,
    indexed by user_id as text: the :data:`SUMS` that the intervals and the pairing with other policies use)."""

    metrics: dict
    sums: pd.DataFrame


def outcomes(decisions: pd.DataFrame, events: pd.DataFrame, hours: float = FEEDBACK_HOURS) -> pd.DataFrame:
    """One row per shown offer (a decision with a product), in the decisions' order: request_id, user_id,
    product, timestamp, clicked, purchased. A show is clicked when the customer has an ``offer_click`` of the
    same product at or after the show, within ``hours`` and before the next show of that product to them; each
    click belongs to the latest show before it, so it counts once. Purchases likewise (``offer_purchase``)."""
    _require(decisions, ("user_id", "request_id", "timestamp", "product"), "decisions")
    _require(events, ("user_id", "timestamp", "event_type"), "events")
    shows = decisions.loc[decisions["product"].notna(), ["request_id", "user_id", "product", "timestamp"]]
    shows = shows.reset_index(drop=True).astype({"request_id": str, "user_id": str, "product": str})
    shows["timestamp"] = _utc_ns(shows["timestamp"])
    for column, kind in (("clicked", "offer_click"), ("purchased", "offer_purchase")):
        shows[column] = _matched(shows, events, kind, pd.Timedelta(hours=hours))
    return shows


def _require(frame: pd.DataFrame, columns, name: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"the {name} table has no column(s) {missing}; it needs {list(columns)} "
                         "(see simulator/whatif/runs.py DECISION_COLUMNS and docs/data-contract.md)")


def _utc_ns(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[ns, UTC]")


def _matched(shows: pd.DataFrame, events: pd.DataFrame, kind: str, window: pd.Timedelta) -> np.ndarray:
    hit = np.zeros(len(shows), dtype=bool)
    if "product" not in events or not len(shows):
        return hit
    resp = events.loc[(events["event_type"].astype(str) == kind) & events["product"].notna(),
                      ["user_id", "product", "timestamp"]]
    if not len(resp):
        return hit
    resp = resp.astype({"user_id": str, "product": str}).assign(timestamp=lambda f: _utc_ns(f["timestamp"]))
    right = shows[["user_id", "product", "timestamp"]].assign(show=np.arange(len(shows)))
    m = pd.merge_asof(resp.sort_values("timestamp", kind="stable"),
                      right.rename(columns={"timestamp": "shown"}).sort_values("shown", kind="stable"),
                      left_on="timestamp", right_on="shown", by=["user_id", "product"], direction="backward")
    ok = m["show"].notna() & (m["timestamp"] - m["shown"] <= window)
    hit[m.loc[ok, "show"].to_numpy(dtype=np.int64)] = True
    return hit


# ------------------------------------------------------------------------------------------ one policy
def measure(decisions: pd.DataFrame, events: pd.DataFrame, users: pd.DataFrame, values: dict[str, float],
            start, end, stats: dict | None = None, terminal_types=WORLD_TERMINAL,
            hours: float = FEEDBACK_HOURS) -> Measured:
    """Every figure of one policy's run over [start, end): ``values`` is the catalogue's value per purchase
    (its products are the catalogue; a shown product it lacks is worth 1, as :meth:`Catalogue.value` says);
    ``stats`` the manifest's policy stats (an HTTP policy's calls, calls_per_s, ...), if any."""
    start, end = _utc(start), _utc(end)
    shows = outcomes(decisions, events, hours)
    catalogue = Catalogue(products=_products(values, shows), values=dict(values))
    shows["value"] = np.where(shows["purchased"], shows["product"].map(catalogue.value), 0.0).astype(float)
    sums = _sums(decisions, events, users, shows, start, end, terminal_types)
    metrics = {"customers": len(sums), "decisions": int(sums["decisions"].sum()), "shows": len(shows),
               "clicks": int(shows["clicked"].sum()), "purchases": int(shows["purchased"].sum()),
               "revenue": float(shows["value"].sum())}
    metrics["show_rate"] = _clean(metrics["shows"] / metrics["decisions"]) if metrics["decisions"] else None
    for name in RATIOS:
        metrics[name] = ratio(sums, name)
    metrics["churn_customers"] = int(sums["alive"].sum())
    shown = shows["product"].value_counts().reindex(catalogue.products, fill_value=0)
    metrics["coverage"] = {"products": _clean((shown > 0).mean()) if len(shown) else None,
                           "customers": _clean((sums["shows"] > 0).mean()) if len(sums) else None,
                           "products_shown": [p for p in catalogue.products if shown[p] > 0]}
    metrics["mix"] = {p: int(n) for p, n in shown.items()}
    metrics["diversity"] = {"entropy": entropy(shown.to_numpy(float)), "gini": gini(shown.to_numpy(float))}
    metrics["fatigue"] = fatigue(shows)
    metrics["drift"] = drift(shows, catalogue.products, start, end)
    metrics["segments"] = _segments(sums, users)
    metrics["service"] = service(decisions, stats)
    return Measured(metrics, sums)


def measure_run(run: Run, values: dict[str, float], hours: float = FEEDBACK_HOURS) -> Measured:
    """:func:`measure` of a run directory read by :func:`~twinsim.simulator.whatif.runs.read_run`."""
    if run.decisions is None:
        raise ValueError(f"{run.path}: the run has no decisions table (twin: decisions/, world: decisions.parquet); "
                         "it was not made with a policy; run it with `twinsim recommend MODEL --policy ...`")
    stats = (run.policy or {}).get("stats")
    terminal = run.terminal_types or list(WORLD_TERMINAL)  # a twin too short to detect it: churn is account_closed
    return measure(run.decisions, run.events, run.users, values, run.start, run.end, stats, terminal, hours)


def _products(values: dict[str, float], shows: pd.DataFrame) -> list[str]:
    extra = sorted(set(shows["product"]) - set(values))
    return [str(p) for p in values] + extra


def _sums(decisions, events, users, shows, start, end, terminal_types) -> pd.DataFrame:
    """Per customer (the users table's, then any other customer of the decisions): the :data:`SUMS`."""
    ids = pd.Index(list(dict.fromkeys([*users["user_id"].astype(str), *decisions["user_id"].astype(str)])),
                   name="user_id")
    sums = pd.DataFrame(0.0, index=ids, columns=list(SUMS))
    sums["decisions"] = decisions["user_id"].astype(str).value_counts().reindex(ids, fill_value=0).astype(float)
    by = shows.groupby("user_id")
    sums["shows"] = by.size().reindex(ids, fill_value=0).astype(float)
    for column, source in (("clicks", "clicked"), ("purchases", "purchased"), ("revenue", "value")):
        sums[column] = by[source].sum().reindex(ids, fill_value=0).astype(float)
    ends = events.loc[events["event_type"].astype(str).isin(list(terminal_types)), ["user_id", "timestamp"]]
    ended = pd.to_datetime(ends["timestamp"], utc=True).groupby(ends["user_id"].astype(str)).min().reindex(ids)
    alive = ~(ended < start).to_numpy()
    sums["alive"] = alive.astype(float)
    for days in CHURN_DAYS:
        if end - start < pd.Timedelta(days=days):
            sums[f"churned_{days}"] = np.nan
            continue
        within = (ended >= start) & (ended < start + pd.Timedelta(days=days))
        sums[f"churned_{days}"] = (alive & within.to_numpy()).astype(float)
    return sums


def ratio(sums: pd.DataFrame, name: str) -> dict:
    """The ratio :data:`RATIOS`[name] over ``sums``'s customers: value, se and a 95 % interval (delta method,
    clustered by customer; cut to [0, 1] for shares, at 0 for revenue); null where it is undefined (no
    denominator, or the run is too short)."""
    num, den = (sums[c].to_numpy(float) for c in RATIOS[name])
    value, z = _linearised(num, den)
    out = {"value": value, "se": None, "ci": None, "n": int(len(num))}
    if value is not None and len(z) > 1:
        se = float(np.sqrt(z.var(ddof=1) / len(z)))
        high = value + Z95 * se if name == "revenue_per_decision" else min(value + Z95 * se, 1.0)  # shares: <= 1
        out.update(se=se, ci=[max(value - Z95 * se, 0.0), high])
    return out


def _linearised(num: np.ndarray, den: np.ndarray) -> tuple[float | None, np.ndarray]:
    """R = sum(num) / sum(den) and its per-customer linearised values (NaN figures: undefined)."""
    if not len(num) or np.isnan(num).any() or den.sum() <= 0:
        return None, np.zeros(0)
    r = float(num.sum() / den.sum())
    return r, (num - r * den) / den.mean()


def entropy(counts: np.ndarray) -> float | None:
    """The normalised entropy of a mix: 0 when all of it is one product, 1 when it is even over all products."""
    total = counts.sum()
    if len(counts) < 2 or total <= 0:
        return None
    p = counts[counts > 0] / total
    return _clean(-(p * np.log(p)).sum() / np.log(len(counts)))


def gini(counts: np.ndarray) -> float | None:
    """The Gini coefficient of a mix over the products: 0 when even, (k - 1) / k when all is one of k."""
    total = counts.sum()
    if not len(counts) or total <= 0:
        return None
    return _clean(np.abs(counts[:, None] - counts[None, :]).sum() / (2 * len(counts) * total))


def fatigue(shows: pd.DataFrame) -> list[dict]:
    """CTR by the n-th showing of the same product to the same customer in the run (n = 1..9, then 10+)."""
    ordered = shows.sort_values("timestamp", kind="stable")
    n = ordered.groupby(["user_id", "product"]).cumcount().to_numpy() + 1
    bucket = np.minimum(n, FATIGUE_MAX)
    out = []
    for k in range(1, FATIGUE_MAX + 1):
        clicked = ordered["clicked"].to_numpy()[bucket == k]
        out.append({"n": f"{k}+" if k == FATIGUE_MAX else str(k), "shows": int(len(clicked)),
                    "clicks": int(clicked.sum()), "ctr": _clean(clicked.mean()) if len(clicked) else None})
    return out


def drift(shows: pd.DataFrame, products: list[str], start: pd.Timestamp, end: pd.Timestamp) -> dict:
    """The share of each product among the shows of each week of the run (week 0 starts at ``start``), and the
    total variation distance between the mixes of the first and the last week that have shows (null if one)."""
    weeks = int(np.ceil((end - start) / WEEK))
    week = ((shows["timestamp"] - start) // WEEK).to_numpy(dtype=np.int64) if len(shows) else np.zeros(0, int)
    table = pd.crosstab(week, shows["product"].to_numpy()).reindex(index=range(weeks), columns=products,
                                                                   fill_value=0)
    rows = []
    for k, counts in table.iterrows():
        total = int(counts.sum())
        rows.append({"week": int(k), "start": (start + k * WEEK).isoformat(), "shows": total,
                     "share": {p: (_clean(counts[p] / total) if total else None) for p in products}})
    filled = [r for r in rows if r["shows"]]
    tvd = None
    if len(filled) >= 2:
        first, last = (np.array([r["share"][p] for p in products]) for r in (filled[0], filled[-1]))
        tvd = _clean(0.5 * np.abs(first - last).sum())
    return {"weeks": rows, "tvd_first_last": tvd}


def _segments(sums: pd.DataFrame, users: pd.DataFrame) -> dict:
    """CTR by the users' ``segment`` attribute (empty when there is none)."""
    if "segment" not in users:
        return {}
    segment = users.assign(user_id=users["user_id"].astype(str)).set_index("user_id")["segment"]
    segment = segment[~segment.index.duplicated()].reindex(sums.index).astype(object).fillna("(none)").astype(str)
    return {str(s): {"customers": int(len(part)), "shows": int(part["shows"].sum()), "ctr": ratio(part, "ctr")}
            for s, part in sums.groupby(segment.to_numpy(), sort=True)}


def service(decisions: pd.DataFrame, stats: dict | None = None) -> dict:
    """A remote policy's service figures: latency percentiles over the calls (decisions with a latency), calls/s
    from the manifest's ``stats``, failures by reason, fallbacks (decisions where the policy did not answer)."""
    latency = (pd.to_numeric(decisions["latency_ms"], errors="coerce").dropna().to_numpy(float)
               if "latency_ms" in decisions else np.zeros(0))
    failure = decisions["failure"].dropna().astype(str) if "failure" in decisions else pd.Series([], dtype=str)
    failures = {str(k): int(v) for k, v in failure.value_counts().sort_index().items()}
    stats = dict(stats or {})
    percentiles = None
    if len(latency):
        percentiles = {f"p{q}": float(np.percentile(latency, q)) for q in PERCENTILES}
        percentiles["max"] = float(latency.max())
    return {"remote": bool(len(latency) or stats), "calls": int(stats.get("calls", len(latency))),
            "calls_per_s": _clean(stats["calls_per_s"]) if stats.get("calls_per_s") is not None else None,
            "latency_ms": percentiles, "failures": failures, "fallbacks": int(len(failure)),
            "timeouts": failures.get("timeout", 0), "errors": int(len(failure)) - failures.get("timeout", 0),
            "stats": stats}


# -------------------------------------------------------------------------------- against the reference
def paired(reference: Measured, other: Measured) -> dict:
    """Each ratio of ``other`` minus the reference's over the customers both runs have (paired by user_id):
    reference, policy, difference with its 95 % interval, relative difference with its interval, significant."""
    common = reference.sums.index.intersection(other.sums.index, sort=False)
    a, b = reference.sums.loc[common], other.sums.loc[common]
    out = {"customers": int(len(common))}
    for name, (num, den) in RATIOS.items():
        ra, za = _linearised(a[num].to_numpy(float), a[den].to_numpy(float))
        rb, zb = _linearised(b[num].to_numpy(float), b[den].to_numpy(float))
        if ra is None or rb is None:
            out[name] = {"reference": ra, "policy": rb, "difference": None, "ci": None, "relative": None,
                         "relative_ci": None, "se": None, "significant": False}
            continue
        n = len(common)
        d, rel = zb - za, (zb - rb / ra * za) / ra if ra else np.full(n, np.nan)
        e = with_interval({"uplift": rb - ra, "variance": _clean(d.var(ddof=1) / n) if n > 1 else None,
                           "relative": _clean(rb / ra - 1) if ra else None,
                           "relative_variance": _clean(rel.var(ddof=1) / n) if n > 1 and ra else None})
        out[name] = {"reference": ra, "policy": rb, "difference": e["uplift"], "ci": e["ci"],
                     "relative": e["relative"], "relative_ci": e["relative_ci"], "se": e["se"],
                     "significant": e["significant"]}
    return out


def compare(measured: dict[str, Measured]) -> dict:
    """Every policy's figures and, for each policy after the first (the reference), :func:`paired` against it."""
    names = list(measured)
    reference = measured[names[0]]
    return {"reference": names[0], "policies": {n: m.metrics for n, m in measured.items()},
            "paired": {n: paired(reference, measured[n]) for n in names[1:]}}
