"""``postgresql://USER@HOST:PORT/DB?table=twinsim_events``: rows in a PostgreSQL table (psycopg 3).

The table is created if missing: ``event_id text PRIMARY KEY, user_id text, ts timestamptz, event_type text,
amount double precision, payload jsonb`` (the rendered payload). Each batch is COPYed into a temporary
table and moved over with ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` in one transaction, so the sink
is idempotent on the event id: a retried or re-run batch leaves each event once. :meth:`PostgresSink.write_bulk`
does the same for a history backfill, in large chunks, on the caller's thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice

from twinsim.simulator.live.sinks.base import (
    RETRY_OPTIONS,
    Option,
    Permanent,
    Sink,
    batch_option,
    describe,
    redact,
    require,
    text,
    timeout_option,
)
from twinsim.simulator.live.sinks.records import SinkError, dumps, render

COLUMNS = ("event_id", "user_id", "ts", "event_type", "amount", "payload")
STAGE = "twinsim_stage"  # a temporary table per connection
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def row(record: dict, payload: dict) -> tuple:
    amount = record.get("amount")
    return (record["event_id"], None if record.get("user_id") is None else str(record["user_id"]),
            record.get("timestamp"), record.get("event_type"), None if amount is None else float(amount),
            dumps(payload))


class PostgresSink(Sink):
    """Inserts each batch into ``table`` (``name`` or ``schema.name``) of the database at ``url``."""

    kind = "postgres"
    OPTIONS = (batch_option(500), *RETRY_OPTIONS,
               Option("table", text, "twinsim_events", "the table (created if missing), e.g. twinsim_events"),
               timeout_option(10.0, "connecting"))
    PASSTHROUGH = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "target_session_attrs")
    EXAMPLE = "postgresql://postgres@127.0.0.1:5432/test?table=twinsim_events"

    def __init__(self, url: str, name: str | None = None, template=None, *, table: str = "twinsim_events",
                 timeout: float = 10.0, **options) -> None:
        self.psycopg = require("psycopg", "postgres")
        if not all(IDENTIFIER.fullmatch(part) for part in table.split(".")) or table.count(".") > 1:
            raise SinkError(f"--sink {redact(url)}: table={table!r} is not a table name (letters, digits, _; "
                            "optionally schema.table), e.g. ?table=twinsim_events")
        self.url, self.timeout = url, timeout
        sql = self.psycopg.sql
        self.table = sql.Identifier(*table.split("."))
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        self._create = sql.SQL("CREATE TABLE IF NOT EXISTS {} (event_id text PRIMARY KEY, user_id text, "
                               "ts timestamptz, event_type text, amount double precision, payload jsonb)"
                               ).format(self.table)
        self._stage = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} EXCLUDING ALL) ON COMMIT DELETE ROWS"
                              ).format(sql.Identifier(STAGE), self.table)
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(STAGE), columns)
        self._move = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (event_id) DO NOTHING"
                             ).format(self.table, columns, columns, sql.Identifier(STAGE))
        self.conn = None
        super().__init__(redact(url), name, template, **options)

    def connect(self):
        """A new autocommit connection with the table and the staging table in place."""
        conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, round(self.timeout)))
        try:
            conn.execute(self._create)
            conn.execute(self._stage)
        except BaseException:
            conn.close()
            raise
        return conn

    def insert(self, conn, rows: Iterable[tuple]) -> int:
        """COPY ``rows`` into the staging table and move the new ones over, in one transaction; returns
        how many were inserted (the rest were there already)."""
        with conn.transaction(), conn.cursor() as cursor:
            with cursor.copy(self._copy) as copy:
                for values in rows:
                    copy.write_row(values)
            cursor.execute(self._move)
            return cursor.rowcount

    def open(self) -> None:
        self.conn = self.connect()

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        try:
            rows = list(map(row, records, payloads))
        except (KeyError, TypeError, ValueError) as exc:
            raise Permanent(f"a record cannot be a row of {self.table.as_string()}: {describe(exc)}") from exc
        if self.conn is None or self.conn.closed:
            self.conn = self.connect()
        try:
            self.insert(self.conn, rows)
        except (self.psycopg.OperationalError, self.psycopg.InterfaceError):
            raise  # connection trouble: reconnect (recover) and retry
        except self.psycopg.Error as exc:
            raise Permanent(f"postgres rejected the batch: {str(exc).strip().splitlines()[0]}") from exc

    def recover(self, error: Exception) -> None:
        if self.conn is not None and (self.conn.broken or isinstance(error, self.psycopg.OperationalError)):
            self.conn.close()
            self.conn = None

    def shutdown(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def write_bulk(self, records: Iterable[dict], chunk: int = 100_000) -> int:
        """Backfill ``records`` (e.g. the customers' history) before live emission: COPY in chunks of
        ``chunk`` records, one transaction each, idempotent on the event id like live delivery; runs on the
        caller's thread over its own connection and bypasses the queue and counters. Returns how many rows
        were new."""
        inserted = 0
        with self.connect() as conn:
            for part in _chunks(records, chunk):
                inserted += self.insert(conn, (row(record, render(record, self.template)) for record in part))
        return inserted


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while part := list(islice(iterator, size)):
        yield part
