"""The command line: help and version, exit codes, clear errors, nothing written on failure."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("command", [[], ["reference-world"], ["inspect"], ["train"], ["generate"], ["validate"]])
def test_every_command_has_help_with_an_example(run, command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command:
        assert "Example" in result.output


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and "twinsim, version" in result.output


def test_reference_world_then_inspect(run, tmp_path):
    out = tmp_path / "w"
    result = run("reference-world", "--users", 50, "--days", 20, "--seed", 3, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"events.parquet", "users.parquet", "context.parquet", "world.json",
                                             "decisions.parquet"}
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["counts"]["users"] == 50
    text = run("inspect", out)
    assert text.exit_code == 0
    assert "users:  50 with events" in text.output and "card_payment" in text.output
    summary = json.loads(run("inspect", out, "--json").output)
    assert summary["events"] == manifest["counts"]["events"]
    assert set(summary["amounts"]) == {"income", "card_payment", "card_declined", "fee"} & set(
        t for t, n in manifest["counts"]["events_by_type"].items() if n)


def test_refuses_to_overwrite_without_the_flag_and_keeps_the_old_output(run, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run("reference-world", "--users", 10, "--days", 5, "-o", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "precious"
    assert run("reference-world", "--users", 10, "--days", 5, "-o", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "events.parquet").exists()


@pytest.mark.parametrize("option", [["--days", "0"], ["--users", "0"], ["--seed", "-1"], ["--start", "01/02/2025"]])
def test_bad_options_exit_2_and_write_nothing(run, tmp_path, option):
    out = tmp_path / "new" / "w"
    result = run("reference-world", *option, "-o", out)
    assert result.exit_code == 2
    assert "e.g." in result.output
    assert not (tmp_path / "new").exists()


def test_inspect_bad_input_exits_2_with_file_column_and_fix(run, tmp_path):
    path = tmp_path / "events.csv"
    pd.DataFrame({"user_id": ["a"], "timestamp": ["tomorrow"], "event_type": ["login"]}).to_csv(path, index=False)
    result = run("inspect", path)
    assert result.exit_code == 2
    assert "error: events have a timestamp that cannot be parsed" in result.output
    for part in (f"file:    {path}", "column:  timestamp", "example: row 1:", "fix:"):
        assert part in result.output
    assert "Traceback" not in result.output


def test_debug_flag_shows_the_traceback(tmp_path):
    from twinsim.models.errors import DataContractError

    with pytest.raises(DataContractError):
        CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "missing.csv")], catch_exceptions=False)


def test_inspect_prints_warnings_for_dropped_duplicates(run, tmp_path):
    path = tmp_path / "events.csv"
    row = {"user_id": "a", "timestamp": "2025-01-01T00:00:00Z", "event_type": "login"}
    pd.DataFrame([row, row]).to_csv(path, index=False)
    result = run("inspect", path)
    assert result.exit_code == 0 and "warning: dropped 1 duplicated event row(s) of 2" in result.output


def test_train_then_generate_then_inspect_the_synthetic_data(run, tmp_path):
    world, model, synthetic = tmp_path / "w", tmp_path / "m", tmp_path / "s"
    assert run("reference-world", "--users", 80, "--days", 40, "-o", world, "--quiet").exit_code == 0
    trained = run("train", world, "-o", model, "--epochs", 1, "--d-model", 16, "--layers", 1, "--heads", 2,
                  "--window", 8, "--quiet")
    assert trained.exit_code == 0, trained.output
    assert "holdout NLL per event: transformer" in trained.output and (model / "model.json").exists()
    made = run("generate", model, "-n", 20, "--days", 10, "--start", "2025-02-01", "-o", synthetic, "--quiet")
    assert made.exit_code == 0, made.output
    assert {p.name for p in synthetic.iterdir()} == {"users.parquet", "events.parquet", "generate.json"}
    summary = json.loads(run("inspect", synthetic, "--json").stdout)  # warnings go to stderr
    assert summary["users_in_table"] == 20
    assert summary["date_range"]["first"] >= "2025-02-01"


def test_generate_refuses_a_directory_that_is_not_a_model(run, tmp_path):
    result = run("generate", tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "not a twinsim model directory" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "message"), [(["--dp-epsilon", "-1"], "--dp-epsilon must be positive"),
                                                 (["--dp-epsilon", "3", "--dp-delta", "0.5"], "--dp-delta 0.5")])
def test_train_refuses_bad_privacy_options_and_writes_nothing(run, tmp_path, option, message):
    world = tmp_path / "w"
    assert run("reference-world", "--users", 40, "--days", 20, "-o", world, "--quiet").exit_code == 0
    result = run("train", world, "-o", tmp_path / "m", *option, "--quiet")
    assert result.exit_code == 2 and message in result.output and "e.g." in result.output
    assert not (tmp_path / "m").exists()
