"""run_validation: measure a synthetic event log against training and holdout users, and judge it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import EventLog
from twinsim.models.validation import fidelity, gates, privacy, survival, utility
from twinsim.models.validation.accuracy import BinnedSample, Binning, accuracies
from twinsim.models.validation.discriminator import discriminator_auc
from twinsim.models.validation.features import standardise, user_features
from twinsim.models.validation.samples import Sample, Vocabulary, check_inputs, load_input, split_by_model

Progress = Callable[[str], None]
FORMAT, FORMAT_VERSION = "twinsim-validation", 1
TELLING_FEATURES = 5


@dataclass(frozen=True)
class ValidationConfig:
    """Options of a report. The same inputs, options and seed give the same report.json."""

    seed: int = 0
    terminal: tuple[str, ...] | None = None  # terminal event types; default: detected in the training data
    response: tuple[str, str] | None = None  # (trigger, response) event types; default offer_shown:offer_click
    response_hours: float = 24.0  # a response counts if it follows its trigger within this many hours
    churn_days: int = 30  # churn task: churn within this many days after a cut-off
    rare_quantile: float = 0.99  # rare events: beyond this training quantile

    def validate(self) -> None:
        if not 0.5 <= self.rare_quantile < 1:
            raise TwinsimError(f"--rare-quantile must be in [0.5, 1) (got {self.rare_quantile}); e.g. 0.99 for the "
                               "top 1 %")
        if self.response_hours <= 0:
            raise TwinsimError(f"--response-hours must be positive (got {self.response_hours}); e.g. 24")
        if self.churn_days < 1:
            raise TwinsimError(f"--churn-days must be at least 1 (got {self.churn_days}); e.g. 30")
        if self.seed < 0:
            raise TwinsimError(f"--seed must be a non-negative integer (got {self.seed})")


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose,)))


def measure(train: Sample, holdout: Sample, synthetic: Sample, synthetic_all: Sample, vocab: Vocabulary,
            config: ValidationConfig, progress: Progress = lambda _stage: None) -> dict:
    """Every figure of the report, for the synthetic sample and for the holdout (the ceiling).

    ``holdout`` and ``synthetic`` have the same number of users; ``synthetic_all`` holds every synthetic
    user (the utility models train on it, and the membership attacker sees all of it).
    """
    f: dict = {}
    pair = {"synthetic": synthetic, "holdout": holdout}
    progress("fidelity: binned accuracy (univariate, bivariate, sequence coherence)")
    binning = Binning.fit(train, vocab)
    ref = BinnedSample.of(train, binning)
    acc = {k: accuracies(ref, BinnedSample.of(s, binning), binning) for k, s in pair.items()}
    for kind in ("univariate", "bivariate", "coherence"):
        f[f"accuracy_{kind}"] = {k: acc[k][kind] for k in pair}
    f["accuracy_items"] = {k: acc[k]["items"] for k in pair}

    progress("fidelity: distributions, rare events, rhythm, calendar, survival")
    numeric = {k: fidelity.numeric_columns(s, vocab) for k, s in {"train": train, **pair}.items()}
    epu = {k: numeric[k].pop(fidelity.EVENTS_PER_USER) for k in numeric}
    f["events_per_user"] = {**{k: fidelity.ks_statistic(epu["train"][0], epu[k][0]) for k in pair},
                            "users": synthetic.n_users, "train_users": train.n_users}
    f["ks"] = {**{k: fidelity.ks_per_column(numeric["train"], numeric[k]) for k in pair},
               "train_n_eff": fidelity.effective_sizes(numeric["train"])}
    for k in numeric:
        numeric[k][fidelity.EVENTS_PER_USER] = epu[k]
    rare = {k: fidelity.rare_coverage(train, s, vocab, config.rare_quantile, numeric["train"], numeric[k],
                                      _rng(config.seed, 6)) for k, s in pair.items()}
    f["rare_coverage"] = {"synthetic": rare["synthetic"]["coverage"], "holdout": rare["holdout"]["coverage"],
                          "range": rare["synthetic"]["range"], "tail_users": rare["synthetic"]["tail_users"]}
    gaps = {k: fidelity.inter_event_time(train, s, vocab) for k, s in pair.items()}
    f["inter_event_time"] = {k: fidelity.mean_over_types(gaps[k]) for k in pair}
    f["inter_event_time_items"] = gaps
    calendar = {k: fidelity.calendar_profiles(train, s, vocab) for k, s in pair.items()}
    for kind in fidelity.CALENDAR_BINS:
        f[f"calendar_{kind}"] = {k: fidelity.mean_over_types(calendar[k][kind]) for k in pair}
    f["calendar_items"] = calendar
    f["calendar_histograms"] = {k: fidelity.calendar_histograms(s) for k, s in {"train": train, **pair}.items()}
    f["time_resolution"] = {**vocab.resolution.to_json(),
                            "off_time_of_day_share": {k: fidelity.off_time_of_day_share(s, vocab.resolution)
                                                      for k, s in pair.items()}}
    if vocab.terminal_types:
        f["survival"] = {**{k: survival.survival_curves(train, s, vocab) for k, s in pair.items()},
                         "train_users": train.n_users}

    progress("per-customer features and discriminator")
    train_n = train.sample_users(holdout.n_users, _rng(config.seed, 1), name="train sample")
    feats = {k: user_features(s, vocab) for k, s in
             {"train": train, "train_n": train_n, **pair, "synthetic_all": synthetic_all}.items()}
    f["correlation_drift"] = {k: fidelity.correlation_drift(feats["train"], feats[k]) for k in pair}
    scaled = dict(zip(feats, standardise(list(feats.values()), feats["train"]), strict=True))
    f["discriminator_auc"] = {k: discriminator_auc(scaled["train_n"], scaled[k], config.seed) for k in pair}
    difference = scaled["synthetic"].mean(axis=0) - scaled["train"].mean(axis=0)
    top = np.argsort(-np.abs(difference), kind="stable")[:TELLING_FEATURES]
    f["telling_features"] = {str(feats["train"].columns[i]): float(difference[i]) for i in top}

    progress("utility: churn and response models trained on synthetic and on real customers")
    m = min(synthetic_all.n_users, train.n_users)
    f["utility"] = utility.utility_tasks(
        train.sample_users(m, _rng(config.seed, 4), name="real"), synthetic_all.sample_users(m, _rng(config.seed, 5)),
        holdout, vocab, churn_days=config.churn_days, response=config.response,
        response_hours=config.response_hours, seed=config.seed)

    progress("privacy: distances to training customers")
    profile = np.isin(feats["train"].columns, privacy.privacy_columns(list(feats["train"].columns)))
    f["privacy"] = privacy.privacy_figures(
        *(scaled[k][:, profile] for k in ("train", "train_n", "holdout", "synthetic", "synthetic_all")),
        {k: feats[k].to_numpy()[:, profile] for k in ("train", "holdout", "synthetic")})
    return f


def same_size(holdout: Sample, synthetic: Sample, seed: int) -> tuple[Sample, Sample]:
    """Cut the larger of the two to the other's number of users (seeded)."""
    n = min(holdout.n_users, synthetic.n_users)
    return holdout.sample_users(n, _rng(seed, 2), name="holdout"), synthetic.sample_users(n, _rng(seed, 3))


