"""Installing twinsim puts one import package, twinsim, into site-packages: no top-level models or cli."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_install_holds_one_package_twinsim_with_its_api_and_built_in_scenarios(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    top = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin"}
    assert top == {"twinsim"}
    assert (target / "twinsim" / "scenarios" / "builtin" / "baseline.toml").exists()
    probe = ("import importlib.util, twinsim, twinsim.cli; print(twinsim.__file__); "
             "print(importlib.util.find_spec('models'), importlib.util.find_spec('cli'), twinsim.TwinModel.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}).stdout.split("\n")
    assert out[0].startswith(str(target)) and out[1] == "None None TwinModel"
