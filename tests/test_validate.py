"""twinsim validate: the report passes a real second holdout and fails each sabotaged "synthetic" dataset."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import ks_2samp

from cli import main
from twinsim.models.event_log import EventLog, load_event_log
from twinsim.models.model_dir import FORMAT, FORMAT_VERSION
from twinsim.models.validation import ValidationConfig, run_validation, sabotage
from twinsim.models.validation.accuracy import tvd
from twinsim.models.validation.features import user_features
from twinsim.models.validation.fidelity import effective_size, ks_statistic
from twinsim.models.validation.privacy import closer_to_train_share, identical_share
from twinsim.models.validation.samples import Sample, Vocabulary
from twinsim.models.validation.survival import kaplan_meier
from twinsim.models.validation.utility import response_cases
from twinsim.simulator.reference_world import WorldConfig, generate_reference_world

PARTS = ("train", "holdout", "holdout2")


@pytest.fixture(scope="session")
def real_parts(tmp_path_factory) -> dict[str, Path]:
    """A 600-customer reference world and three disjoint sets of its customers, each written as a dataset."""
    root = tmp_path_factory.mktemp("validate")
    generate_reference_world(WorldConfig(users=600, days=365, seed=5), root / "world")
    log = load_event_log(root / "world")
    ids = np.array(sorted(log.events["user_id"].unique()), dtype=object)
    order = np.random.default_rng(0).permutation(len(ids))
    paths = {"world": root / "world"}
    for k, name in enumerate(PARTS):
        keep = set(ids[order[k::3]])
        (root / name).mkdir()
        log.events[log.events["user_id"].isin(keep)].to_parquet(root / name / "events.parquet", index=False)
        log.users[log.users["user_id"].isin(keep)].to_parquet(root / name / "users.parquet", index=False)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def report_of(real_parts):
    """The report for one "synthetic" dataset (computed once per session): a real second holdout, or
    training customers copied, shuffled or shifted in time."""
    train = load_event_log(real_parts["train"])
    makers = {"second holdout": lambda: real_parts["holdout2"], "copy": lambda: sabotage.copy_of(train),
              "shuffled": lambda: sabotage.shuffle_columns(train, seed=1),
              "shifted": lambda: sabotage.shift_time(train)}

    @cache
    def report(case: str) -> dict:
        return run_validation(real_parts["train"], real_parts["holdout"], makers[case](), ValidationConfig(seed=0))

    return report


def check(report: dict, id_: str) -> dict:
    return next(c for c in report["checks"] if c["id"] == id_)


# ------------------------------------------------------------------------------------------ sabotage
def test_a_second_real_holdout_passes_every_gate(report_of):
    report = report_of("second holdout")
    failed = [c["id"] for c in report["checks"] if c["passed"] is False]
    assert failed == [] and report["passed"]
    assert set(report["groups"]) == {"fidelity", "sequence", "calendar", "utility", "privacy"}
    assert report["compared_users"] == 200
    assert all(c["passed"] is not None for c in report["checks"] if c["group"] != "utility")


def test_a_copy_of_train_fails_privacy_and_nothing_else(report_of):
    report = report_of("copy")
    assert report["groups"] == {"fidelity": True, "sequence": True, "calendar": True, "utility": True,
                                "privacy": False}
    assert check(report, "identical_matches")["synthetic"] == 1.0
    assert check(report, "membership_inference")["synthetic"] > 0.95
    assert check(report, "dcr_close")["passed"] is False


def test_columns_shuffled_across_users_keep_the_marginals_but_fail_sequence_fidelity(report_of):
    report = report_of("shuffled")
    assert report["groups"]["sequence"] is False and not report["passed"]
    assert check(report, "coherence_accuracy")["passed"] is False
    assert check(report, "inter_event_time")["passed"] is False
    assert check(report, "univariate_accuracy")["passed"] is True  # every column on its own is exact
    assert check(report, "bivariate_accuracy")["passed"] is False


def test_a_shift_by_three_days_and_five_hours_fails_calendar_fidelity(report_of):
    report = report_of("shifted")
    assert report["groups"]["calendar"] is False
    assert check(report, "calendar_hour")["passed"] is False
    assert check(report, "calendar_weekday")["passed"] is False
    assert check(report, "coherence_accuracy")["passed"] is True  # the sequences themselves are intact


def test_every_figure_stands_next_to_its_holdout_ceiling_and_threshold(report_of):
    report = report_of("second holdout")
    for c in report["checks"]:
        assert c["meaning"] and c["rule"], c["id"]
        if c["group"] in ("fidelity", "sequence", "calendar") and c["id"] != "rare_coverage":
            assert c["holdout"] is not None and c["threshold"] is not None, c["id"]
    churn = report["utility"]["churn"]
    assert churn["applicable"] and {"auc", "precision", "recall", "f1"} <= set(churn["ratio"])
    assert report["differential_privacy"]["epsilon"] is None


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_the_same_report_as_the_api_and_exits_0_when_all_gates_pass(run, real_parts, report_of,
                                                                               tmp_path):
    out = tmp_path / "report"
    result = run("validate", "--train", real_parts["train"], "--holdout", real_parts["holdout"], "--synthetic",
                 real_parts["holdout2"], "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report_of("second holdout")))
    page = (out / "report.html").read_text()
    assert "PASSED" in page and page.count("data:image/png;base64,") >= 4 and "http" not in page.split("<body>")[1]
    assert "PASSED" in result.output


def test_cli_model_form_uses_the_saved_split_shows_dp_and_exits_1_on_a_failing_gate(run, real_parts, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                  "schema": {"terminal_types": ["account_closed"]},
                                                  "privacy": {"epsilon": 3.0, "delta": 1e-5}}))
    split = pd.concat([pd.DataFrame({"user_id": pd.read_parquet(real_parts[name] / "users.parquet")["user_id"],
                                     "split": role}) for name, role in zip(PARTS, ("train", "holdout", "validation"),
                                                                           strict=True)])
    split.to_parquet(model / "split.parquet", index=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    leaked = sabotage.copy_of(load_event_log(real_parts["train"]))
    leaked.events.to_parquet(copy / "events.parquet", index=False)
    leaked.users.to_parquet(copy / "users.parquet", index=False)
    out = tmp_path / "reports" / "leak"
    result = run("validate", "--model", model, "--data", real_parts["world"], "--synthetic", copy, "-o", out)
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["groups"]["privacy"] is False and not report["passed"]
    assert report["inputs"]["train"]["users"] == report["inputs"]["synthetic"]["users"] == 200
    assert report["differential_privacy"]["epsilon"] == 3.0
    assert "epsilon 3" in (out / "report.html").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["leak"]  # no partial directory left behind
    assert "privacy FAIL" in result.stdout and "privacy: distances" in result.stderr  # progress on stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--train", "T", "--holdout", "H", "--model", "M", "--data", "D"], "either as --train and --holdout"),
    (["--train", "T"], "either as --train and --holdout"),
    (["--train", "T", "--holdout", "H", "--response", "offer_shown"], "TRIGGER:RESPONSE"),
    (["--train", "T", "--holdout", "H", "--rare-quantile", "1.5"], "--rare-quantile"),
])
def test_cli_refuses_bad_options_with_exit_2(run, tmp_path, args, message):
    result = run("validate", *args, "--synthetic", "S", "-o", tmp_path / "out")
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_cli_names_the_input_that_is_wrong(run, real_parts, tmp_path):
    missing = run("validate", "--train", real_parts["train"], "--holdout", real_parts["holdout"], "--synthetic",
                  tmp_path / "nope", "-o", tmp_path / "out")
    assert missing.exit_code == 2 and "error: --synthetic: input path does not exist" in missing.output
    overlap = run("validate", "--train", real_parts["train"], "--holdout", real_parts["world"], "--synthetic",
                  real_parts["holdout2"], "-o", tmp_path / "out")
    assert overlap.exit_code == 2 and "--holdout shares 200 user(s) with --train" in overlap.output
    unknown = run("validate", "--train", real_parts["train"], "--holdout", real_parts["holdout"], "--synthetic",
                  real_parts["holdout2"], "--response", "offer_shown:nope", "-o", tmp_path / "out")
    assert unknown.exit_code == 2 and "--response names event type(s) ['nope']" in unknown.output
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    exists = run("validate", "--train", real_parts["train"], "--holdout", real_parts["holdout"], "--synthetic",
                 real_parts["holdout2"], "-o", tmp_path / "out")
    assert exists.exit_code == 2 and "--overwrite" in exists.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------------ any event log
def _web_shop(users: int, seed: int) -> EventLog:
    """A log with none of the reference world's vocabulary: page views and purchases on two devices."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        times = np.sort(rng.uniform(0, 60 * 86400, rng.integers(20, 60)))
        for t in times:
            buy = rng.random() < 0.2
            rows.append({"user_id": f"{seed}-{u}", "timestamp": pd.Timestamp("2025-03-01", tz="UTC")
                         + pd.Timedelta(seconds=float(t)), "event_type": "purchase" if buy else "page_view",
                         "amount": round(float(rng.lognormal(3, 1)), 2) if buy else np.nan,
                         "device": rng.choice(["ios", "android"])})
    events = pd.DataFrame(rows).astype({"event_type": "category", "device": "category"})
    return EventLog(events=events, users=None, marks=("device",), amount_types=("purchase",), event_files=())


