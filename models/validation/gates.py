"""The gates: each figure judged against the holdout ceiling, with its threshold and one plain sentence.

Every threshold is "what real holdout users reach, give or take a stated margin", so that a real sample
of the same size passes and the margin is the only judgement call. docs/validation.md explains each one;
the constants below are the whole policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from twinsim.models.validation.fidelity import MIN_EVENTS_PER_TYPE, MIN_TAIL_USERS

# Fidelity margins below the holdout's accuracy (1 - TVD), chosen so that a real sample passes with room
# and a generator that breaks the structure (columns shuffled across users: bivariate 0.73, coherence 0.82
# against a ceiling of 0.99 at default scale) misses by far.
UNIVARIATE_MARGIN = 0.05
BIVARIATE_MARGIN = 0.08
COHERENCE_MARGIN = 0.06
INTER_EVENT_MARGIN = 0.08
CALENDAR_MARGIN = 0.10  # the reference-world law check allows a login hour-of-day TVD of 0.10 too
KS_MARGIN = 0.05  # seed 000: KS < 0.05, here beyond what chance gives at this sample size
KS_CRITICAL = 1.63  # Kolmogorov-Smirnov critical value at the 1 % level
CORRELATION_MARGIN = 0.10  # seed 000: correlation drift < 0.1, here beyond the holdout's own drift
RARE_BAND = (0.8, 1.2)  # seed 000: top-1 % coverage 80-120 %, widened by the range of same-size real samples
DISCRIMINATOR_MARGIN = 0.10
SURVIVAL_MARGIN = 0.05
UTILITY_MARGIN = 0.05  # AUC points the synthetic-trained model may lose against the real-trained one
IDENTICAL_MARGIN = 0.01
Z = 3.0  # standard errors allowed for chance wherever a standard error is known


@dataclass
class Check:
    """One gate: the synthetic figure, the holdout's (the ceiling), the threshold and the verdict."""

    id: str
    group: str
    title: str
    meaning: str
    rule: str
    synthetic: float | None
    holdout: float | None
    threshold: float | None
    passed: bool | None  # None: not applicable to this data
    higher_is_better: bool = True
    items: list[dict] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _judge(value: float, threshold: float, higher_is_better: bool) -> bool:
    return bool(value >= threshold) if higher_is_better else bool(value <= threshold)


def _accuracy(id_: str, group: str, title: str, meaning: str, fig: dict, margin: float,
              items: dict | None = None) -> Check:
    threshold = fig["holdout"] - margin
    return Check(id_, group, title, meaning, f">= holdout - {margin:g}", fig["synthetic"], fig["holdout"], threshold,
                 _judge(fig["synthetic"], threshold, True), items=_item_rows(items) if items else [])


def _per_type(id_: str, group: str, title: str, meaning: str, fig: dict, margin: float, items: dict,
              what: str) -> Check:
    """An accuracy averaged over the event types with enough ``what`` (``MIN_EVENTS_PER_TYPE``) in the training
    data and the sample. Not applicable where the holdout has no such type: a real sample this size says
    nothing (a log of one-time buyers has few gaps). Failed where only the synthetic sample has none."""
    check = _accuracy(id_, group, title, meaning, fig, margin, items)
    if finite(fig["holdout"]) is None:
        check.threshold, check.passed = None, None
        check.note = (f"not applicable: no event type has {MIN_EVENTS_PER_TYPE} {what} in the training data and in "
                      "the holdout customers compared; compare more customers")
    elif finite(fig["synthetic"]) is None:
        check.passed = False
        check.note = (f"no event type has {MIN_EVENTS_PER_TYPE} {what} in the synthetic customers compared, "
                      "though the holdout has")
    return check


def _item_rows(items: dict) -> list[dict]:
    """Per-item synthetic vs holdout values, worst first (items are accuracies: lower is worse)."""
    rows = [{"name": k, "synthetic": v, "holdout": items["holdout"].get(k)} for k, v in items["synthetic"].items()]
    return sorted(rows, key=lambda r: r["synthetic"] - (r["holdout"] if r["holdout"] is not None else 0))


def se_auc_null(n1: int, n2: int) -> float:
    """Standard error of an AUC under no difference (Mann-Whitney), for n1 and n2 cases."""
    return math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))