def differential_privacy(manifest: dict | None) -> dict:
    """The DP guarantee recorded in a model directory's model.json, if any."""
    for section in ("privacy", "train_config"):
        values = (manifest or {}).get(section) or {}
        epsilon = values.get("dp_epsilon", values.get("epsilon"))
        if epsilon is not None:
            delta = values.get("dp_delta", values.get("delta"))
            return {"epsilon": epsilon, "delta": delta,
                    "text": f"trained with differential privacy: epsilon {epsilon:g}"
                            + (f", delta {delta:g}" if delta is not None else "")}
    return {"epsilon": None, "delta": None,
            "text": "not trained with DP" if manifest is not None else "unknown: no model directory given (--model)"}


def _describe(log: EventLog) -> dict:
    return {"users": int(log.events["user_id"].nunique()), "events": len(log.events),
            "files": [str(p) for p in log.event_files]}


def run_validation(train: str | Path | EventLog, holdout: str | Path | EventLog, synthetic: str | Path | EventLog,
                   config: ValidationConfig = ValidationConfig(), *, manifest: dict | None = None,
                   progress: Progress = lambda _stage: None,
                   names: tuple[str, str, str] = ("--train", "--holdout", "--synthetic")) -> dict:
    """Measure ``synthetic`` against ``train`` with ``holdout`` as the ceiling; return the report as a dict.

    Each input is an event log (path or :class:`~twinsim.models.event_log.EventLog`). ``manifest`` is the model
    directory's model.json, for the differential-privacy line. ``report["passed"]`` is the overall verdict.
    """
    config.validate()
    progress("reading the inputs")
    logs = tuple(load_input(x, name) for x, name in zip((train, holdout, synthetic), names, strict=True))
    check_inputs(*logs, names=names)
    train_log, holdout_log, synthetic_log = logs
    terminal = list(config.terminal) if config.terminal is not None else \
        (manifest or {}).get("schema", {}).get("terminal_types")
    vocab = Vocabulary.from_train(train_log, terminal)
    if config.response is not None:
        missing = [t for t in config.response if t not in vocab.event_types]
        if missing:
            raise TwinsimError(f"--response names event type(s) {missing} that do not occur in the training data; "
                               f"known types: {sorted(vocab.event_types)}")
    samples = [Sample.from_log(name, log) for name, log in zip(("train", "holdout", "synthetic"), logs, strict=True)]
    holdout_n, synthetic_n = same_size(samples[1], samples[2], config.seed)
    with threadpool_limits(limits=1):  # one thread: reproducible, and polite on a shared machine
        figures = measure(samples[0], holdout_n, synthetic_n, samples[2], vocab, config, progress)
    checks = gates.all_checks(figures, holdout_n.n_users)
    groups = gates.group_verdicts(checks)
    return _plain({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "passed": all(groups.values()),
        "groups": groups,
        "compared_users": holdout_n.n_users,
        "inputs": {"train": _describe(train_log), "holdout": _describe(holdout_log),
                   "synthetic": _describe(synthetic_log)},
        "settings": {**asdict(config), "terminal": vocab.terminal_types,
                     "response": utility.response_pair(vocab, config.response),
                     "time_resolution": vocab.resolution.to_json()},
        "differential_privacy": differential_privacy(manifest),
        "checks": [c.to_json() for c in checks],
        "utility": figures["utility"],
        "curves": {"survival": figures.get("survival"), "calendar": figures["calendar_histograms"],
                   "dcr": figures["privacy"]["dcr_distributions"]},
    })


def run_model_validation(model_dir: str | Path, data: str | Path | EventLog, synthetic: str | Path | EventLog,
                         config: ValidationConfig = ValidationConfig(), *, users: str | Path | None = None,
                         progress: Progress = lambda _stage: None) -> dict:
    """The model-directory form: train and holdout users of ``data`` come from the model's split.parquet."""
    from twinsim.models.model_dir import read_manifest  # imports torch: only this form needs it

    manifest = read_manifest(model_dir)
    progress("reading --data")
    train, holdout = split_by_model(load_input(data, "--data", users), model_dir)
    return run_validation(train, holdout, synthetic, config, manifest=manifest, progress=progress,
                          names=("the model's training users in --data", "the model's holdout users in --data",
                                 "--synthetic"))


def _plain(x):
    """JSON-ready: numpy scalars to Python, NaN and infinity to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return gates.finite(x)
    return x
