"""The model directory: the artifact `train` writes and `generate` (and later stages) read.

    model.pt            weights (a plain state dict: loads with torch.load(weights_only=True))
    model.json          format, model config, schema, training config, metrics, library versions
    split.parquet       user_id -> train / validation / holdout (evaluation must never leak)
    attributes.parquet  joint frequencies of static attributes, for sampling new customers
    context.parquet     the daily context series seen in training (if any)
    checkpoint.pt       last epoch's weights + optimiser state, for --resume
    history.json        per-epoch metrics so far
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from twinsim.models.artifacts import write_json
from twinsim.models.encoding import Schema
from twinsim.models.errors import TwinsimError
from twinsim.models.transformer import EventTransformer, ModelConfig

# 8: the schema records the time resolution of the training log (day for a log of dates), which generation keeps
# 9: the time head's grid is a day, then an hour within it (days, hours)
FORMAT, FORMAT_VERSION = "twinsim-model", 9


def library_versions() -> dict[str, str]:
    names = ("twinsim", "torch", "numpy", "numba", "pandas", "pyarrow")
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_manifest(directory: Path, model: EventTransformer, schema: Schema, extra: dict) -> None:
    save_atomic(model.state_dict(), directory / "model.pt")
    write_json(directory / "model.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                          "model_config": model.cfg.to_json(), "schema": schema.to_json(),
                                          "library_versions": library_versions(), **extra})


def read_manifest(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "model.json"
    if not path.exists():
        hint = ("training has not finished (checkpoint.pt is there); finish it with `twinsim train ... --resume`"
                if (directory / "checkpoint.pt").exists() else "pass a directory written by `twinsim train`")
        raise TwinsimError(f"{directory} is not a twinsim model directory: no model.json; {hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise TwinsimError(f"{path} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                           f"this twinsim reads {FORMAT!r} version {FORMAT_VERSION}: retrain the model with this "
                           f"version (trained with {manifest.get('library_versions', {}).get('twinsim', '?')})")
    return manifest


def load_model(directory: str | Path) -> tuple[EventTransformer, Schema, dict]:
    """(model in eval mode, schema, manifest). Fails clearly on a missing or incompatible directory."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    model = EventTransformer(ModelConfig(**manifest["model_config"]))
    try:
        state = torch.load(directory / "model.pt", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, FileNotFoundError, KeyError) as exc:
        raise TwinsimError(f"cannot load the weights in {directory / 'model.pt'}: {str(exc).splitlines()[0]}; "
                           "the directory is damaged or was written by another version: retrain") from exc
    schema = Schema.from_json(manifest["schema"])
    model.time.calendar = schema.calendar  # periods outside the training window read as seen ones
    return model.eval(), schema, manifest


def read_table(directory: str | Path, name: str) -> pd.DataFrame | None:
    path = Path(directory) / f"{name}.parquet"
    return pd.read_parquet(path) if path.exists() else None
