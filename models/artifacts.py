"""Writing output directories atomically, with a JSON manifest.

Every stage writes into a hidden temporary directory beside the target and renames it into place only
when everything succeeded, so a failed or interrupted run leaves nothing half-written and never
destroys the previous output.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twinsim.models.errors import OutputExistsError


def check_output_dir(path: Path, overwrite: bool, option: str = "-o/--output") -> None:
    """Fail early (before any work) when ``path`` holds something and ``overwrite`` is false."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{option} {path} is a file, not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{option} {path} already exists and is not empty; pass --overwrite to "
                                "replace it, or choose another directory")


@contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block finishes without error."""
    path = Path(path)
    check_output_dir(path, overwrite)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # innermost first: remove only the directories this call made
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