def fidelity_checks(f: dict) -> list[Check]:
    acc_items = f["accuracy_items"]
    checks = [
        _accuracy("univariate_accuracy", "fidelity", "Univariate accuracy",
                  "Each event column on its own (event type, each mark, amount, time since the previous event) is "
                  "distributed as in the real data.", f["accuracy_univariate"], UNIVARIATE_MARGIN,
                  {k: acc_items[k]["univariate"] for k in ("synthetic", "holdout")}),
        _accuracy("bivariate_accuracy", "fidelity", "Bivariate accuracy",
                  "Pairs of columns of the same event go together as in the real data, such as which merchant "
                  "categories carry which amounts.", f["accuracy_bivariate"], BIVARIATE_MARGIN,
                  {k: acc_items[k]["bivariate"] for k in ("synthetic", "holdout")}),
    ]
    checks.append(_ks_check(f["ks"]))
    drift = f["correlation_drift"]
    threshold = drift["holdout"]["max"] + CORRELATION_MARGIN
    checks.append(Check(
        "correlation_drift", "fidelity", "Correlation drift",
        "How customers' volumes and amounts move together (for example logins with card spending) is kept: the "
        "largest change in any rank correlation between per-customer totals.",
        f"<= holdout + {CORRELATION_MARGIN:g}", drift["synthetic"]["max"], drift["holdout"]["max"], threshold,
        _judge(drift["synthetic"]["max"], threshold, False), higher_is_better=False,
        note=f"largest change: {drift['synthetic']['pair']}"))
    checks.append(_rare_check(f["rare_coverage"]))
    auc = f["discriminator_auc"]
    threshold = max(auc["holdout"], 0.5) + DISCRIMINATOR_MARGIN
    checks.append(Check(
        "discriminator", "fidelity", "Discriminator AUC",
        "A classifier trying to tell synthetic customers from real ones on their whole-history profile does no "
        "better than chance (0.5 is perfect, 1.0 means every synthetic customer gives itself away).",
        f"<= max(holdout, 0.5) + {DISCRIMINATOR_MARGIN:g}", auc["synthetic"], auc["holdout"], threshold,
        _judge(auc["synthetic"], threshold, False), higher_is_better=False,
        note="most telling differences: " + ", ".join(f"{k} ({v:+.2f} sd)" for k, v in f["telling_features"].items())))
    return checks


def _ks_check(ks: dict) -> Check:
    items, passed = [], True
    for column, syn in ks["synthetic"].items():
        hold = ks["holdout"][column]
        chance = KS_CRITICAL * math.sqrt(1 / max(syn["n_eff"], 1) + 1 / max(ks["train_n_eff"][column], 1))
        threshold = max(hold["ks"], chance) + KS_MARGIN
        ok = _judge(syn["ks"], threshold, False)
        passed &= ok
        items.append({"name": column, "synthetic": syn["ks"], "holdout": hold["ks"], "threshold": threshold,
                      "passed": ok})
    worst = max(items, key=lambda r: r["synthetic"] - r["threshold"]) if items else None
    return Check(
        "ks", "fidelity", "Kolmogorov-Smirnov per numeric column",
        "Each numeric column (amount per event type, time between events) has the same distribution: the largest "
        "gap between the two cumulative distributions, per column.",
        f"each column <= max(holdout, chance at this size) + {KS_MARGIN:g}",
        worst["synthetic"] if worst else None, worst["holdout"] if worst else None,
        worst["threshold"] if worst else None, passed if items else None, higher_is_better=False, items=items,
        note=f"worst column: {worst['name']}" if worst else "no numeric columns")


def _rare_check(rare: dict) -> Check:
    items, passed = [], True
    lo_band, hi_band = RARE_BAND
    for name, syn in rare["synthetic"].items():
        item = {"name": name, "synthetic": syn, "holdout": rare["holdout"].get(name), "threshold": None,
                "passed": None, "customers in the tail": rare["tail_users"][name]}
        if rare["range"][name] is not None:
            lo, hi = rare["range"][name]
            item["threshold"] = [lo * lo_band, hi * hi_band]
            item["passed"] = bool(lo * lo_band <= syn <= hi * hi_band)
            passed &= item["passed"]
        items.append(item)
    judged = [i for i in items if i["passed"] is not None]
    worst = max(judged, key=lambda r: abs(math.log(max(r["synthetic"], 1e-6)))) if judged else None
    skipped = len(items) - len(judged)
    note = (f"furthest from 1: {worst['name']}" if worst else "") + (
        f"; {skipped} item(s) not judged: the rare events belong to fewer than {MIN_TAIL_USERS} customers of a "
        "sample this size" if skipped else "")
    return Check(
        "rare_coverage", "fidelity", "Rare-event coverage",
        "Rare behaviour survives: the share of values beyond the real top 1 % (large amounts, long gaps, heavy "
        "users) and of rare categories, relative to the real share (1.0 = as common as in reality).",
        f"each within {lo_band:g} x to {hi_band:g} x the range that 99.9 % of same-size real samples show",
        worst["synthetic"] if worst else None, worst["holdout"] if worst else None, None,
        passed if judged else None, items=items, note=note.strip("; "))


