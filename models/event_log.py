"""The event-log contract: read, validate and normalise ``events`` and an optional ``users`` table.

The contract (docs/data-contract.md):

* ``events``: required ``user_id``, ``timestamp``, ``event_type``; optional numeric ``amount``; every
  other column is a categorical *mark* (channel, merchant category, product, ...).
* ``users`` (optional): ``user_id`` plus static attributes, one row per user.
* ``context`` (optional): ``date`` plus numeric daily series that act on everyone (a macro index).

Input is Parquet or CSV, a single file or a directory of files. Anything that breaks the contract raises
:class:`~twinsim.models.errors.DataContractError` naming the file, the column, an example row and the fix.

>>> log = load_event_log("runs/demo/world")          # doctest: +SKIP
>>> log.events.dtypes["timestamp"]                    # doctest: +SKIP
datetime64[us, UTC]
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from twinsim.models.errors import DataContractError

EVENT_COLUMNS = ("user_id", "timestamp", "event_type")
AMOUNT = "amount"
SUFFIXES = (".parquet", ".pq", ".csv")
_SOURCE, _ROW = "__source_file__", "__source_row__"
_ZONE_SUFFIX = r"(?:Z|[+-]\d\d(?::?\d\d)?)$"



def utc_seconds(timestamps: pd.Series) -> np.ndarray:
    """Epoch seconds (float64, to the microsecond) of a tz-aware timestamp column."""
    return _utc_microseconds(timestamps) / 1e6


def _utc_microseconds(timestamps: pd.Series) -> np.ndarray:
    return timestamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)


DAY_S = 86_400.0
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class TimeResolution:
    """How finely a log records time: ``"second"`` (anything finer than a day), or ``"day"`` when every
    timestamp sits at one time of day: a log of dates (usually at midnight). Detected by
    :func:`detect_resolution`, stored in the model's schema and kept by everything generated from it."""

    unit: str = "second"
    time_of_day_s: float = 0.0  # with "day": seconds after UTC midnight of every timestamp

    @property
    def is_day(self) -> bool:
        return self.unit == "day"

    def snap(self, time_s: np.ndarray) -> np.ndarray:
        """With day resolution, each epoch second moved to its UTC day at the log's time of day, so output has
        dates as the log had them; unchanged otherwise. The map never decreases, so a user's events keep
        their order, and never leaves the UTC day, so daily partitions keep their events."""
        if not self.is_day:
            return time_s
        return np.floor(time_s / DAY_S) * DAY_S + self.time_of_day_s

    def nearest(self, time_s: np.ndarray) -> np.ndarray:
        """With day resolution, each epoch second moved to the nearest instant at the log's time of day: a
        sampled gap of 70 or 74 hours after a date is the date three days on (``snap`` would make the first
        two). Never decreasing, so order is kept; unchanged for a log of times."""
        if not self.is_day:
            return time_s
        return np.floor((time_s - self.time_of_day_s) / DAY_S + 0.5) * DAY_S + self.time_of_day_s

    @property
    def time_of_day(self) -> str:
        """``HH:MM:SS`` UTC (with microseconds where there are any)."""
        text = str(pd.Timedelta(seconds=self.time_of_day_s)).split(" days ")[-1]
        return text.removesuffix(".000000")

    def describe(self) -> str:
        return f"day (dates only: every event at {self.time_of_day} UTC)" if self.is_day else "second"

    def to_json(self) -> dict:
        return {"unit": self.unit, "time_of_day_s": self.time_of_day_s, "time_of_day": self.time_of_day,
                "text": self.describe()}


