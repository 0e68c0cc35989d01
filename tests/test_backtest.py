"""twinsim backtest: cut a log, continue its customers with the twin, score against what happened."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY

from twinsim import cli
from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import load_event_log
from twinsim.simulator.backtest.run import BacktestConfig, backtest

CUT = "2024-10-01"


@pytest.fixture(scope="module")
def cut_model(sparse_log, tmp_path_factory):
    """A tiny model trained on the sparse log's purchases before the cut, as backtest would train one."""
    from twinsim.models.training import TrainConfig, train

    log = load_event_log(sparse_log)
    before = tmp_path_factory.mktemp("before") / "log"
    before.mkdir()
    log.events[log.events["timestamp"] < pd.Timestamp(CUT, tz="UTC")].to_parquet(before / "events.parquet")
    out = tmp_path_factory.mktemp("cut_model") / "m"
    train(load_event_log(before), out, model_overrides=TINY,
          config=TrainConfig(epochs=15, batch_size=16, patience=3, seed=1))
    return out


def test_a_sparse_log_is_backtested_against_the_btyd_baselines(sparse_log, cut_model, tmp_path):
    lines = []
    config = BacktestConfig(cut=CUT, horizon_days=60, replications=3, model=str(cut_model))
    report = backtest(sparse_log, config, tmp_path / "bt", say=lines.append)
    assert report["settings"]["types"] == ["purchase"] and report["settings"]["replications"] == 3
    purchase = report["types"]["purchase"]
    assert {"twin", "own_rate", "bg_nbd", "pareto_nbd"} <= set(purchase["methods"])
    assert purchase["actual_total"] > 0 and purchase["methods"]["twin"]["total"] > 0
    assert report["events"]["twin"]["ignored_outside_horizon"] == 0  # nothing drawn before the cut
    assert report["churn"] is None  # a non-contractual log has no terminal event
    saved = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert saved["types"]["purchase"]["methods"]["twin"]["mae"] == purchase["methods"]["twin"]["mae"]
    assert "BG/NBD" in (tmp_path / "bt" / "report.html").read_text()
    assert any("replication 3/3" in line for line in lines)
    # each replication continued every customer from the cut, never earlier
    for k in range(3):
        run = tmp_path / "bt" / "draws" / f"seed={k}"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["observed_until"] == pd.Timestamp(CUT, tz="UTC").isoformat()
        assert pd.read_parquet(run / "events")["timestamp"].min() >= pd.Timestamp(CUT, tz="UTC")
    # the same command again reuses the finished replications and gives the same report
    again = []
    assert backtest(sparse_log, config, tmp_path / "bt", say=again.append)["types"] == report["types"]
    assert not any("replication" in line for line in again)


def test_a_model_that_saw_the_future_is_refused(sparse_log, sparse_model, tmp_path):
    with pytest.raises(TwinsimError, match="after the cut"):
        backtest(sparse_log, BacktestConfig(cut=CUT, horizon_days=30, replications=1, model=str(sparse_model)),
                 tmp_path / "bt")


def test_backtest_on_the_command_line(sparse_log, cut_model, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bt"
    result = runner.invoke(cli.main, ["backtest", str(sparse_log), "--cut", CUT, "--horizon", "30", "--model",
                                      str(cut_model), "--replications", "2", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "purchase" in result.output and (out / "report.html").exists()
    bad = runner.invoke(cli.main, ["backtest", str(sparse_log), "--cut", "2030-01-01", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--cut 2030-01-01" in bad.output
    other = runner.invoke(cli.main, ["backtest", str(sparse_log), "--cut", CUT, "--horizon", "20", "--model",
                                     str(cut_model), "--replications", "1", "-o", str(out)])
    assert other.exit_code != 0 and "--overwrite" in other.output
