"""Where a simulation's cohorts run: in this process, in worker processes, or as Ray tasks.

Cohorts are independent (every draw comes from a user's own counter-based streams), so they run anywhere, in
any order, with the same bits, as long as each is computed on one torch thread (``rowwise.one_thread``). Every
strategy calls the one ``cohort.run_cohort`` and yields ``(cohort, stats)`` as cohorts finish; the parent
records them (``engine.simulate``).

* **in process** (one worker): the parent's model, torch on one thread for the duration;
* **worker processes** (``workers=N``): ``spawn``ed with OMP/MKL/NUMBA_NUM_THREADS=1 (N processes whose Numba
  kernels each start a thread per core ran 6x slower), each loading the model once; day-by-day progress comes
  back through a queue;
* **Ray** (``ray=ADDRESS``, ``auto`` or ``local``): one ``num_cpus=1`` task per cohort in the same
  environment. The model's files travel through the object store and each cohort's slice of the population
  with its task, so no node needs the model directory or a ``--history`` log; only the output must be a
  location every node writes to (checked by every task). Progress comes per finished cohort.

A worker's :class:`TwinsimError` reaches the parent as itself (or, if it does not pickle, as a TwinsimError
of the same message); any other error as itself or as a RuntimeError carrying the worker's traceback.
"""

from __future__ import annotations

import copy
import ctypes
import multiprocessing
import os
import pickle
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from queue import Empty

import numpy as np
import pandas as pd
import torch

from twinsim.models.errors import TwinsimError
from twinsim.models.generate import Sampler
from twinsim.models.model_dir import load_model, read_table
from twinsim.models.rollout import Events
from twinsim.models.rowwise import MIN_ROWS, one_thread
from twinsim.simulator.cohort import DAY_S, Loaded, RunSpec, run_cohort
from twinsim.simulator.population import Population

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
MODEL_FILES = ("model.json", "model.pt", "context.parquet")  # what sampling reads of a model directory
RAY_HINT = "pip install 'twinsim[ray]'"

OnReport = Callable[[int, pd.Timestamp, int, int, float], None]  # cohort, day, events so far, alive, share done


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def run_cohorts(spec: RunSpec, population: Population, jobs: list[tuple[int, np.ndarray]], loaded: Loaded,
                report: OnReport, workers: int = 1, ray: str | None = None) -> Iterator[tuple[int, dict]]:
    """Run cohorts ``jobs`` (number, members) of ``spec``; yields (number, stats) as each finishes. ``loaded``:
    the parent's model, for the in-process strategy."""
    parts = ((k, members, population.take(members)) for k, members in jobs)  # sliced as they are submitted
    if ray is not None:
        yield from _ray_cohorts(spec, parts, ray, workers, report)
    elif workers > 1 and len(jobs) > 1:
        for k, stats in _process_pool(_pool_cohort, ((k, (spec, k, members, part)) for k, members, part in parts),
                                      min(workers, len(jobs)), (spec.model_dir, spec.model_sha256), report):
            _report_finished(spec, k, stats, report)  # its last day's report may still be on the queue
            yield k, stats
    else:
        for k, members, part in parts:
            yield k, run_cohort(spec, loaded, k, members, part, lambda *a, k=k: report(k, *a))


def _report_finished(spec: RunSpec, k: int, stats: dict, report: OnReport) -> None:
    report(k, pd.Timestamp(spec.end_s - DAY_S, unit="s", tz="UTC"), stats["events"] + stats["history_events"],
           stats["users"] - stats["ended"], 1.0)


# -- a model loaded once per process -----------------------------------------------------------------------------
_LOADED: dict[str, Loaded] = {}  # key -> the model this (worker) process holds; one at a time


def model_of(model_dir: str | Path, key: str) -> Loaded:
    """The model in ``model_dir``, loaded once per process under ``key`` (its hash)."""
    if key not in _LOADED:
        model, schema, _ = load_model(model_dir)
        _LOADED.clear()
        _LOADED[key] = Loaded(model, schema, read_table(model_dir, "context"))
    return _LOADED[key]