def test_any_event_log_gets_a_report_and_tasks_it_cannot_run_say_why():
    train, holdout, synthetic = (_web_shop(40, seed) for seed in (1, 2, 3))
    report = run_validation(train, holdout, synthetic)
    assert report["compared_users"] == 40
    assert "no terminal event type" in check(report, "churn_survival")["note"]
    assert check(report, "churn_survival")["passed"] is None
    assert "no offer_shown and offer_click" in report["utility"]["response"]["reason"]
    assert check(report, "univariate_accuracy")["synthetic"] > 0.8
    named = run_validation(train, holdout, synthetic, ValidationConfig(response=("page_view", "purchase")))
    assert named["settings"]["response"] == ["page_view", "purchase"]
    assert named["utility"]["response"]["task"] == "purchase within 24 h of page_view (before the next page_view)"


# ------------------------------------------------------------------------------------------ the pieces
def test_tvd_and_ks_agree_with_their_definitions():
    assert tvd([1, 2, 3], [2, 4, 6]) == 0.0 and tvd([1, 0], [0, 1]) == 1.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.3, 1, size=200)
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    assert effective_size(np.array([0, 1, 2, 3])) == 4.0 and effective_size(np.array([0, 0, 0, 0])) == 1.0


def test_kaplan_meier_matches_a_hand_computed_curve():
    days, churned = np.array([1.0, 2, 2, 3, 4]), np.array([True, True, False, True, False])
    np.testing.assert_allclose(kaplan_meier(days, churned, np.array([0.0, 1, 2, 3, 4])), [1, 0.8, 0.6, 0.3, 0.3])


