"""Thread counts hold: Numba's parallel kernels must not change the thread count torch computes with.

Each case runs in a fresh interpreter, because what is under test is what happens the first time a
process starts Numba's thread pool."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RUN_KERNEL = """
import numpy as np
import torch
from twinsim.models import kernels
torch.ones(512, 512) @ torch.ones(512, 512)  # torch has computed before the first parallel kernel runs
n, k = 256, 8
kernels.recency_features(np.ones(n), np.zeros((n, k)), np.ones((n, k)), np.ones(n), 30.0, np.log1p(np.arange(4.0)))
"""


def threads_after(code: str, **env: str) -> int:
    """torch.get_num_threads() printed by ``code`` run in a fresh interpreter with ``env`` added."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport torch; print(torch.get_num_threads())"],
                         env={**environ, "NUMBA_NUM_THREADS": "2", **env}, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="Numba's pool has one thread on one core")
def test_a_parallel_kernel_keeps_torch_on_the_threads_it_was_set_to():
    assert threads_after("import torch; torch.set_num_threads(1)\n" + RUN_KERNEL) == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="Numba's pool has one thread on one core")
def test_a_parallel_kernel_keeps_omp_num_threads():
    assert threads_after(RUN_KERNEL, OMP_NUM_THREADS="1") == 1
    assert threads_after(RUN_KERNEL) == threads_after("import torch")  # and torch's default stays its default
