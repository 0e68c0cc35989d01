"""The event-log contract: valid input is normalised; each kind of bad input gets a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinsim.models.errors import DataContractError
from twinsim.models.event_log import load_event_log


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def contract_error(path, users=None) -> DataContractError:
    with pytest.raises(DataContractError) as info:
        load_event_log(path, users)
    return info.value


# ------------------------------------------------------------------------------------------- valid input
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_valid_events_are_normalised_to_utc_sorted_and_categorical(tmp_path, good_events, suffix):
    log = load_event_log(write(good_events, tmp_path / f"events{suffix}"))
    ev = log.events
    assert str(ev["timestamp"].dtype) == "datetime64[us, UTC]"
    assert ev["event_type"].dtype == "category" and ev["channel"].dtype == "category"
    assert list(ev["user_id"]) == ["a", "a", "b", "b", "c"]
    # +01:00 is converted, not dropped: 12:30+01:00 is 11:30 UTC
    assert ev.loc[3, "timestamp"] == pd.Timestamp("2025-01-03T11:30:00Z")
    assert log.marks == ("channel",)
    assert log.amount_types == ("card_payment",)


def test_dataset_directory_finds_events_and_users(tmp_path, good_events, good_users):
    write(good_events, tmp_path / "events.parquet")
    write(good_users, tmp_path / "users.csv")
    log = load_event_log(tmp_path)
    assert log.attributes == ("segment", "tenure_months")
    assert log.users["segment"].dtype == "category"
    assert pd.api.types.is_integer_dtype(log.users["tenure_months"])


def test_directory_of_files_is_read_as_one_log(tmp_path, good_events):
    write(good_events.iloc[:2], tmp_path / "parts" / "day=1" / "part-0.parquet")
    write(good_events.iloc[2:], tmp_path / "parts" / "day=2" / "part-0.csv")
    (tmp_path / "parts" / "_SUCCESS.csv").write_text("ignored")
    log = load_event_log(tmp_path / "parts")
    assert len(log.events) == 5 and len(log.event_files) == 2


def test_duplicated_rows_are_dropped_with_a_count_and_unsorted_input_is_sorted(tmp_path, good_events):
    messy = pd.concat([good_events, good_events.iloc[[1, 4]]]).iloc[::-1]
    log = load_event_log(write(messy, tmp_path / "events.csv"))
    assert len(log.events) == 5
    assert any("dropped 2 duplicated event row(s) of 7" in n for n in log.notes)
    assert any("were not sorted" in n for n in log.notes)
    assert log.events.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_naive_timestamps_are_read_as_utc_with_a_note(tmp_path, good_events):
    frame = good_events.assign(timestamp=pd.to_datetime(good_events["timestamp"], utc=True).dt.tz_localize(None))
    log = load_event_log(write(frame, tmp_path / "events.parquet"))
    assert str(log.events["timestamp"].dt.tz) == "UTC"
    assert any("read as UTC" in n for n in log.notes)


# ------------------------------------------------------------------------------------------- bad input
def test_missing_required_column_names_file_column_and_suggests_the_close_match(tmp_path, good_events):
    path = write(good_events.rename(columns={"user_id": "userId"}), tmp_path / "events.csv")
    err = contract_error(path)
    assert err.file == str(path) and err.column == "user_id"
    assert "'user_id' looks like 'userId'" in err.fix
    assert "columns found: userId" in err.example


def test_unparseable_timestamp_names_the_row(tmp_path, good_events):
    good_events.loc[3, "timestamp"] = "03/01/2025 noon"
    path = write(good_events, tmp_path / "events.csv")
    err = contract_error(path)
    assert "cannot be parsed" in err.problem and err.column == "timestamp"
    assert "row 4:" in err.example and "'03/01/2025 noon'" in err.example
    assert "ISO 8601" in err.fix


def test_numeric_timestamp_is_refused_as_ambiguous(tmp_path, good_events):
    path = write(good_events.assign(timestamp=np.arange(5) * 1_700_000_000), tmp_path / "events.parquet")
    err = contract_error(path)
    assert "numeric" in err.problem and "unit='s'" in err.fix


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_null_user_id_is_refused(tmp_path, good_events, blank):
    good_events.loc[2, "user_id"] = blank
    err = contract_error(write(good_events, tmp_path / "events.parquet"))
    assert "missing user id" in err.problem and err.column == "user_id" and "row 3:" in err.example


def test_non_numeric_amount_is_refused(tmp_path, good_events):
    good_events["amount"] = good_events["amount"].astype(object)
    good_events.loc[3, "amount"] = "$40.00"
    err = contract_error(write(good_events, tmp_path / "events.csv"))
    assert "non-numeric amount" in err.problem and "'$40.00'" in err.example and "row 4:" in err.example


def test_nan_amount_on_an_amount_carrying_type_is_refused(tmp_path, good_events):
    good_events.loc[3, "amount"] = np.nan
    err = contract_error(write(good_events, tmp_path / "events.parquet"))
    assert "'card_payment' carry amounts" in err.problem and err.column == "amount" and "row 4:" in err.example


def test_events_of_users_missing_from_the_users_table_are_refused(tmp_path, good_events, good_users):
    events = write(good_events, tmp_path / "events.parquet")
    users = write(good_users[good_users.user_id != "b"], tmp_path / "users.parquet")
    err = contract_error(events, users)
    assert "1 user(s) in the events are missing from the users table" in err.problem
    assert "user_id='b'" in err.example


def test_users_table_with_conflicting_rows_for_one_user_is_refused(tmp_path, good_events, good_users):
    users = pd.concat([good_users, good_users.iloc[[0]].assign(segment="retiree")])
    err = contract_error(write(good_events, tmp_path / "e.parquet"), write(users, tmp_path / "u.csv"))
    assert "several different rows" in err.problem


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_input_is_refused(tmp_path, good_events, suffix):
    err = contract_error(write(good_events.iloc[:0], tmp_path / f"events{suffix}"))
    assert "empty" in err.problem


def test_zero_byte_file_is_refused_as_empty(tmp_path):
    (tmp_path / "events.csv").write_text("")
    assert "empty" in contract_error(tmp_path / "events.csv").problem


def test_corrupt_parquet_file_is_unreadable(tmp_path):
    (tmp_path / "events.parquet").write_bytes(b"PAR1 this is not parquet")
    err = contract_error(tmp_path / "events.parquet")
    assert "cannot read the events file" in err.problem and err.file == str(tmp_path / "events.parquet")


def test_unsupported_file_type_and_missing_path_are_refused(tmp_path):
    (tmp_path / "events.xlsx").write_text("x")
    assert "unsupported" in contract_error(tmp_path / "events.xlsx").problem
    assert "does not exist" in contract_error(tmp_path / "nope.parquet").problem


def test_error_in_second_file_names_that_file(tmp_path, good_events):
    write(good_events, tmp_path / "d" / "a.csv")
    bad = good_events.assign(timestamp="not a time")
    second = write(bad, tmp_path / "d" / "b.csv")
    err = contract_error(tmp_path / "d")
    assert err.file == str(second)


def test_float_mark_column_is_refused_with_the_fix(tmp_path, good_events):
    err = contract_error(write(good_events.assign(score=0.5), tmp_path / "events.parquet"))
    assert err.column == "score" and "only 'amount' may be numeric" in err.problem


# ------------------------------------------------------------------------------------------- properties
_event = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u1", "u2", "u3", "u4"]),
    "offset_s": st.integers(0, 10 * 86_400),
    "event_type": st.sampled_from(["login", "payment", "offer_shown"]),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_event, min_size=1, max_size=40), dup=st.integers(0, 5), seed=st.integers(0, 1000))
def test_any_valid_log_loads_sorted_deduplicated_and_complete(tmp_path, rows, dup, seed):
    frame = pd.DataFrame(rows)
    frame["timestamp"] = (pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(frame.pop("offset_s"), "s"))
    frame["amount"] = np.where(frame["event_type"] == "payment", 10.0, np.nan)
    shuffled = pd.concat([frame, frame.sample(n=min(dup, len(frame)), random_state=seed)])
    shuffled = shuffled.sample(frac=1, random_state=seed)
    log = load_event_log(write(shuffled, tmp_path / f"e{seed}.parquet"))
    expected = frame.drop_duplicates().sort_values(["user_id", "timestamp"]).reset_index(drop=True)
    got = log.events[["user_id", "timestamp", "event_type"]].astype({"event_type": str, "user_id": str})
    pd.testing.assert_frame_equal(
        got.sort_values(["user_id", "timestamp", "event_type"]).reset_index(drop=True),
        expected[["user_id", "timestamp", "event_type"]].astype(str).astype({"timestamp": got["timestamp"].dtype})
        .sort_values(["user_id", "timestamp", "event_type"]).reset_index(drop=True),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 30), bad_row=st.data(), junk=st.text(min_size=1, max_size=12).filter(lambda s: s.strip()))
def test_any_unparseable_timestamp_is_reported_with_its_row(tmp_path, n, bad_row, junk):
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)],
                          "timestamp": [f"2025-01-{1 + i % 28:02d}T10:00:00Z" for i in range(n)],
                          "event_type": "login"})
    row = bad_row.draw(st.integers(0, n - 1))
    frame.loc[row, "timestamp"] = f"x{junk}"
    with pytest.raises(DataContractError) as info:
        load_event_log(write(frame, tmp_path / "events.parquet"))
    assert f"row {row + 1}:" in info.value.example


def test_context_table_is_read_from_the_dataset_and_bad_dates_are_refused(tmp_path, good_events):
    write(good_events, tmp_path / "events.parquet")
    write(pd.DataFrame({"date": ["2025-01-02", "2025-01-01"], "macro_index": [99.0, 100.0]}),
          tmp_path / "context.csv")
    log = load_event_log(tmp_path)
    assert list(log.context.columns) == ["date", "macro_index"]
    assert log.context["macro_index"].tolist() == [100.0, 99.0]  # sorted by date
    write(pd.DataFrame({"date": ["2025-01-01", "someday"], "macro_index": [1.0, 2.0]}), tmp_path / "context.csv")
    err = contract_error(tmp_path)
    assert err.column == "date" and "row 2:" in err.example