def _log(rows: list[tuple[str, str, str, str | None]]) -> Sample:
    events = pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type", "product"])
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    return Sample("t", events.astype({"event_type": "category", "product": "category"}), None)


def test_a_response_counts_within_the_window_and_before_the_next_trigger():
    sample = _log([
        ("a", "2025-01-01 10:00", "offer_shown", "card"), ("a", "2025-01-01 10:01", "offer_click", "card"),
        ("a", "2025-01-02 10:00", "offer_shown", "loan"), ("a", "2025-01-02 11:00", "offer_shown", "card"),
        ("a", "2025-01-02 12:00", "offer_click", "card"), ("a", "2025-01-05 10:00", "offer_shown", "card"),
        ("a", "2025-01-06 16:00", "offer_click", "card"), ("b", "2025-01-01 09:00", "offer_shown", "card"),
    ])
    vocab = Vocabulary(["offer_shown", "offer_click"], {"product": ["card", "loan"]}, [], [])
    features, labels, users = response_cases(sample, vocab, "offer_shown", "offer_click", 24.0)
    assert labels.tolist() == [True, False, True, False, False]
    assert users.tolist() == ["a", "a", "a", "a", "b"]
    assert features["earlier_triggers"].tolist() == pytest.approx(np.log1p([0, 1, 2, 3, 0]))
    assert features["recent_same:product"].tolist() == pytest.approx(np.log1p([0, 0, 1, 2, 0]))


def test_user_features_summarise_whole_sequences():
    sample = _log([("a", "2025-01-01 10:00", "login", None), ("a", "2025-01-03 22:00", "login", None),
                   ("a", "2025-01-04 09:00", "closed", None), ("b", "2025-01-02 10:00", "login", None)])
    vocab = Vocabulary(["login", "closed"], {"product": []}, [], ["closed"])
    f = user_features(sample, vocab)
    assert f.loc["a", "count:login"] == pytest.approx(np.log1p(2)) and f.loc["b", "count:closed"] == 0
    assert f["churned"].tolist() == [1.0, 0.0]
    assert f.loc["a", "hour:20-24"] == pytest.approx(1 / 3)


def test_identical_matches_and_dcr_share_see_copies():
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    assert identical_share(train[:10], train) == 1.0 and identical_share(holdout, train) == 0.0
    assert closer_to_train_share(train, train, holdout) == 1.0
    assert 0.3 < closer_to_train_share(rng.normal(size=(200, 4)), train, holdout) < 0.7


def test_the_fast_weighted_auc_is_sklearns():
    from sklearn.metrics import roc_auc_score

    from twinsim.models.validation.utility import _weighted_auc

    rng = np.random.default_rng(1)
    y, p, w = rng.random(300) < 0.3, np.round(rng.random(300), 2), rng.integers(0, 3, 300)
    groups = np.unique(p, return_inverse=True)[1]
    assert _weighted_auc(groups, y.astype(float), w) == pytest.approx(roc_auc_score(y, p, sample_weight=w))