def detect_resolution(timestamps: pd.Series) -> TimeResolution:
    """``day`` when every timestamp is at the same time of day (to the microsecond) and there are at least two
    days (one day alone cannot tell dates from times); ``second`` otherwise. A log that mixes dates with a
    few times is ``second``: the times are real information."""
    us = _utc_microseconds(timestamps)
    if not len(us):
        return TimeResolution()
    of_day = us % _DAY_US
    if (of_day != of_day[0]).any() or np.unique(us // _DAY_US).size < 2:
        return TimeResolution()
    return TimeResolution("day", float(of_day[0]) / 1e6)


@dataclass
class EventLog:
    """A validated event log: events sorted by user and time, timestamps in UTC, categories."""

    events: pd.DataFrame
    users: pd.DataFrame | None
    marks: tuple[str, ...]
    amount_types: tuple[str, ...]
    event_files: tuple[Path, ...]
    user_files: tuple[Path, ...] = ()
    notes: list[str] = field(default_factory=list)
    context: pd.DataFrame | None = None  # one row per day: date (datetime64[D]) + numeric columns

    @property
    def attributes(self) -> tuple[str, ...]:
        """Static user attributes (columns of the users table other than ``user_id``)."""
        return () if self.users is None else tuple(c for c in self.users.columns if c != "user_id")

    @cached_property
    def resolution(self) -> TimeResolution:
        """The time resolution of the events (:func:`detect_resolution`)."""
        return detect_resolution(self.events["timestamp"])

    def of_users(self, ids: set[str]) -> EventLog:
        """The events and users table rows of the users ``ids`` (same marks, amount types and files)."""
        events = self.events[self.events["user_id"].isin(ids)].reset_index(drop=True)
        users = None if self.users is None else self.users[self.users["user_id"].isin(ids)].reset_index(drop=True)
        return EventLog(events=events, users=users, marks=self.marks, amount_types=self.amount_types,
                        event_files=self.event_files, user_files=self.user_files)


def load_event_log(
    path: str | Path, users: str | Path | None = None, context: str | Path | None = None
) -> EventLog:
    """Read and validate an event log.

    ``path`` is an events file, a directory of events files, or a dataset directory holding an
    ``events`` entry (``events.parquet``, ``events.csv`` or an ``events/`` directory) and optionally
    ``users`` and ``context`` entries. ``users`` and ``context`` override the dataset's own tables.
    """
    event_files, user_files = resolve_tables(Path(path), None if users is None else Path(users))
    context_files = _context_files(Path(path), None if context is None else Path(context))
    notes: list[str] = []
    user_table = None
    if user_files:
        user_table = _normalise_users(_read_tables(user_files, "users", ("user_id",)), user_files, notes)
    raw = _read_tables(event_files, "events", EVENT_COLUMNS)
    events, marks, amount_types = _normalise_events(raw, event_files, notes)
    if user_table is not None:
        _check_users_known(events, user_table, event_files, user_files, notes)
    events = _drop_duplicates_and_sort(events, notes)
    return EventLog(
        events=events.drop(columns=[_SOURCE, _ROW]).reset_index(drop=True),
        users=user_table,
        marks=marks,
        amount_types=amount_types,
        event_files=tuple(event_files),
        user_files=tuple(user_files),
        notes=notes,
        context=_normalise_context(_read_tables(context_files, "context", ("date",)), context_files)
        if context_files else None,
    )


# --------------------------------------------------------------------------------------- locating files
def resolve_tables(path: Path, users: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Return (events files, users files) for a file, a directory of files or a dataset directory."""
    if not path.exists():
        raise DataContractError(
            "input path does not exist",
            file=str(path),
            fix="pass an events file (.parquet or .csv), a directory of them, or a dataset directory "
            "with events.parquet (e.g. one written by `twinsim reference-world`)",
        )
    if users is not None and not users.exists():
        raise DataContractError("users table does not exist", file=str(users), fix="check the --users path")
    user_entry = users
    events_entry = path
    if path.is_dir():
        entry = _dataset_entry(path, "events")
        if entry is not None:
            events_entry = entry
            user_entry = users if users is not None else _dataset_entry(path, "users")
    return _data_files(events_entry, "events"), ([] if user_entry is None else _data_files(user_entry, "users"))


def _context_files(path: Path, context: Path | None) -> list[Path]:
    if context is not None:
        if not context.exists():
            raise DataContractError("context table does not exist", file=str(context), fix="check the context path")
        return _data_files(context, "context")
    entry = _dataset_entry(path, "context") if path.is_dir() else None
    return [] if entry is None else _data_files(entry, "context")


def _dataset_entry(directory: Path, name: str) -> Path | None:
    hits = [
        p
        for p in directory.iterdir()
        if (p.is_dir() and p.name == name) or (p.is_file() and p.stem == name and p.suffix.lower() in SUFFIXES)
    ]
    if len(hits) > 1:
        raise DataContractError(
            f"the dataset directory has more than one '{name}' table",
            file=", ".join(str(p) for p in sorted(hits)),
            fix=f"keep exactly one of {name}.parquet, {name}.csv or {name}/ in {directory}",
        )
    return hits[0] if hits else None


def _data_files(entry: Path, kind: str) -> list[Path]:
    if entry.is_file():
        if entry.suffix.lower() not in SUFFIXES:
            raise DataContractError(
                f"unsupported {kind} file type '{entry.suffix}'",
                file=str(entry),
                fix="convert it to Parquet (.parquet) or CSV (.csv)",
            )
        return [entry]
    files = sorted(
        p
        for p in entry.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith((".", "_")) for part in p.relative_to(entry).parts)
    )
    if not files:
        raise DataContractError(
            f"no {kind} files found in the directory",
            file=str(entry),
            fix="put .parquet or .csv files in it (hidden files and names starting with '_' are skipped)",
        )
    return files


# ------------------------------------------------------------------------------------------- reading
def _read_tables(files: list[Path], kind: str, required: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for i, file in enumerate(files):
        frame = _read_file(file, kind)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            hints = [
                f"'{c}' looks like '{m[0]}'"
                for c in missing
                if (m := difflib.get_close_matches(c, [str(x) for x in frame.columns], n=1, cutoff=0.5))
            ]
            raise DataContractError(
                f"{kind} table is missing required column(s) {', '.join(missing)}",
                file=str(file),
                column=", ".join(missing),
                example=f"columns found: {', '.join(map(str, frame.columns)) or '(none)'}",
                fix=f"rename or add the column(s); {kind} needs {', '.join(required)}"
                + (f" ({'; '.join(hints)})" if hints else ""),
            )
        frame[_SOURCE] = np.int32(i)
        frame[_ROW] = np.arange(len(frame), dtype=np.int64)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if table.empty:
        raise DataContractError(
            f"{kind} input is empty (no rows)",
            file=", ".join(map(str, files)),
            fix=f"pass a {kind} table with at least one row",
        )
    return table


def _read_file(file: Path, kind: str) -> pd.DataFrame:
    try:
        if file.stat().st_size == 0:
            raise DataContractError(
                f"{kind} file is empty (0 bytes)", file=str(file), fix=f"pass a {kind} table with a header and rows"
            )
        if file.suffix.lower() == ".csv":
            # Events are read as text and parsed column by column, so that a bad value can be reported
            # with its row; users keep pandas' type inference so numeric attributes stay numeric.
            dtype = str if kind == "events" else {"user_id": str}
            return pd.read_csv(file, dtype=dtype)
        return pq.read_table(file).to_pandas()
    except DataContractError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt or unreadable files
        raise DataContractError(
            f"cannot read the {kind} file: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=str(file),
            fix="check that the file is readable and is valid Parquet or CSV (with a header row)",
        ) from exc


# ----------------------------------------------------------------------------------------- validating
def _example(frame: pd.DataFrame, bad: pd.Series, files: list[Path], columns: list[str]) -> tuple[str, str]:
    """(file, 'row N: {...} (k rows like this)') for the first offending row."""
    first = frame.loc[bad].iloc[0]
    values = ", ".join(f"{c}={first[c]!r}" for c in columns if c in frame.columns)
    count = int(bad.sum())
    return str(files[int(first[_SOURCE])]), f"row {int(first[_ROW]) + 1}: {values} ({count:,} row(s) like this)"


def _fail(problem: str, frame, bad, files, column: str, shown: list[str], fix: str) -> None:
    file, example = _example(frame, bad, files, shown)
    raise DataContractError(problem, file=file, column=column, example=example, fix=fix)


def _text(series: pd.Series) -> pd.Series:
    """Values as stripped text with blanks as missing (categorical). Each distinct value is converted
    once, which keeps this fast on logs with millions of rows."""
    if pd.api.types.is_float_dtype(series) and np.all(np.mod(series.dropna(), 1) == 0):
        series = series.astype("Int64")  # integral floats (ids read from a column with gaps) lose their '.0'
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    clean = pd.Index(uniques).astype("str").str.strip()
    clean = np.append(np.asarray(clean.where(clean != ""), dtype=object), np.nan)  # code -1 -> NaN
    return pd.Series(clean[codes], index=series.index, dtype="category")


def _blank(series: pd.Series) -> pd.Series:
    """Missing values and empty / whitespace-only strings."""
    return _text(series).isna()


def _normalise_events(raw: pd.DataFrame, files: list[Path], notes: list[str]):
    frame = raw
    shown = list(EVENT_COLUMNS) + ([AMOUNT] if AMOUNT in frame else [])
    clean = {column: _text(frame[column]) for column in ("user_id", "event_type")}
    for column, what in (("user_id", "user id"), ("event_type", "event type")):
        bad = clean[column].isna()
        if bad.any():
            _fail(f"events have a missing {what}", frame, bad, files, column, shown,
                  f"every event needs a non-empty {column}; drop or repair these rows")
    frame = frame.assign(user_id=clean["user_id"].astype("str"), event_type=clean["event_type"])
    frame["timestamp"] = _parse_timestamps(frame, files, shown, notes)
    amount_types: tuple[str, ...] = ()
    if AMOUNT in frame:
        frame[AMOUNT], amount_types = _parse_amounts(frame, files, shown)
    marks = tuple(c for c in frame.columns if c not in (*EVENT_COLUMNS, AMOUNT, _SOURCE, _ROW))
    for column in marks:
        frame[column] = _as_category(frame, column, files, notes)
    return frame, marks, amount_types


def _parse_timestamps(frame: pd.DataFrame, files: list[Path], shown: list[str], notes: list[str]) -> pd.Series:
    raw = frame["timestamp"]
    missing = raw.isna()
    if missing.any():
        _fail("events have a missing timestamp", frame, missing, files, "timestamp", shown,
              "every event needs a timestamp; drop or repair these rows")
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.as_unit("us")
    if pd.api.types.is_datetime64_dtype(raw):
        notes.append("timestamps have no time zone; they were read as UTC")
        return raw.dt.tz_localize("UTC").dt.as_unit("us")
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        _fail("timestamp column is numeric; its unit and epoch are ambiguous", frame, raw.notna(), files,
              "timestamp", shown,
              "write ISO 8601 text such as 2025-03-01T09:30:00Z or a Parquet timestamp column, e.g. "
              "df['timestamp'] = pd.to_datetime(df['timestamp'], unit='s', utc=True)")
    text = raw.astype("str").str.strip()
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna()
    if bad.any():
        _fail("events have a timestamp that cannot be parsed", frame, bad, files, "timestamp", shown,
              "write timestamps in ISO 8601, e.g. 2025-03-01T09:30:00Z or 2025-03-01 09:30:00+01:00")
    if not text.str.contains(_ZONE_SUFFIX, regex=True).all():
        notes.append("some timestamps have no time zone; they were read as UTC")
    return parsed.dt.as_unit("us")


def _parse_amounts(frame: pd.DataFrame, files: list[Path], shown: list[str]) -> tuple[pd.Series, tuple[str, ...]]:
    raw = frame[AMOUNT]
    if pd.api.types.is_bool_dtype(raw):
        _fail("amount column is boolean", frame, raw.notna(), files, AMOUNT, shown,
              "amount must hold numbers such as 12.50")
    if pd.api.types.is_numeric_dtype(raw):
        amount = raw.astype("float64")
    else:
        text = raw.astype("str").str.strip()
        amount = pd.to_numeric(text.where(text != ""), errors="coerce").astype("float64")
        bad = raw.notna() & (text != "") & amount.isna() & ~text.str.lower().isin(["nan", "none", "null"])
        if bad.any():
            _fail("events have a non-numeric amount", frame, bad, files, AMOUNT, shown,
                  "write plain numbers such as 1234.50 (no currency symbols or thousands separators)")
    infinite = np.isinf(amount.to_numpy())
    if infinite.any():
        _fail("events have an infinite amount", frame, pd.Series(infinite, index=frame.index), files, AMOUNT,
              shown, "replace infinite amounts with the real value or drop these rows")
    carries = frame["event_type"][amount.notna()].unique()
    amount_types = tuple(sorted(map(str, carries)))
    missing = frame["event_type"].isin(carries) & amount.isna()
    if missing.any():
        kind = frame.loc[missing, "event_type"].iloc[0]
        _fail(f"events of type '{kind}' carry amounts, but some have a missing or NaN amount", frame, missing,
              files, AMOUNT, shown,
              "give every event of an amount-carrying type a number (use 0 if that is what it means), or drop "
              "these rows; event types without any amount may leave it empty")
    return amount, amount_types


def _as_category(frame: pd.DataFrame, column: str, files: list[Path], notes: list[str]) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_float_dtype(values):
        _fail(f"extra column '{column}' is a float; only 'amount' may be numeric", frame, values.notna(), files,
              column, [*EVENT_COLUMNS, column],
              f"drop '{column}', or if it is a category (e.g. a merchant code) write it as text or integers")
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        notes.append(f"mark column '{column}' holds numbers; it is treated as categorical")
    return _text(values)


def _normalise_users(raw: pd.DataFrame, files: list[Path], notes: list[str]) -> pd.DataFrame:
    shown = list(raw.columns.drop([_SOURCE, _ROW]))
    bad = _blank(raw["user_id"])
    if bad.any():
        _fail("users table has a missing user id", raw, bad, files, "user_id", shown,
              "every row of the users table needs a user_id; drop or repair these rows")
    users = raw.assign(user_id=_text(raw["user_id"]).astype("str"))
    attributes = [c for c in shown if c != "user_id"]
    exact = users.duplicated(subset=["user_id", *attributes])
    if exact.any():
        notes.append(f"dropped {int(exact.sum()):,} duplicated row(s) of the users table")
        users = users.loc[~exact]
    clash = users["user_id"].duplicated(keep=False)
    if clash.any():
        _fail("users table has several different rows for the same user_id", users, clash, files, "user_id",
              shown, "keep exactly one row per user_id")
    for column in attributes:
        values = users[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            users[column] = _text(values)
    return users.drop(columns=[_SOURCE, _ROW]).sort_values("user_id", kind="stable").reset_index(drop=True)


def _normalise_context(raw: pd.DataFrame, files: list[Path]) -> pd.DataFrame:
    series = [c for c in raw.columns if c not in ("date", _SOURCE, _ROW)]
    dates = pd.to_datetime(raw["date"].astype("str"), errors="coerce", format="ISO8601")
    bad = dates.isna()
    if bad.any():
        _fail("context table has a date that cannot be parsed", raw, bad, files, "date", ["date", *series],
              "write dates as YYYY-MM-DD, one row per day")
    frame = pd.DataFrame({"date": dates.dt.tz_localize(None).dt.normalize().to_numpy().astype("datetime64[D]")})
    for column in series:
        values = pd.to_numeric(raw[column], errors="coerce")
        bad = values.isna() | np.isinf(values)
        if bad.any():
            _fail(f"context column '{column}' has a missing or non-numeric value", raw, bad, files, column,
                  ["date", column], "context series must be numbers for every day; fill gaps (e.g. forward-fill)")
        frame[column] = values.astype("float64").to_numpy()
    clash = frame["date"].duplicated(keep=False)
    if clash.any():
        _fail("context table has several rows for the same date", raw, pd.Series(clash.to_numpy(), raw.index),
              files, "date", ["date"], "keep one row per date")
    return frame.sort_values("date").reset_index(drop=True)


def _check_users_known(events: pd.DataFrame, users: pd.DataFrame, files: list[Path], user_files: list[Path],
                       notes: list[str]) -> None:
    unknown = ~events["user_id"].isin(set(users["user_id"]))  # a set: far faster than isin on str columns
    if unknown.any():
        n_users = events.loc[unknown, "user_id"].nunique()
        _fail(f"{n_users:,} user(s) in the events are missing from the users table "
              f"({', '.join(map(str, user_files))})", events, unknown, files, "user_id",
              list(EVENT_COLUMNS), "add these users to the users table, or drop their events")
    idle = int((~users["user_id"].isin(set(events["user_id"].unique()))).sum())
    if idle:
        notes.append(f"{idle:,} user(s) of the users table have no events (kept)")


def _drop_duplicates_and_sort(events: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    content = [c for c in events.columns if c not in (_SOURCE, _ROW)]
    duplicated = events.duplicated(subset=content)
    if duplicated.any():
        notes.append(f"dropped {int(duplicated.sum()):,} duplicated event row(s) of {len(events):,}")
        events = events.loc[~duplicated]
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    if not ordered.index.equals(events.index):
        notes.append("events were not sorted by user_id and timestamp; they were sorted")
    return ordered