# -- worker processes ---------------------------------------------------------------------------------------------
_QUEUE: list = []  # in a worker: the queue its progress goes back to the parent through


@contextmanager
def one_thread_env() -> Iterator[None]:
    """OMP/MKL/NUMBA_NUM_THREADS=1 in ``os.environ`` for the duration (processes started meanwhile inherit
    them); the parent's values come back afterwards."""
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    os.environ.update(THREAD_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _init_worker(model_dir: str, key: str, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    _die_with_parent()
    torch.set_num_threads(1)
    _QUEUE[:] = [queue]
    try:
        model_of(model_dir, key)
    except Exception:  # raised again, clearly, by the first task (an initializer's error breaks the pool)
        pass


def _die_with_parent() -> None:
    """Linux: SIGTERM to this worker when the parent dies without stopping it (killed), rather than the
    worker finishing a cohort into a run that a resumed attempt may be redoing."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was gone before that
        os._exit(1)


def _pool_cohort(spec: RunSpec, k: int, members: np.ndarray, part: Population) -> dict:
    with _portable_errors():
        return run_cohort(spec, model_of(spec.model_dir, spec.model_sha256), k, members, part,
                          lambda *a: _QUEUE[0].put((k, *a)))


def _process_pool(fn: Callable, tasks: Iterable[tuple[int, tuple]], processes: int, init: tuple,
                  on_message: Callable) -> Iterator[tuple[int, object]]:
    """``fn(*args)`` for each (key, args) of ``tasks`` in ``processes`` spawned single-threaded workers that
    load the model ``init`` (model_dir, key) once; yields (key, result) as each finishes, passing what workers
    put on their queue to ``on_message(*item)``. At most two tasks a worker are submitted ahead."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    tasks = iter(tasks)
    futures: dict[Future, int] = {}

    def submit(count: int) -> None:
        for _ in range(count):
            key, args = next(tasks, (None, None))
            if args is None:
                return
            futures[pool.submit(fn, *args)] = key

    with one_thread_env():  # every worker is spawned by the first submissions, so all inherit it
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker, initargs=(*init, queue))
        submit(processes)
    try:
        submit(processes)
        while futures:
            done, _ = wait(list(futures), timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(queue, on_message)
            for future in sorted(done, key=futures.get):
                key = futures.pop(future)
                yield key, future.result()  # a worker's error is raised here
            submit(len(done))
        _drain(queue, on_message)
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        queue.close()


def _drain(queue, on_message: Callable) -> None:
    while True:
        try:
            item = queue.get_nowait()
        except Empty:
            return
        on_message(*item)


@contextmanager
def _portable_errors() -> Iterator[None]:
    """Errors that reach the parent as themselves: a TwinsimError or other exception that does not pickle
    comes back as one of its message (and the worker's traceback)."""
    try:
        yield
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            if isinstance(exc, TwinsimError):
                raise TwinsimError(str(exc)) from None
            raise RuntimeError(f"in a worker: {traceback.format_exc()}") from None
        raise


def sample_in_workers(model_dir: str | Path, seed: int, static_cat: np.ndarray, static_num: np.ndarray,
                      start_s: float, end_s: float, batch_size: int, workers: int,
                      on_progress: Callable[[int, int], None] | None = None) -> Events:
    """``generate``'s sampling of users ``0..n-1`` in ``workers`` processes (at most one per MIN_ROWS users):
    contiguous chunks of users, each sampled by ``Sampler.run`` with its first user's stream key, concatenated
    in user order."""
    n = len(static_cat)
    bounds = np.linspace(0, n, max(1, min(workers, n // MIN_ROWS)) + 1).round().astype(int)
    done = dict.fromkeys(bounds[:-1].tolist(), 0)

    def progress(first: int, users_done: int) -> None:
        done[first] = users_done
        if on_progress is not None:
            on_progress(sum(done.values()), n)

    key = str(Path(model_dir).resolve())
    tasks = ((int(a), (str(model_dir), key, seed, static_cat[a:b], static_num[a:b], start_s, end_s, batch_size,
                       int(a))) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    chunks = dict(_process_pool(_sample_chunk, tasks, len(bounds) - 1, (str(model_dir), key), progress))
    return Events.concat([chunks[a] for a in sorted(chunks)], chunks[0].marks.shape[1])


def _sample_chunk(model_dir: str, key: str, seed: int, static_cat: np.ndarray, static_num: np.ndarray,
                  start_s: float, end_s: float, batch_size: int, first_user: int) -> Events:
    with _portable_errors():
        loaded = model_of(model_dir, key)
        with one_thread():
            return Sampler(loaded.model, loaded.schema, loaded.context, seed).run(
                static_cat, static_num, start_s, end_s, batch_size,
                lambda users_done, _: _QUEUE[0].put((first_user, users_done)), first_user=first_user)


# -- Ray ------------------------------------------------------------------------------------------------------------
def require_ray() -> None:
    """Fail with one clear line where Ray is not installed."""
    _import_ray()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TwinsimError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


@contextmanager
def ray_session(address: str, workers: int) -> Iterator[object]:
    """Ray, connected to ``address`` (``auto``: the cluster this machine belongs to; ``local``: a new instance
    on this machine with ``workers`` CPUs). An already initialised Ray is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TwinsimError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]}); start a cluster with "
                           "`ray start --head` and pass --ray auto (or its address), or --ray local") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def model_files(model_dir: str | Path) -> dict[str, bytes]:
    """What a Ray task needs of the model directory, as bytes: it travels through the object store."""
    return {name: (Path(model_dir) / name).read_bytes() for name in MODEL_FILES if (Path(model_dir) / name).exists()}


def _ray_model(files: dict[str, bytes], key: str) -> Loaded:
    """The shipped model, written once per node to a temporary directory and loaded once per worker."""
    if key not in _LOADED:
        directory = Path(tempfile.gettempdir()) / f"twinsim-model-{key[:16]}"
        if not (directory / "model.pt").exists():
            tmp = Path(tempfile.mkdtemp(prefix=".twinsim-model-"))
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            try:
                os.rename(tmp, directory)
            except OSError:  # another worker of this node was first
                for path in tmp.iterdir():
                    path.unlink()
                tmp.rmdir()
        model_of(directory, key)
    return _LOADED[key]


def _ray_cohort(files: dict[str, bytes], spec: RunSpec, k: int, members: np.ndarray, part: Population) -> dict:
    with _portable_errors():
        if not spec.out.exists("manifest.json"):
            raise TwinsimError(f"the output {spec.out} is not visible from Ray node {os.uname().nodename}: a cluster "
                               "needs a location every node shares (s3://bucket/run, a shared file system)")
        torch.set_num_threads(1)
        members, part = members.copy(), copy.deepcopy(part)  # Ray's arrays are read-only views of its store
        return run_cohort(spec, _ray_model(files, spec.model_sha256), k, members, part)


def _ray_cohorts(spec: RunSpec, parts: Iterable[tuple[int, np.ndarray, Population]], address: str, workers: int,
                 report: OnReport) -> Iterator[tuple[int, dict]]:
    with ray_session(address, workers) as ray:
        files = ray.put(model_files(spec.model_dir))
        task = ray.remote(num_cpus=1)(_ray_cohort).options(runtime_env={"env_vars": THREAD_ENV})
        ahead = 2 * max(int(ray.cluster_resources().get("CPU", 1)), 1)  # tasks submitted before one finishes
        parts, refs = iter(parts), {}

        def submit(count: int) -> None:
            for _ in range(count):
                k, members, part = next(parts, (None, None, None))
                if part is None:
                    return
                refs[task.remote(files, spec, k, members, part)] = k

        try:
            submit(ahead)
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    k = refs.pop(ref)
                    try:
                        stats = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        raise (cause if isinstance(cause, TwinsimError) else exc) from None
                    _report_finished(spec, k, stats, report)
                    yield k, stats
                submit(len(done))
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
