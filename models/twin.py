"""The Python API, mirroring the command line: fit, sample, save, load.

>>> from twinsim import TwinModel
>>> twin = TwinModel.fit("runs/world", epochs=2)                       # doctest: +SKIP
>>> users, events = twin.sample(1000, start="2025-01-01", days=90)     # doctest: +SKIP
>>> twin.save("runs/model"); twin = TwinModel.load("runs/model")       # doctest: +SKIP
>>> report = twin.whatif("travel_card_push", "runs/whatif", users=10_000, start="2025-06-01", days=30)  # doctest: +SKIP
>>> report = twin.recommend(["random", "thompson"], "runs/rec", users=5000, start="2025-06-01")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from twinsim.models.artifacts import atomic_output_dir
from twinsim.models.event_log import EventLog, load_event_log
from twinsim.models.generate import GenerateConfig, generate
from twinsim.models.model_dir import read_manifest
from twinsim.models.training import TrainConfig, train

_MODEL_OPTIONS = ("d_model", "n_layers", "n_heads", "window", "mixture", "dropout")


class TwinModel:
    """A trained model directory, with the operations on it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)

    @property
    def metrics(self) -> dict:
        return self.manifest["metrics"]

    @classmethod
    def fit(cls, data: str | Path | EventLog, directory: str | Path | None = None, **options) -> TwinModel:
        """Train on an event log (a path or a loaded :class:`EventLog`). Options are those of
        :class:`~twinsim.models.training.TrainConfig` and the model's size (d_model, n_layers, n_heads, window)."""
        log = data if isinstance(data, EventLog) else load_event_log(data)
        model_options = {k: options.pop(k) for k in _MODEL_OPTIONS if k in options}
        directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="twinsim-model-"))
        train(log, directory, model_overrides=model_options, config=TrainConfig(**options), overwrite=True)
        return cls(directory)

    @classmethod
    def load(cls, directory: str | Path) -> TwinModel:
        return cls(directory)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Copy the model directory to ``directory`` (atomically)."""
        with atomic_output_dir(directory, overwrite) as tmp:
            shutil.copytree(self.directory, tmp, dirs_exist_ok=True)
        return Path(directory)

    def sample(self, users: int, start: str | pd.Timestamp, days: int, seed: int = 0,
               where: dict[str, list[str]] | None = None, batch_size: int = 4096) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(users, events) of new synthetic customers, in the event-log contract."""
        config = GenerateConfig(users=users, start=pd.Timestamp(start), days=days, seed=seed, where=where or {},
                                batch_size=batch_size)
        frame_users, events, _ = generate(self.directory, config)
        return frame_users, events

    def whatif(self, scenario: str | Path, out: str | Path, *, users: int | None = None,
               start: str | pd.Timestamp | None = None, history: str | Path | None = None, days: int = 30,
               models: Sequence[str | Path | TwinModel] = (), seed: int = 0, history_days: int = 30,
               workers: int | None = None, resume: bool = False, overwrite: bool = False) -> dict:
        """``twinsim whatif``: this model (and ``models``, the same data trained with other seeds) runs the
        baseline and ``scenario`` for the same customers (``users`` new ones from ``start``, or ``history``'s)
        into ``out``; returns the uplift report also written to ``out/uplift.json`` (docs/whatif.md)."""
        from twinsim.simulator.whatif import WhatifConfig
        from twinsim.simulator.whatif import whatif as run

        config = WhatifConfig(scenario=str(scenario), days=days, users=users,
                              start=None if start is None else str(pd.Timestamp(start).date()),
                              history=None if history is None else str(history), history_days=history_days, seed=seed)
        others = [m.directory if isinstance(m, TwinModel) else Path(m) for m in models]
        return run(self.directory, config, out, models=others, workers=workers, resume=resume, overwrite=overwrite)

    def recommend(self, policies: Sequence[str], out: str | Path, *, users: int | None = None,
                  start: str | pd.Timestamp | None = None, history: str | Path | None = None, days: int = 30,
                  share: float = 1.0, values: dict[str, float] | None = None, seed: int = 0, history_days: int = 30,
                  workers: int | None = None, resume: bool = False, overwrite: bool = False, **options) -> dict:
        """``twinsim recommend``: every policy of ``policies`` (specs: a built-in, module:Class, file.py:Class or
        an http:// URL) decides what the same customers are shown at their logins (``share`` of them), the model
        draws their answers; returns the report also written to ``out/report.json`` (docs/recommenders.md).
        ``options``: the rest of :class:`~twinsim.simulator.recommend.run.RecommendConfig` (trigger,
        concurrency, timeout_s, fallback, cohort_size, observed_until)."""
        from twinsim.simulator.recommend.run import RecommendConfig
        from twinsim.simulator.recommend.run import recommend as run

        first = None if start is None else str(pd.Timestamp(start).date())
        config = RecommendConfig(days=days, users=users, start=first,
                                 history=None if history is None else str(history), history_days=history_days,
                                 seed=seed, share=share, values=dict(values or {}), **options)
        return run(self.directory, list(policies), config, out, workers=workers, resume=resume, overwrite=overwrite)