def sequence_checks(f: dict, n: int) -> list[Check]:
    acc_items = f["accuracy_items"]
    parts = ("transitions", "distinct_categories_per_user", "users_per_category")
    coherence = {k: {f"{part}: {item}": v for part in parts for item, v in acc_items[k][part].items()}
                 for k in ("synthetic", "holdout")}
    checks = [
        _accuracy("coherence_accuracy", "sequence", "Sequence coherence",
                  "Events hang together in each customer's sequence as in reality: what follows what, how many "
                  "different categories one customer uses, and how many customers use each category.",
                  f["accuracy_coherence"], COHERENCE_MARGIN, coherence),
        _per_type("inter_event_time", "sequence", "Time between events of a type",
                  "The rhythm of each event type is kept: the time from one event of a type to the customer's next "
                  "of the same type (salary to salary, login to login), every type weighted equally.",
                  f["inter_event_time"], INTER_EVENT_MARGIN, f["inter_event_time_items"],
                  "gaps between events of the type"),
    ]
    epu = f["events_per_user"]
    chance = KS_CRITICAL * math.sqrt(1 / epu["users"] + 1 / epu["train_users"])
    threshold = max(epu["holdout"], chance) + KS_MARGIN
    checks.append(Check(
        "events_per_user", "sequence", "Events per customer",
        "Customers are as active as real ones: the Kolmogorov-Smirnov distance between the numbers of events per "
        "customer.", f"<= max(holdout, chance at this size) + {KS_MARGIN:g}", epu["synthetic"], epu["holdout"],
        threshold, _judge(epu["synthetic"], threshold, False), higher_is_better=False))
    if "survival" in f:
        s = f["survival"]
        p = s["synthetic"]["reference_churned_share"]
        se = math.sqrt(p * (1 - p) * (1 / n + 1 / s["train_users"]))
        margin = max(SURVIVAL_MARGIN, Z * se)
        threshold = s["holdout"]["largest_gap"] + margin
        checks.append(Check(
            "churn_survival", "sequence", "Churn survival (Kaplan-Meier)",
            "Customers leave at the same pace: the largest vertical gap between the real and synthetic curves of "
            "the share of customers still with the bank after t days.",
            f"<= holdout + max({SURVIVAL_MARGIN:g}, {Z:g} standard errors) = holdout + {margin:.3f}",
            s["synthetic"]["largest_gap"], s["holdout"]["largest_gap"], threshold,
            _judge(s["synthetic"]["largest_gap"], threshold, False), higher_is_better=False,
            note=f"largest gap at day {s['synthetic']['at_day']}; churned: synthetic "
                 f"{s['synthetic']['churned_share']:.1%}, real {p:.1%}"))
    else:
        checks.append(Check("churn_survival", "sequence", "Churn survival (Kaplan-Meier)",
                            "Customers leave at the same pace.", "-", None, None, None, None,
                            note="not applicable: no terminal event type (no event type is always its user's last); "
                                 "name one with --terminal"))
    return checks


def calendar_checks(f: dict) -> list[Check]:
    words = {"hour": ("hour of day", "the daily rhythm (salaries at night, logins in the evening)"),
             "weekday": ("weekday", "the weekly rhythm (more spending on Fridays, fewer logins on Sundays)"),
             "day_of_month": ("day of month", "the monthly rhythm (paydays, fees at month end)")}
    checks = []
    for kind, (word, rhythm) in words.items():
        id_, title = f"calendar_{kind}", f"Calendar: {word}"
        meaning = f"Each event type keeps {rhythm}: its profile over the {word}, every type weighted equally."
        resolution = f.get("time_resolution", {})
        if kind == "hour" and resolution.get("unit") == "day":
            off = resolution["off_time_of_day_share"]["synthetic"]
            checks.append(Check(id_, "calendar", title, meaning, "-", None, None, None, None,
                                note=f"not applicable: the training data has dates only (every event at "
                                     f"{resolution['time_of_day']} UTC), so there is no hour of day to compare; "
                                     f"{off:.1%} of the synthetic events are at another time of day"))
            continue
        checks.append(_per_type(id_, "calendar", title, meaning, f[f"calendar_{kind}"], CALENDAR_MARGIN,
                                {k: f["calendar_items"][k][kind] for k in ("synthetic", "holdout")}, "events"))
    return checks


