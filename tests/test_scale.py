"""Parallel cohorts: worker processes and Ray give bitwise the output of one worker; resume with another
worker count; a worker's error surfaces clearly; generate in chunks."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from twinsim import cli
from twinsim.models.errors import DataContractError, TwinsimError
from twinsim.models.generate import GenerateConfig, generate
from twinsim.simulator import parallel
from twinsim.simulator.cohort import Loaded, RunSpec
from twinsim.simulator.engine import SimulateConfig, simulate
from twinsim.simulator.population import Population
from twinsim.simulator.sink import DATASETS, Output

# 4 cohorts of 50 users, 3 days of sampled warm-up, the built-in campaign on days 7 and 14
CONFIG = dict(users=200, start="2025-02-01", days=22, seed=3, history_days=3, cohort_size=50,
              scenario="travel_card_push")


def frame(run, dataset: str) -> pd.DataFrame:
    data = pd.read_parquet(run / dataset).drop(columns="date", errors="ignore")
    data = data.astype({c: "object" for c in data.columns if isinstance(data[c].dtype, pd.CategoricalDtype)})
    return data.sort_values(list(data.columns), kind="stable").reset_index(drop=True)


def assert_same_run(a, b) -> None:
    for dataset in DATASETS:
        pd.testing.assert_frame_equal(frame(a, dataset), frame(b, dataset), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "users.parquet"), pd.read_parquet(b / "users.parquet"))
    ma, mb = (json.loads((run / "manifest.json").read_text()) for run in (a, b))
    for key in ("events", "history_events", "exposures", "ended", "cohorts", "model_sha256", "config"):
        assert ma[key] == mb[key], key


@pytest.fixture(scope="module")
def two_workers(model_dir, tmp_path_factory):
    """The reference run: CONFIG in two worker processes."""
    out = tmp_path_factory.mktemp("scale") / "two"
    seen = []
    manifest = simulate(model_dir, SimulateConfig(**CONFIG), out, workers=2, on_progress=seen.append)
    assert manifest["execution"]["workers"] == 2 and manifest["status"] == "complete"
    assert seen[-1].fraction == 1.0 and seen[-1].events == manifest["events"] + manifest["history_events"]
    assert all(a.events <= b.events and a.fraction <= b.fraction for a, b in zip(seen[:-1], seen[1:], strict=True))
    return out


def test_one_and_two_workers_give_the_same_bits(model_dir, two_workers, tmp_path):
    manifest = simulate(model_dir, SimulateConfig(**CONFIG), tmp_path / "one", workers=1)
    assert manifest["cohorts"] == 4 and manifest["exposures"] > 0 and manifest["history_events"] > 0
    assert_same_run(tmp_path / "one", two_workers)
    assert not multiprocessing.active_children()  # the pool is gone


def test_an_interrupted_parallel_run_resumes_with_another_worker_count(model_dir, two_workers, tmp_path):
    def crash(progress):
        if progress.fraction >= 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(model_dir, SimulateConfig(**CONFIG), tmp_path / "cut", workers=2, on_progress=crash)
    assert not multiprocessing.active_children()  # the workers were stopped, not left running
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "running" and len(manifest["cohorts_done"]) < 4
    resumed = simulate(model_dir, SimulateConfig(**CONFIG), tmp_path / "cut", resume=True, workers=1)
    assert resumed["execution"]["workers"] == 1  # information only: not part of the run's identity
    assert_same_run(tmp_path / "cut", two_workers)
    assert not list((tmp_path / "cut").rglob(".*.tmp"))


def test_the_default_cohorts_fill_the_workers_and_a_resumed_run_keeps_them(model_dir, two_workers, tmp_path):
    config = SimulateConfig(**{**CONFIG, "cohort_size": None})

    def crash(progress):
        if progress.fraction >= 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(model_dir, config, tmp_path / "cut", workers=2, on_progress=crash)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["cohort_size"] == 100  # 200 users, 2 workers
    resumed = simulate(model_dir, config, tmp_path / "cut", resume=True, workers=1)  # alone it would cut 1 cohort
    assert resumed["cohort_size"] == 100 and resumed["cohorts"] == 2
    for dataset in DATASETS:  # and the cohort size does not change a user's events
        pd.testing.assert_frame_equal(frame(tmp_path / "cut", dataset), frame(two_workers, dataset), check_exact=True)


def test_a_worker_error_surfaces_as_the_same_clear_message(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    out = Output(tmp_path / "run")
    spec = RunSpec(str(tmp_path / "empty"), "0" * 64, 0, None, out, 0.0, 0.0, 86400.0, 64)
    population = Population(pd.DataFrame({"user_id": ["a", "b"]}), np.zeros((2, 1), np.int64),
                            np.zeros((2, 1), np.float32))
    jobs = [(0, np.array([0])), (1, np.array([1]))]
    with pytest.raises(TwinsimError, match="is not a twinsim model directory") as error:
        list(parallel.run_cohorts(spec, population, jobs, Loaded(None, None, None), lambda *_: None, workers=2))
    assert "pickl" not in str(error.value).lower()
    assert not multiprocessing.active_children()
    # an error that does not pickle (keyword-only arguments) comes back as a TwinsimError of its message
    with pytest.raises(TwinsimError, match="bad column") as error:
        with parallel._portable_errors():
            raise DataContractError("bad column", fix="rename it")
    assert pickle.loads(pickle.dumps(error.value)).args == error.value.args


def test_generate_in_two_workers_is_generate_in_one(model_dir, tmp_path):
    config = GenerateConfig(users=200, start=pd.Timestamp("2025-02-01"), days=20, seed=5, batch_size=64)
    users, events, summary = generate(model_dir, config, workers=1)
    result = CliRunner().invoke(cli.main, ["generate", str(model_dir), "-n", "200", "--start", "2025-02-01",
                                           "--days", "20", "--seed", "5", "--batch-size", "64", "--workers", "2",
                                           "-o", str(tmp_path / "two"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "two" / "generate.json").read_text())["workers"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / "events.parquet"), events, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / "users.parquet"), users)
    assert len(events) == summary["events"] > 0


def test_ray_without_ray_installed_says_how_to_install_it(model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = CliRunner().invoke(cli.main, ["simulate", str(model_dir), "--users", "10", "--start", "2025-02-01",
                                           "--days", "2", "--ray", "local", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "pip install 'twinsim[ray]'" in result.output
    assert not (tmp_path / "run").exists()


def test_ray_tasks_give_the_same_bits_also_into_a_uri(model_dir, two_workers, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = simulate(model_dir, SimulateConfig(**CONFIG), tmp_path / "ray", ray="local")
        assert manifest["execution"]["ray"] == "local"
        assert_same_run(tmp_path / "ray", two_workers)
        simulate(model_dir, SimulateConfig(**CONFIG), (tmp_path / "uri").as_uri(), ray="local")
        assert_same_run(tmp_path / "uri", two_workers)
        assert not list((tmp_path / "uri").rglob(".*.tmp"))
    finally:
        ray.shutdown()
