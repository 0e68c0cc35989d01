"""The Python API, mirroring the command line: fit, sample, save, load.

>>> from twinsim import TwinModel
>>> twin = TwinModel.fit("runs/world", epochs=2)                       # doctest: +SKIP
>>> users, events = twin.sample(1000, start="2025-01-01", days=90)     # doctest: +SKIP
>>> twin.save("runs/model"); twin = TwinModel.load("runs/model")       # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
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