def utility_checks(u: dict) -> list[Check]:
    checks = []
    titles = {"churn": "Churn model trained on synthetic data", "response": "Response model trained on synthetic data"}
    for task, title in titles.items():
        r = u[task]
        meaning = ("A model trained on synthetic customers predicts real holdout customers almost as well as the same "
                   "model trained on real customers (AUC).")
        if not r["applicable"]:
            checks.append(Check(f"{task}_utility", "utility", title, meaning, "-", None, None, None, None,
                                note=r["reason"]))
            continue
        margin = max(UTILITY_MARGIN, Z * r["auc_difference_se"])
        threshold = r["real"]["auc"] - margin
        checks.append(Check(
            f"{task}_utility", "utility", title, meaning,
            f">= real-trained AUC - max({UTILITY_MARGIN:g}, {Z:g} standard errors) = real - {margin:.3f}",
            r["synthetic"]["auc"], r["real"]["auc"], threshold, _judge(r["synthetic"]["auc"], threshold, True),
            items=[{"name": k, "trained on synthetic": r["synthetic"][k], "trained on real": r["real"][k],
                    "synthetic / real": r["ratio"][k]} for k in ("auc", "precision", "recall", "f1")],
            note=r["task"] + f"; synthetic/real AUC ratio {r['ratio']['auc']:.2f}" + (
                f"; chance alone moves this comparison by up to {margin:.2f} AUC at this sample size, so it can "
                "only catch large losses" if margin > 2 * UTILITY_MARGIN else "")))
    return checks


def privacy_checks(p: dict, n: int) -> list[Check]:
    ims = p["identical_match_share"]
    margin = max(IDENTICAL_MARGIN, Z * math.sqrt(2 * ims["holdout"] * (1 - ims["holdout"]) / n))
    close_limit = 0.05 + Z * math.sqrt(2 * 0.05 * 0.95 / n) + 1 / n  # + one customer: shares are whole customers
    share_threshold = max(0.5, p["dcr_share"]["holdout"]) + Z * math.sqrt(0.25 / n)
    mia_threshold = 0.5 + Z * se_auc_null(n, n)
    spec = [
        ("identical_matches", "Identical match share",
         "Share of synthetic customers whose whole-history profile equals a real training customer's exactly. "
         "They are reported, never removed: removing them would itself reveal who was in the training data.",
         f"<= holdout + max({IDENTICAL_MARGIN:g}, {Z:g} standard errors)", ims, ims["holdout"] + margin),
        ("dcr_close", "Too close to a training customer (DCR)",
         "Share of synthetic customers closer to a real training customer than the closest 5 % of real holdout "
         "customers are; about 5 % is what an unseen real customer shows.",
         f"<= 5 % + {Z:g} standard errors + 1 customer", p["dcr_close_share"], close_limit),
        ("nndr_close", "Too close relative to the neighbourhood (NNDR)",
         "As above, with each distance divided by the distance to the second-closest training customer, which "
         "protects outliers whose every neighbour is far away.",
         f"<= 5 % + {Z:g} standard errors + 1 customer", p["nndr_close_share"], close_limit),
        ("dcr_share", "Closer to training than to holdout (DCR share)",
         "Share of synthetic customers whose closest real customer is a training customer rather than a holdout "
         "one, with both sets the same size; about 50 % is ideal, more means training customers leak through.",
         f"<= max(50 %, holdout) + {Z:g} standard errors", p["dcr_share"], share_threshold),
        ("membership_inference", "Membership inference AUC",
         "How well an attacker holding the synthetic data can tell which real customers were in the training set "
         "by their distance to the closest synthetic customer (0.5 = no better than a coin).",
         f"<= 0.5 + {Z:g} standard errors", {"synthetic": p["membership_auc"]["synthetic"], "holdout": 0.5},
         mia_threshold),
    ]
    return [Check(id_, "privacy", title, meaning, rule, fig["synthetic"], fig["holdout"], threshold,
                  _judge(fig["synthetic"], threshold, False), higher_is_better=False)
            for id_, title, meaning, rule, fig, threshold in spec]


def all_checks(figures: dict, n: int) -> list[Check]:
    return [*fidelity_checks(figures), *sequence_checks(figures, n), *calendar_checks(figures),
            *utility_checks(figures["utility"]), *privacy_checks(figures["privacy"], n)]


def group_verdicts(checks: list[Check]) -> dict[str, bool]:
    """A group passes when none of its applicable checks fails."""
    groups: dict[str, bool] = {}
    for c in checks:
        groups[c.group] = groups.get(c.group, True) and c.passed is not False
    return groups


def finite(x: float | None) -> float | None:
    """JSON has no NaN: undefined figures become null."""
    return None if x is None or not np.isfinite(x) else float(x)
