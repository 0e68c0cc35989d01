"""``twinsim whatif``: a scenario run and a baseline run of the same customers with common random numbers
(same seed, users, start and days), for each model, then the uplift report (``compare.py``).

Layout of a what-if directory::

    scenario/  baseline/                 the first model's runs (``twinsim simulate`` run directories)
    models/2/scenario/  models/2/baseline/   the runs of each further model (--models), numbered from 2
    uplift.json  uplift.html             the report

The scenario run goes first: a scenario the model's vocabulary refuses fails before anything is simulated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from twinsim.models.errors import OutputExistsError, TwinsimError
from twinsim.models.model_dir import read_manifest
from twinsim.simulator.engine import Progress, SimulateConfig, simulate
from twinsim.simulator.sink import empty_dir
from twinsim.simulator.whatif.compare import uplift_between
from twinsim.simulator.whatif.report import write_uplift

ARMS = ("scenario", "baseline")
VOCABULARY = ("event_types", "terminal_types", "marks", "categorical_attributes")


@dataclass
class WhatifConfig:
    """The population, days and seed both arms share, and the scenario of the one that is not the baseline."""

    scenario: str  # a TOML file or a built-in scenario name
    days: int = 30
    users: int | None = None  # new customers (with ``start``), or
    start: str | None = None
    history: str | None = None  # an event log whose customers are continued
    observed_until: str | None = None
    history_days: int = 30
    seed: int = 0
    cohort_size: int | None = None

    def validate(self) -> None:
        if self.users is not None and self.history is not None:
            raise TwinsimError("give either --users N --start DATE (new customers) or --history LOG (continue a log's "
                               "customers), not both; e.g. twinsim whatif runs/model --scenario travel_card_push "
                               "--users 10000 --start 2025-06-01 --days 30 -o runs/whatif")
        if self.users is None and self.history is None:
            raise TwinsimError("give the customers: --users N --start DATE (new customers) or --history LOG (continue "
                               "a log's customers); e.g. --users 10000 --start 2025-06-01")
        self.arm("baseline").validate()

    def arm(self, scenario: str) -> SimulateConfig:
        return SimulateConfig(users=self.users, start=self.start, days=self.days, seed=self.seed, scenario=scenario,
                              history_days=self.history_days, history=self.history,
                              observed_until=self.observed_until, cohort_size=self.cohort_size)


def run_dirs(out: Path, model: int) -> dict[str, Path]:
    """Where model ``model`` (1 is MODEL, 2... the --models in order) writes its two runs."""
    root = out if model == 1 else out / "models" / str(model)
    return {arm: root / arm for arm in ARMS}


def check_models(model_dir: str | Path, others: Sequence[str | Path]) -> list[Path]:
    """MODEL and the --models, each a model directory with MODEL's vocabulary (the same data, other seeds)."""
    paths = [Path(model_dir), *(Path(m) for m in others)]
    first = read_manifest(paths[0])["schema"]
    for path in paths[1:]:
        schema = read_manifest(path)["schema"]
        differs = [k for k in VOCABULARY if schema.get(k) != first.get(k)]
        if differs:
            raise TwinsimError(f"--models {path}: its {', '.join(differs)} differ from {paths[0]}'s; --models are "
                               "models of the same data trained with other seeds (twinsim train DATA --seed 2 -o M2)")
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise TwinsimError(f"--models: {[str(p) for p in paths]} name a model twice; each model counts once")
    return paths


def whatif(model_dir: str | Path, config: WhatifConfig, out: str | Path, models: Sequence[str | Path] = (),
           workers: int | None = None, resume: bool = False, overwrite: bool = False,
           on_progress: Callable[[str, Progress], None] | None = None) -> dict:
    """Run ``config``'s scenario and the baseline with every model into ``out``, write uplift.json and uplift.html
    there and return the report. ``resume`` finishes the runs an interrupted what-if left (same options);
    ``on_progress(label, progress)`` sees every run's progress, labelled e.g. "model 1 scenario"."""
    config.validate()
    paths = check_models(model_dir, models)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file, not a directory; choose another path")
    if not resume:
        empty_dir(out, overwrite, "is not empty; pass --overwrite to replace it, or --resume to finish an "
                                  "interrupted what-if")
    for k, path in enumerate(paths, start=1):
        for arm, run_dir in run_dirs(out, k).items():
            label = f"model {k} {arm}"
            report = None if on_progress is None else (lambda p, label=label: on_progress(label, p))
            simulate(path, config.arm(config.scenario if arm == "scenario" else "baseline"), run_dir,
                     resume=resume and (run_dir / "manifest.json").exists(), on_progress=report, workers=workers)
    dirs = [run_dirs(out, k) for k in range(1, len(paths) + 1)]
    report = uplift_between([d["baseline"] for d in dirs], [d["scenario"] for d in dirs])
    report["config"] = {**asdict(config), "models": [str(p) for p in paths]}
    write_uplift(report, out)
    return report
