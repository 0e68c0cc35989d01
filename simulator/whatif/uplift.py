"""The statistics of a what-if: paired uplift, the unpaired variance it is compared with, an A/B readout,
and Rubin's rules across models. Every estimator takes arrays with one row per customer and one column per
outcome (or per day), and returns one estimate per column: a dict of plain floats (None where undefined).

* **Paired uplift** (common random numbers): each customer is simulated twice, once per arm, so the
  per-customer difference d = s - b carries the effect and little noise. Uplift = mean(d), its variance
  var(d) / n, a normal 95 % interval. The unpaired variance var(b) / n + var(s) / n is what two independent
  runs of n customers each would give; variance_ratio = paired / unpaired is what pairing bought.
* **Relative uplift** mean(s) / mean(b) - 1, with a delta-method variance that keeps the covariance of
  the two means (Casella & Berger, *Statistical Inference*, 5.5.4).
* **A/B readout**: treatment vs control customers of one run, Welch's difference of means.
* **Rubin's rules** (Rubin 1987, *Multiple Imputation for Nonresponse in Surveys*, 3.1): M models give M
  estimates q_m with variances U_m; the pooled estimate is their mean, its variance T = W + (1 + 1/M) B with
  W the mean within-model variance and B the between-model variance, and the interval a t interval with
  (M - 1) (1 + W / ((1 + 1/M) B))^2 degrees of freedom. It includes model uncertainty.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def _clean(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _estimates(n: int, baseline: np.ndarray, scenario: np.ndarray, uplift: np.ndarray, variance: np.ndarray,
               relative: np.ndarray, relative_variance: np.ndarray, unpaired: np.ndarray | None) -> list[dict]:
    out = []
    for j in range(len(uplift)):
        e = {"n": n, "baseline": _clean(baseline[j]), "scenario": _clean(scenario[j]), "uplift": _clean(uplift[j]),
             "variance": _clean(variance[j]), "relative": _clean(relative[j]),
             "relative_variance": _clean(relative_variance[j])}
        if unpaired is not None:
            e["variance_unpaired"] = _clean(unpaired[j])
            e["variance_ratio"] = _clean(variance[j] / unpaired[j]) if unpaired[j] > 0 else None
        out.append(with_interval(e))
    return out


def with_interval(e: dict, quantile: float = Z95) -> dict:
    """``e`` with se, 95 % intervals (``ci``, ``relative_ci``) and whether the uplift's excludes 0."""
    for key, var, ci in (("uplift", "variance", "ci"), ("relative", "relative_variance", "relative_ci")):
        if e[key] is None or e[var] is None:
            e[ci] = None
            continue
        half = quantile * np.sqrt(max(e[var], 0.0))
        e[ci] = [e[key] - half, e[key] + half]
    e["se"] = None if e["variance"] is None else float(np.sqrt(max(e["variance"], 0.0)))
    e["significant"] = bool(e["ci"] is not None and (e["ci"][0] > 0 or e["ci"][1] < 0))
    return e


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    mean = x.mean(axis=0) if n else np.full(x.shape[1], np.nan)
    var = x.var(axis=0, ddof=1) if n > 1 else np.full(x.shape[1], np.nan)
    return mean, var


def paired(baseline: np.ndarray, scenario: np.ndarray) -> list[dict]:
    """Paired uplift per column of (customers x k) arrays whose rows are the same customers."""
    n = len(baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        mb, vb = _moments(baseline)
        ms, vs = _moments(scenario)
        md, vd = _moments(scenario - baseline)
        cov = (vb + vs - vd) / 2.0  # var(s - b) = var(s) + var(b) - 2 cov(s, b)
        relative = np.where(mb != 0, ms / mb - 1.0, np.nan)
        rel_var = (vs / mb**2 + ms**2 * vb / mb**4 - 2.0 * ms * cov / mb**3) / n
        return _estimates(n, mb, ms, md, vd / n, relative, np.maximum(rel_var, 0.0), (vb + vs) / n)


def two_sample(treatment: np.ndarray, control: np.ndarray) -> list[dict]:
    """Treatment minus control per column (independent groups: Welch), as an A/B test reads it;
    ``baseline`` is the control mean and ``scenario`` the treatment mean."""
    nt, nc = len(treatment), len(control)
    with np.errstate(divide="ignore", invalid="ignore"):
        mt, vt = _moments(treatment)
        mc, vc = _moments(control)
        relative = np.where(mc != 0, mt / mc - 1.0, np.nan)
        rel_var = vt / (nt * mc**2) + mt**2 * vc / (nc * mc**4)
        estimates = _estimates(nt + nc, mc, mt, mt - mc, vt / nt + vc / nc, relative, rel_var, None)
    for e in estimates:
        e["n_treatment"], e["n_control"] = nt, nc
    return estimates


def pooled(per_model: list[dict]) -> dict:
    """One estimate from the same estimate under M models, by Rubin's rules (M = 1: that estimate, as it is)."""
    if len(per_model) == 1:
        return {**per_model[0], "models": 1, "includes_model_uncertainty": False}
    m = len(per_model)
    out: dict = {"n": per_model[0]["n"], "models": m, "includes_model_uncertainty": True}
    for key in ("baseline", "scenario", "variance_unpaired"):
        values = [e.get(key) for e in per_model]
        if key in per_model[0]:
            out[key] = None if None in values else float(np.mean(values))
    df = {}
    for key, var in (("uplift", "variance"), ("relative", "relative_variance")):
        q = [e[key] for e in per_model]
        u = [e[var] for e in per_model]
        if None in q or None in u:
            out[key] = out[var] = None
            continue
        within, between = float(np.mean(u)), float(np.var(q, ddof=1))
        out[key], out[var] = float(np.mean(q)), within + (1.0 + 1.0 / m) * between
        if key == "uplift":
            out["within_variance"], out["between_variance"] = within, between
            out["per_model"] = [float(v) for v in q]
        b = (1.0 + 1.0 / m) * between
        df[key] = (m - 1) * (1.0 + within / b) ** 2 if b > 0 else float("inf")
    if "variance_unpaired" in out:
        within = out.get("within_variance")
        out["variance_ratio"] = (within / out["variance_unpaired"] if within is not None
                                 and out["variance_unpaired"] else None)
    out["df"] = _clean(df.get("uplift", float("inf")))
    with_interval(out, float(stats.t.ppf(0.975, df["uplift"])) if "uplift" in df else Z95)
    if out.get("relative") is not None and "relative" in df:  # the relative uplift's own degrees of freedom
        half = float(stats.t.ppf(0.975, df["relative"])) * np.sqrt(out["relative_variance"])
        out["relative_ci"] = [out["relative"] - half, out["relative"] + half]
    return out


def pooled_all(per_model: list[list[dict]]) -> list[dict]:
    """:func:`pooled` column by column: ``per_model[m][j]`` is model m's estimate of column j."""
    return [pooled([estimates[j] for estimates in per_model]) for j in range(len(per_model[0]))]
