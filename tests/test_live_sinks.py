"""The live sinks against the real services on loopback (PostgreSQL, Redis, NATS JetStream) and real local
aiohttp receivers; no mocks. A service that is down fails its tests with the command that starts it."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from aiohttp import web

from twinsim.models.errors import TwinsimError
from twinsim.scenarios.policies.example_service import serve_in_thread
from twinsim.simulator.live.sinks import (
    CallableSink,
    Permanent,
    SinkError,
    event_id,
    load_template,
    open_sink,
    open_sinks,
    parse_spec,
    prometheus,
    render,
    timestamp,
)
from twinsim.simulator.live.sinks.base import require

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"
START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
             "--dir /var/lib/redis --logfile /var/log/redis/ci.log",
    "NATS": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 "
            "-js -sd /var/lib/nats-server -l /var/log/nats-server.log",
}
TYPES = ("card_payment", "login", "offer_click")


def records(n: int, users: int = 5, seed: int = 0, first: int = 0) -> list[dict]:
    """``n`` records as the engine makes them: customers u0..u{users-1}, event numbers first, first+1, ..."""
    wall = time.monotonic()
    out = []
    for k in range(first, first + n):
        user = f"u{k % users}"
        out.append({"event_id": event_id(seed, user, k), "user_id": user,
                    "timestamp": timestamp(datetime(2026, 12, 2, 14, tzinfo=UTC).replace(microsecond=k % 10**6)),
                    "event_type": TYPES[k % 3], "amount": 12.5 + k if k % 3 == 0 else None,
                    "product": "card" if k % 3 == 2 else None, "scheduled_wall": wall})
    return out


def down(service: str, error: Exception):
    """Fail (not skip) with the command that starts the service."""
    pytest.fail(f"{service} is not reachable on loopback ({type(error).__name__}: {error}); start it with:\n"
                f"  {START[service]}", pytrace=False)


# ------------------------------------------------------------------------------------ the real services


@pytest.fixture(scope="module")
def pg():
    import psycopg

    try:
        conn = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        conn, error = None, exc
    if conn is None:
        down("PostgreSQL", error)
    yield conn
    conn.close()


@pytest.fixture
def table(pg):
    name = f"twinsim_test_{uuid.uuid4().hex[:10]}"
    yield name
    pg.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(scope="module")
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS, socket_timeout=3, socket_connect_timeout=3, decode_responses=True)
    try:
        error = None if client.ping() else RuntimeError("no PONG")
    except redis.RedisError as exc:
        error = exc
    if error is not None:
        down("Redis", error)
    yield client
    client.close()


@pytest.fixture
def stream(redis_client):
    name = f"twinsim:test:{uuid.uuid4().hex[:10]}"
    yield name
    keys = [name, *redis_client.scan_iter(f"{name}:*")]
    redis_client.delete(*keys)


async def _jetstream(fn):
    import nats

    async def quiet(error):
        pass

    # max_reconnect_attempts must be > 0 for nats-py to ever give up on a server that refuses
    nc = await nats.connect(NATS, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=1,
                            reconnect_time_wait=0.2, error_cb=quiet)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def jetstream(fn):
    """``fn(js)`` on a fresh connection (the tests' own, not the sink's)."""
    return asyncio.run(_jetstream(fn))


@pytest.fixture(scope="module")
def nats_up():
    try:
        jetstream(lambda js: js.account_info())
        error = None
    except Exception as exc:  # noqa: BLE001 - any failure to reach JetStream
        error = exc
    if error is not None:
        down("NATS", error)


@pytest.fixture
def nats_stream(nats_up):
    name = f"TWINSIM_TEST_{uuid.uuid4().hex[:10].upper()}"
    yield name, f"twinsim.test.{name.lower()}"

    async def delete(js):
        from nats.js.errors import NotFoundError

        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
    jetstream(delete)


# ------------------------------------------------------------------------- specs, records and templates


def test_an_unknown_scheme_lists_the_schemes_with_examples():
    with pytest.raises(SinkError) as error:
        parse_spec("kafka://127.0.0.1:9092/events")
    message = str(error.value)
    assert "'kafka'" in message and "kafka://127.0.0.1:9092/events" in message
    for scheme in ("jsonl", "http", "https", "postgresql", "redis", "nats", "function"):
        assert scheme in message
    assert "e.g." in message and "postgresql://postgres@127.0.0.1:5432/test?table=twinsim_events" in message
    assert isinstance(error.value, TwinsimError)
    with pytest.raises(SinkError, match="unknown sink scheme '\\(none\\)'"):
        parse_spec("events.jsonl")


@pytest.mark.parametrize("spec, expected", [
    ("http://127.0.0.1:8080/events?batch=x", "option batch='x' must be an integer >= 1"),
    ("http://127.0.0.1:8080/events?batch=0", "option batch='0' must be an integer >= 1"),
    ("http://127.0.0.1:8080/events?timeout=-1", "option timeout='-1' must be a number of seconds > 0"),
    ("redis://127.0.0.1:6379/0?per_customer=yes", "option per_customer='yes' must be 0 or 1"),
    ("nats://127.0.0.1:4222?subjet=x", "unknown option 'subjet' of the nats sink; its options: batch, retries"),
    ("http://127.0.0.1:99999/events", "the port is not a number"),
    ("http:///events", "no host"),
    ("jsonl:", "nothing after 'jsonl:'"),
])
def test_bad_options_say_what_a_value_must_be(spec, expected):
    with pytest.raises(SinkError, match="e.g. --sink") as error:
        parse_spec(spec)
    assert expected in str(error.value)


def test_a_spec_parses_into_target_and_typed_options():
    parsed = parse_spec("http://127.0.0.1:8080/hook?batch=20&retries=2&backoff=0.5&timeout=1&dead_letter=d.jsonl")
    assert parsed.target == "http://127.0.0.1:8080/hook"
    assert parsed.options == {"batch": 20, "retries": 2, "backoff": 0.5, "timeout": 1.0, "dead_letter": "d.jsonl"}
    parsed = parse_spec("postgres://me:secret@db:5432/app?table=public.events&sslmode=require")
    assert parsed.target == "postgres://me:secret@db:5432/app?sslmode=require" and parsed.options["table"] == \
        "public.events"
    assert parse_spec("jsonl:-").target == "-" and parse_spec("jsonl:out/e.jsonl?batch=5").options["batch"] == 5
    assert parse_spec("redis://127.0.0.1:6379/2?per_customer=1").options["per_customer"] is True
    with pytest.raises(SinkError) as error:  # a password never shows in a message
        parse_spec("postgresql://me:secret@db/app?tabel=x")
    assert "secret" not in str(error.value) and "me:***@db" in str(error.value)


def test_event_ids_are_deterministic_per_seed_customer_and_number():
    assert event_id(7, "u42", 0) == event_id(7, "u42", 0)
    assert len({event_id(7, "u42", 0), event_id(8, "u42", 0), event_id(7, "u43", 0), event_id(7, "u42", 1)}) == 4
    assert event_id(7, "u42", 0).startswith("tw-") and len(event_id(7, "u42", 0)) == 19
    int(event_id(7, "u42", 0)[3:], 16)
    assert timestamp(datetime(2026, 12, 2, 14, 0, 0, 123456)) == "2026-12-02T14:00:00.123456Z"


def test_a_template_maps_fields_nests_and_takes_literals(tmp_path):
    record = records(1)[0]
    template = load_template('{"id": "event_id", "customer": "user_id", "ts": "timestamp", "type": "event_type", '
                             '"value": "amount", "meta": {"source": "=twinsim", "channel": "channel"}}')
    assert render(record, template) == {
        "id": record["event_id"], "customer": "u0", "ts": "2026-12-02T14:00:00.000000Z", "type": "card_payment",
        "value": 12.5, "meta": {"source": "twinsim", "channel": None}}
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    assert load_template(path) == template == load_template(str(path))
    assert render(record, None) == {k: v for k, v in record.items() if k != "scheduled_wall"}


def test_an_unknown_template_column_names_the_field_and_the_valid_columns():
    with pytest.raises(SinkError) as error:
        load_template({"id": "event_id", "meta": {"who": "customer_id"}})
    message = str(error.value)
    assert "'meta.who'" in message and "'customer_id'" in message
    assert "valid columns: event_id, user_id, timestamp, event_type, amount, product" in message
    with pytest.raises(SinkError, match="'segment'"):
        load_template({"s": "segment"})
    assert load_template({"s": "segment"}, columns=["segment"]) == {"s": "segment"}  # the model's own columns
    with pytest.raises(SinkError, match="not valid JSON"):
        load_template("{id: event_id}")
    with pytest.raises(SinkError, match="cannot read it"):
        load_template("no/such/template.json")
    with pytest.raises(SinkError, match="neither a column name"):
        load_template({"n": 3})


def test_a_missing_client_library_names_the_extra():
    with pytest.raises(SinkError, match=r"pip install 'twinsim\[live\]'"):
        require("twinsim_no_such_client", "postgres")


# ----------------------------------------------------------------------------------- jsonl and callable


def test_jsonl_writes_every_record_once_and_appends(tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    batch = records(2500)
    with open_sink(f"jsonl:{path}?batch=100") as sink:
        sink.submit(batch[:1000])
        sink.submit(batch[1000:])
        assert sink.flush(30)
        stats = sink.stats()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event_id"] for line in lines] == [r["event_id"] for r in batch]
    assert all("scheduled_wall" not in line for line in lines)
    assert stats["emitted"] == stats["acknowledged"] == 2500 and stats["failed"] == stats["pending"] == 0
    assert stats["lag_count"] == 2500 and 0 <= stats["lag_p50_s"] <= stats["lag_p99_s"] <= stats["lag_max_s"]
    with open_sink(f"jsonl:{path}", template={"id": "event_id", "src": "=twinsim"}) as sink:
        sink.submit(records(3, first=9000))
    tail = [json.loads(line) for line in path.read_text().splitlines()[2500:]]
    assert tail == [{"id": r["event_id"], "src": "twinsim"} for r in records(3, first=9000)]


def test_jsonl_to_stdout(capsys):
    with open_sink("jsonl:-") as sink:
        sink.submit(records(3))
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event_id"] for line in out] == [r["event_id"] for r in records(3)]


def test_a_callable_is_retried_then_dead_lettered(tmp_path):
    calls = []

    def flaky(payloads):
        calls.append(len(payloads))
        if len(calls) <= 2:
            raise ConnectionError("not yet")

    with CallableSink(flaky, name="hook", batch=10, backoff=0.001, dead_letter=tmp_path / "dl.jsonl") as sink:
        sink.submit(records(10))
    assert calls == [10, 10, 10] and sink.stats()["retried"] == 20 and sink.stats()["acknowledged"] == 10

    def refuse(payloads):
        raise Permanent("schema mismatch")

    with CallableSink(refuse, batch=4, dead_letter=tmp_path / "dl.jsonl") as sink:
        sink.submit(records(10))
    stats = sink.stats()
    assert stats["failed"] == 10 and stats["retried"] == 0 and stats["last_error"] == "schema mismatch"
    with pytest.raises(SinkError, match="closed"):
        sink.submit(records(1))


def test_close_dead_letters_what_it_had_no_time_to_deliver(tmp_path):
    started = threading.Event()

    def slow(payloads):
        started.set()
        time.sleep(0.3)

    sink = CallableSink(slow, batch=1, dead_letter=tmp_path / "dl.jsonl")
    sink.submit(records(5))
    assert started.wait(10)
    assert sink.close(timeout=0.05) is False
    stats = sink.stats()
    assert stats["acknowledged"] >= 1 and stats["acknowledged"] + stats["failed"] == 5 and stats["failed"] >= 3
    errors = {json.loads(line)["error"] for line in (tmp_path / "dl.jsonl").read_text().splitlines()}
    assert errors == {"not delivered before close() ran out of time"}


def test_a_record_that_cannot_be_sent_is_dead_lettered_and_the_sink_goes_on(tmp_path):
    got: list = []
    with CallableSink(got.extend, batch=2, dead_letter=tmp_path / "dl.jsonl") as sink:
        sink.submit(["not a record", records(1)[0]])  # one batch: it cannot render
        sink.submit(records(3, first=1))
    assert sink.stats()["failed"] == 2 and sink.stats()["acknowledged"] == 3 and len(got) == 3
    line = json.loads((tmp_path / "dl.jsonl").read_text().splitlines()[0])
    assert line["error"].startswith("cannot render") and line["payload"] == {"record": "'not a record'"}


# ---------------------------------------------------------------------------------------------- webhook


def receiver(received: list, fail: float = 0.0, stall: float = 0.0, stall_s: float = 1.0, status: int = 503,
             seed: int = 0) -> web.Application:
    """Keeps each batch it accepts; answers ``status`` to a share ``fail`` of requests, and to a share
    ``stall`` keeps the batch but answers only after ``stall_s`` (the sender has given up: a duplicate)."""
    rng = random.Random(seed)

    async def events(request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/json" and request.headers["X-Twinsim-Batch"]
        body = await request.json()
        draw = rng.random()
        if draw < fail:
            return web.Response(status=status)
        received.extend(body)
        if draw < fail + stall:
            await asyncio.sleep(stall_s)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/events", events)
    return app


def test_webhook_retries_503s_and_stalls_and_delivers_every_event(tmp_path):
    received: list = []
    batch = records(2000)
    with serve_in_thread(receiver(received, fail=0.2, stall=0.05, stall_s=1.0, seed=1)) as url:
        spec = f"{url}/events?batch=50&retries=10&backoff=0.01&timeout=0.3&dead_letter={tmp_path / 'dl.jsonl'}"
        with open_sink(spec) as sink:
            sink.submit(batch)
            assert sink.flush(60)
            stats = sink.stats()
    ids = [payload["event_id"] for payload in received]
    assert set(ids) == {r["event_id"] for r in batch}  # every event, deduplicated by id: once
    assert len(ids) > len(batch)  # the stalled batches arrived twice: at-least-once
    assert stats["retried"] > 0 and stats["failed"] == 0 and stats["acknowledged"] == 2000
    assert not (tmp_path / "dl.jsonl").exists()


def test_webhook_4xx_goes_to_the_dead_letters_without_retries(tmp_path):
    received: list = []
    dead = tmp_path / "dead.jsonl"
    with serve_in_thread(receiver(received, fail=1.0, status=400)) as url:
        with open_sink(f"{url}/events?batch=50&dead_letter={dead}", template={"id": "event_id"}) as sink:
            sink.submit(records(120))
            assert sink.flush(30)
            stats = sink.stats()
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [line["payload"] for line in lines] == [{"id": r["event_id"]} for r in records(120)]
    assert {line["error"] for line in lines} == {"http 400: Bad Request"} and {line["sink"] for line in lines} == \
        {"webhook"}
    assert stats["failed"] == 120 and stats["retried"] == 0 and stats["acknowledged"] == 0 and received == []


def test_submit_never_waits_for_a_stalled_receiver():
    gate, arrived, answered = threading.Event(), [], []

    async def held(request: web.Request) -> web.Response:
        arrived.append(len(await request.json()))
        while not gate.is_set():
            await asyncio.sleep(0.01)
        answered.append(arrived[len(answered)])
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/events", held)
    try:
        with serve_in_thread(app) as url, open_sink(f"{url}/events?batch=100&timeout=60") as sink:
            sink.submit(records(1))
            for _ in range(1000):  # until the first batch is in the receiver's hands
                if arrived:
                    break
                time.sleep(0.01)
            assert arrived == [1]
            sink.submit(records(10_000, first=1))
            stats = sink.stats()
            assert answered == [] and arrived == [1]  # submit returned while the receiver held the first batch
            assert stats["emitted"] == 10_001 and stats["acknowledged"] == 0
            assert stats["pending"] == 10_000 and stats["in_flight"] == 1
            gate.set()
            assert sink.flush(60)
            assert sink.stats()["acknowledged"] == 10_001 and sum(answered) == 10_001
    finally:
        gate.set()


# ------------------------------------------------------------------------------------------- PostgreSQL


def test_postgres_creates_the_table_and_is_idempotent_on_the_event_id(pg, table):
    batch = records(300)
    template = {"id": "event_id", "kind": "event_type", "src": "=twinsim"}
    with open_sink(f"{PG}?table={table}&batch=64", template=template) as sink:
        sink.submit(batch)
        assert sink.flush(30)
        sink.submit(batch[:100] + batch[:100])  # a re-run, and duplicates within one batch
        assert sink.flush(30)
        stats = sink.stats()
    assert stats["emitted"] == stats["acknowledged"] == 500 and stats["failed"] == 0
    rows = pg.execute(f"SELECT event_id, user_id, ts, event_type, amount, payload FROM {table} ORDER BY ts").fetchall()
    assert len(rows) == 300 and len({r[0] for r in rows}) == 300
    first = rows[0]
    assert first[:5] == (batch[0]["event_id"], "u0", datetime(2026, 12, 2, 14, tzinfo=UTC), "card_payment", 12.5)
    assert first[5] == {"id": batch[0]["event_id"], "kind": "card_payment", "src": "twinsim"}
    assert rows[1][4] is None


def test_postgres_write_bulk_of_20000_is_idempotent(pg, table):
    history = records(20_000, users=50)
    with open_sink(f"{PG}?table={table}") as sink:
        assert sink.write_bulk(history, chunk=7_000) == 20_000
        assert sink.write_bulk(history) == 0
        sink.submit(records(10, users=50, first=19_995))  # live emission after the backfill: 5 new
        assert sink.flush(30)
    assert pg.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {table}").fetchone() == (20_005, 20_005)


def test_postgres_reconnects_after_losing_its_connection(pg, table):
    with open_sink(f"{PG}?table={table}&backoff=0.05") as sink:
        sink.submit(records(10))
        assert sink.flush(30)
        pg.execute("SELECT pg_terminate_backend(%s)", [sink.conn.info.backend_pid])
        sink.submit(records(10, first=10))
        assert sink.flush(30)
        stats = sink.stats()
    assert stats["acknowledged"] == 20 and stats["retried"] == 10 and stats["failed"] == 0
    assert pg.execute(f"SELECT count(*) FROM {table}").fetchone() == (20,)


def test_postgres_dead_letters_a_record_without_an_event_id(table, tmp_path):
    bad = {k: v for k, v in records(1)[0].items() if k != "event_id"}
    with open_sink(f"{PG}?table={table}&dead_letter={tmp_path / 'dl.jsonl'}") as sink:
        sink.submit([bad])
    assert sink.stats()["failed"] == 1 and sink.stats()["retried"] == 0
    assert "cannot be a row" in json.loads((tmp_path / "dl.jsonl").read_text())["error"]


def test_postgres_unreachable_fails_at_open_with_the_spec():
    with pytest.raises(SinkError, match="cannot open the postgres target") as error:
        open_sink("postgresql://postgres@127.0.0.1:1/test?timeout=2")
    assert "127.0.0.1:1" in str(error.value)


# ------------------------------------------------------------------------------------------------ Redis


def test_redis_xadds_every_event_with_its_id_payload_and_flat_fields(redis_client, stream):
    batch = records(1200)
    with open_sink(f"{REDIS}?stream={stream}&batch=500") as sink:
        sink.submit(batch)
        assert sink.flush(30)
    assert redis_client.xlen(stream) == 1200
    entries = redis_client.xrange(stream, count=2)
    fields = entries[0][1]
    assert fields["event_id"] == batch[0]["event_id"] and json.loads(fields["payload"])["user_id"] == "u0"
    assert fields["event_type"] == "card_payment" and fields["amount"] == "12.5" and "product" not in fields
    assert [e[1]["event_id"] for e in redis_client.xrange(stream)] == [r["event_id"] for r in batch]


def test_redis_per_customer_streams(redis_client, stream):
    with open_sink(f"{REDIS}?stream={stream}&per_customer=1&maxlen=1000") as sink:
        sink.submit(records(100, users=4))
    assert {key: redis_client.xlen(key) for key in redis_client.scan_iter(f"{stream}:*")} == \
        {f"{stream}:u{k}": 25 for k in range(4)}
    assert redis_client.xlen(stream) == 0


# ----------------------------------------------------------------------------------------- NATS JetStream


def test_nats_dedupes_on_the_event_id_and_publishes_by_event_type(nats_stream):
    name, subject = nats_stream
    batch = records(90)
    with open_sink(f"{NATS}?stream={name}&subject={subject}&batch=40") as sink:
        sink.submit(batch)
        assert sink.flush(30)
        sink.submit(batch[:30])  # the same event ids again: JetStream drops them
        assert sink.flush(30)
        stats = sink.stats()
    assert stats["acknowledged"] == 120 and stats["failed"] == 0
    info = jetstream(lambda js: js.stream_info(name, subjects_filter=">"))
    assert info.state.messages == 90
    assert info.config.subjects == [f"{subject}.>"]
    assert info.state.subjects == {f"{subject}.{t}": 30 for t in TYPES}

    async def first(js):
        msg = await js.get_msg(name, seq=1)
        return msg.headers, json.loads(msg.data)
    headers, payload = jetstream(first)
    assert headers["Nats-Msg-Id"] == batch[0]["event_id"] and payload["event_id"] == batch[0]["event_id"]


def test_nats_unreachable_fails_at_open_with_the_spec():
    with pytest.raises(SinkError, match="cannot open the nats target") as error:
        open_sink("nats://127.0.0.1:1?timeout=1")
    assert "nats://127.0.0.1:1" in str(error.value) and "NoServersError" in str(error.value)


# ------------------------------------------------------------------------------------ metrics, open_sinks


def test_prometheus_text_holds_the_counters(tmp_path):
    sinks = open_sinks([f"jsonl:{tmp_path / 'a.jsonl'}", f"jsonl:{tmp_path / 'b.jsonl'}"])
    assert [s.name for s in sinks] == ["jsonl", "jsonl-2"]
    for sink in sinks:
        sink.submit(records(7))
        assert sink.flush(10)
    text = prometheus(sinks, {"users": 50, "speed": 60.0})
    for sink in sinks:
        sink.close()
    assert text.endswith("\n")
    assert "# TYPE twinsim_sink_acknowledged_total counter" in text
    assert "# HELP twinsim_sink_emitted_total Records submitted to the sink." in text
    for name in ("jsonl", "jsonl-2"):
        for line in (f'twinsim_sink_emitted_total{{sink="{name}"}} 7',
                     f'twinsim_sink_acknowledged_total{{sink="{name}"}} 7',
                     f'twinsim_sink_retried_total{{sink="{name}"}} 0', f'twinsim_sink_failed_total{{sink="{name}"}} 0',
                     f'twinsim_sink_pending{{sink="{name}"}} 0', f'twinsim_sink_lag_seconds_count{{sink="{name}"}} 7'):
            assert line in text.splitlines()
        assert f'twinsim_sink_lag_seconds{{sink="{name}",quantile="0.99"}} ' in text
    assert "# TYPE twinsim_sink_lag_seconds summary" in text
    assert "twinsim_live_users 50" in text and "twinsim_live_speed 60" in text
