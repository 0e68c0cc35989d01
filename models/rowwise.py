"""Row-independent network calls that give each row bitwise the same result whatever else is in the batch.

A user's draws must not depend on which other users share the batch (common random numbers). Every
network layer treats rows independently, but the matrix-product library picks other kernels for a
handful of rows than for many, and their float32 roundings differ in the last bit - enough, once in a
while, to tip a draw. Padding every call to at least ``MIN_ROWS`` rows keeps each row on the same
kernels, so a row's result depends on that row alone (``tests/test_model.py`` checks it end to end).

The thread count matters too: torch splits some reductions across its threads, and a simulation with two
threads differs from one with one in the last bits of about a sixth of its timestamps. Sampling therefore
runs on one torch thread (``one_thread``) wherever it runs: in this process, in a worker, in a Ray task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

MIN_ROWS = 64


def rowwise(fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], *inputs: torch.Tensor):
    """``fn(*inputs)`` for a row-independent ``fn`` (returning a tensor or a tuple of them), computed on at
    least MIN_ROWS rows (padding repeats the first row) and cut back to the rows given."""
    n = inputs[0].shape[0]
    if n >= MIN_ROWS or n == 0:
        return fn(*inputs)
    out = fn(*(torch.cat([x, x[:1].expand(MIN_ROWS - n, *x.shape[1:])]) for x in inputs))
    return tuple(y[:n] for y in out) if isinstance(out, tuple) else out[:n]


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the duration (the previous count is restored): results that do not depend on
    the machine's cores or on how many processes share them."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(was)
