"""``twinsim live`` (simulator/live/): history then live emission on the real-time clock, the control API,
determinism, adding customers, and a killed run restarted from ``--state`` losing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd
import pytest

from twinsim.simulator.live.engine import CommandError, LiveConfig, LiveRun
from twinsim.simulator.live.sinks.function import CallableSink

START = "2026-03-02T08:00:00Z"
FAST = 86400.0 * 8  # a simulated day in 1/8 s: the tests are about what is emitted, not when


def collect():
    got: list[dict] = []
    return got, CallableSink(lambda records: got.extend(dict(r) for r in records), name="memory")


def live(model_dir, until, users=6, speed=FAST, state=None, control=None, start_override=None, **config):
    got, sink = collect()
    run = LiveRun(model_dir, LiveConfig(users=users, history_days=20, speed=speed, start=start_override or START,
                                        seed=5, **config), [sink], state=state)
    if control is not None:
        threading.Thread(target=control, args=(run,), daemon=True).start()
    summary = run.run(until=until)
    sink.close()
    return got, summary, run


def by_id(records):
    return {r["event_id"]: {k: v for k, v in r.items() if k != "scheduled_wall"} for r in records}


def live_only(events: dict) -> dict:
    """The events at or after START (compared as times: an event at START itself is live)."""
    return {k: v for k, v in events.items() if pd.Timestamp(v["timestamp"]) >= pd.Timestamp(START)}


def test_history_first_then_live_events_in_time_order_with_unique_ids(model_dir):
    got, summary, _ = live(model_dir, "2026-03-06")
    stamps = pd.to_datetime([r["timestamp"] for r in got], utc=True)
    history = summary["history"]
    assert history > 0 and summary["emitted"] == len(got) - history > 0
    start = pd.Timestamp(START)
    assert (stamps[:history] < start).all() and (stamps[history:] >= start).all()
    assert stamps[history:].is_monotonic_increasing
    assert stamps.max() < pd.Timestamp("2026-03-06", tz="UTC")
    assert len({r["event_id"] for r in got}) == len(got)
    assert {"event_id", "user_id", "timestamp", "event_type", "amount", "product"} <= set(got[0])


def test_the_same_seed_gives_the_same_events(model_dir):
    first, _, _ = live(model_dir, "2026-03-05")
    again, _, _ = live(model_dir, "2026-03-05")
    assert by_id(first) == by_id(again)


def test_an_imposed_offer_is_emitted_and_the_future_is_drawn_given_it(model_dir, tmp_path):
    answers = {}

    def control(run):
        time.sleep(0.3)
        run.call("pause")
        answers["state"] = run.call("customer", user_id="s0000002")
        answers["imposed"] = run.call("impose", user_id="s0000002", event_type="offer_shown",
                                      marks={"product": "savings"})
        for bad in ({"user_id": "nobody", "event_type": "login"}, {"user_id": "s0000002", "event_type": "nope"},
                    {"user_id": "s0000002", "event_type": "offer_shown", "marks": {"product": "yacht"}},
                    {"user_id": "s0000002", "event_type": "income"}):
            try:
                run.call("impose", **bad)
            except CommandError as e:
                answers.setdefault("errors", []).append((e.status, str(e)))
        run.call("resume")

    # (a quarter of the usual speed: the calls come while the run is live however loaded the machine is)
    got, summary, run = live(model_dir, "2026-03-12", speed=FAST / 4, state=tmp_path / "s", control=control)
    imposed = answers["imposed"]
    shown = [r for r in got if r["event_id"] == imposed["event_id"]]
    assert len(shown) == 1 and shown[0]["event_type"] == "offer_shown" and shown[0]["product"] == "savings"
    assert shown[0]["timestamp"] == imposed["timestamp"] and summary["imposed"] == 1
    assert {"attributes", "recent", "next", "events"} <= set(answers["state"])
    statuses = [s for s, _ in answers["errors"]]
    assert statuses == [404, 400, 400, 400]
    assert "nobody" in answers["errors"][0][1] and "yacht" in answers["errors"][2][1]
    assert "amount" in answers["errors"][3][1]
    # the same seed and the same logged call at the same simulated time: the same events (a replay of the log)
    state = json.loads((tmp_path / "s" / "live.json").read_text())
    assert [e["kind"] for e in state["log"]] == ["impose"]
    state["frontier_s"] = pd.Timestamp(START).timestamp()  # nothing acknowledged: everything live again
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "live.json").write_text(json.dumps(state))
    replay, _, _ = live(model_dir, "2026-03-12", state=tmp_path / "r")
    live_part = live_only(by_id(got))
    assert by_id(replay) == live_part
    # and without the call the customer's future differs from the offer on, nobody else's does
    plain, _, _ = live(model_dir, "2026-03-12")
    plain_live = live_only(by_id(plain))
    others = lambda events: {k: v for k, v in events.items() if v["user_id"] != "s0000002"}  # noqa: E731
    assert others(plain_live) == others(live_part)
    assert {k: v for k, v in plain_live.items() if v["user_id"] == "s0000002"} != \
        {k: v for k, v in live_part.items() if v["user_id"] == "s0000002"}


def test_added_customers_leave_the_others_unchanged(model_dir):
    added = {}

    def control(run):
        time.sleep(0.3)
        added.update(run.call("add", count=2, where={"segment": "student"}))

    got, summary, run = live(model_dir, "2026-03-08", speed=FAST / 4, control=control)
    plain, _, _ = live(model_dir, "2026-03-08")
    assert added["added"] == ["s0000006", "s0000007"] and summary["customers"] == 8
    students = {c["user_id"]: c["segment"] for c in run._do_customers()}
    assert students["s0000006"] == students["s0000007"] == "student"
    assert {k: v for k, v in by_id(got).items() if v["user_id"] not in added["added"]} == by_id(plain)
    newcomers = [r for r in got if r["user_id"] in added["added"]]
    assert newcomers and min(r["timestamp"] for r in newcomers) < added["joined"]  # their history came too


def test_a_jump_ends_at_the_customers_next_event_of_that_type_and_the_clock_controls(model_dir):
    seen = {}

    def control(run):
        time.sleep(0.2)
        seen["speed"] = run.call("speed", speed=1000.0)
        seen["before"] = run.call("clock")
        seen["jump"] = run.call("jump", user_id="s0000001", event_type="login", timeout=120)
        seen["after"] = run.call("clock")
        seen["stop"] = run.call("stop")

    got, summary, _ = live(model_dir, "2026-06-01", control=control)
    jump = seen["jump"]
    assert seen["speed"]["speed"] == 1000.0 and not seen["after"]["jumping"]
    event = jump["event"]
    assert event["user_id"] == "s0000001" and event["event_type"] == "login" and event["timestamp"] >= \
        seen["before"]["now"]
    logins = [r for r in got if r["user_id"] == "s0000001" and r["event_type"] == "login"
              and seen["before"]["now"] <= r["timestamp"] < event["timestamp"]]
    assert not logins  # it was the next one
    assert jump["now"] == event["timestamp"]  # and the clock stopped jumping at it
    assert summary["now"] < "2026-06-01"  # stopped by the call, long before --until


def test_the_control_api_over_http(model_dir, tmp_path):
    from twinsim.simulator.live.control import serve

    got, sink = collect()
    run = LiveRun(model_dir, LiveConfig(users=4, history_days=10, speed=3600.0, start=START, seed=5), [sink])
    run.backfill()

    def request(base, path, body=None, method=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    results = {}
    with serve(run, "127.0.0.1", 0) as base:
        def client():
            try:
                calls()
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                results["error"] = repr(e)
            finally:
                results["stop"] = request(base, "/stop", {})

        def calls():
            time.sleep(0.3)
            results["customers"] = request(base, "/customers")
            results["one"] = request(base, "/customers/s0000001")
            results["impose"] = request(base, "/customers/s0000001/events",
                                        {"event_type": "offer_shown", "product": "travel_card"})
            results["unknown"] = request(base, "/customers/zzz/events", {"event_type": "login"})
            results["not json"] = request(base, "/customers/s0000001/events", b"{oops")
            results["bad speed"] = request(base, "/speed", {"speed": -1})
            results["metrics"] = request(base, "/metrics")

        threading.Thread(target=client, daemon=True).start()
        run.run(for_s=600)  # (a bound, not a timing: the client stops the run when it is done)
    sink.close()
    assert "error" not in results, results.get("error")
    status, text = results["customers"]
    assert status == 200 and [c["user_id"] for c in json.loads(text)] == [f"s000000{i}" for i in range(4)]
    assert results["one"][0] == 200 and json.loads(results["one"][1])["user_id"] == "s0000001"
    status, text = results["impose"]
    assert status == 201
    assert json.loads(text)["event_id"] in {r["event_id"] for r in got if r["event_type"] == "offer_shown"}
    assert results["unknown"][0] == 404 and "zzz" in results["unknown"][1]
    assert results["not json"][0] == 400 and "not JSON" in results["not json"][1]
    assert results["bad speed"][0] == 400 and "speed" in results["bad speed"][1]
    assert results["metrics"][0] == 200 and 'twinsim_sink_acknowledged_total{sink="memory"}' in results["metrics"][1]
    assert "twinsim_live_emitted_total" in results["metrics"][1] and results["stop"][0] == 200


def test_a_control_api_off_loopback_needs_a_token(model_dir):
    from twinsim.models.errors import TwinsimError
    from twinsim.simulator.live.control import serve

    run = LiveRun(model_dir, LiveConfig(users=1, history_days=1, start=START), [])
    with pytest.raises(TwinsimError, match="token"), serve(run, "0.0.0.0", 0):
        pass


def test_a_killed_run_restarted_from_its_state_loses_nothing(model_dir, tmp_path):
    """A run killed (SIGKILL) mid-stream and started again with --state: after de-duplication by id, the
    file holds exactly the events of an uninterrupted run."""
    out, state = tmp_path / "events.jsonl", tmp_path / "state"
    command = [sys.executable, "-m", "twinsim.cli", "live", str(model_dir), "--users", "5", "--history-days", "10",
               "--speed", "200000", "--start", START, "--until", "2026-04-15", "--seed", "5", "--sink",
               f"jsonl:{out}", "--state", str(state), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    for _ in range(600):  # until it is streaming live and has saved a frontier
        time.sleep(0.1)
        if (state / "live.json").exists() and json.loads((state / "live.json").read_text())["frontier_s"] > \
                pd.Timestamp(START).timestamp() + 86400:
            break
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = len(out.read_text().splitlines())
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    restarted = [json.loads(line) for line in out.read_text().splitlines()]
    reference = tmp_path / "reference.jsonl"
    whole = subprocess.run([*command[:command.index("--sink") + 1], f"jsonl:{reference}", "--quiet"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    assert 0 < killed_at < len(restarted)
    assert by_id(restarted) == by_id(expected)  # nothing lost, nothing new; repeats only with the same ids
    assert len(restarted) >= len(expected)


def test_history_and_live_into_postgres_and_a_failing_webhook_hold_each_event_once(model_dir, tmp_path):
    """The CLI end to end against the real PostgreSQL and a local receiver that answers 503 to a fifth of the
    batches and stalls another twentieth past the timeout: after de-duplication by id, both hold exactly the
    events of the JSONL reference sink, history included."""
    import uuid
    import zlib

    import psycopg
    from aiohttp import web
    from click.testing import CliRunner

    from twinsim.cli import main
    from twinsim.scenarios.policies.example_service import serve_in_thread

    received: list[dict] = []
    requests = [0]

    async def events(request: web.Request) -> web.Response:
        body = await request.json()
        requests[0] += 1  # (a retry is a new request: it draws again)
        draw = zlib.crc32(json.dumps(body).encode() + str(requests[0]).encode()) % 100
        if draw < 20:
            return web.json_response({"error": "try again"}, status=503)
        if draw < 25:
            await __import__("asyncio").sleep(2.0)
        received.extend(body)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/events", events)
    table = f"twinsim_live_test_{uuid.uuid4().hex[:10]}"
    url = "postgresql://postgres@127.0.0.1:5432/test"
    reference = tmp_path / "all.jsonl"
    try:
        with serve_in_thread(app) as base:
            result = CliRunner().invoke(main, [
                "live", str(model_dir), "--users", "4", "--history-days", "15", "--speed", str(FAST), "--start",
                START, "--until", "2026-03-09", "--seed", "5", "--quiet", "--sink", f"jsonl:{reference}",
                "--sink", f"{url}?table={table}", "--sink",
                f"{base}/events?batch=25&retries=10&backoff=0.01&timeout=0.5&dead_letter={tmp_path / 'dead.jsonl'}"])
            assert result.exit_code == 0, result.output
        with psycopg.connect(url) as conn:
            rows = dict(conn.execute(f"SELECT event_id, event_type FROM {table}").fetchall())
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    expected = {r["event_id"]: r for r in map(json.loads, reference.read_text().splitlines())}
    assert len(expected) > 50
    assert rows == {k: v["event_type"] for k, v in expected.items()}  # idempotent on the id: each once
    assert {r["event_id"] for r in received} == set(expected) and not (tmp_path / "dead.jsonl").exists()
    assert len(received) >= len(expected)  # repeats only where a stalled batch was sent again
    assert requests[0] > len(received) / 25  # some requests failed and were retried


def test_a_logs_customers_go_live_with_their_own_events_first_then_the_gap_then_live(model_dir, small_world):
    """--history: the log's events of each customer come first (numbered from 0, exactly the log's), then the
    model continues the silence after the log's observation up to the start (also history), then live."""
    from twinsim.models.errors import TwinsimError
    from twinsim.models.event_log import load_event_log

    log = load_event_log(small_world).events  # 120 days from 2025-01-01: observed until 2025-05-01
    got, summary, run = live(model_dir, "2025-05-20", users=3, history=str(small_world),
                             start_override="2025-05-10T00:00:00Z")
    ids = [str(u) for u in run.groups[0].user_ids]
    known = log[log["user_id"].astype(str).isin(ids)]
    history = got[:summary["history"]]
    from_log = [r for r in history if r["timestamp"] < "2025-05-01"]
    assert len(from_log) == len(known) and {r["user_id"] for r in from_log} == set(ids)
    assert sorted(r["timestamp"][:19] for r in from_log) == sorted(
        pd.DatetimeIndex(known["timestamp"]).strftime("%Y-%m-%dT%H:%M:%S"))
    gap = [r for r in history if r["timestamp"] >= "2025-05-01"]
    assert gap and all(r["timestamp"] < "2025-05-10" for r in gap)  # the silence after the log, continued
    assert all(r["timestamp"] >= "2025-05-10" for r in got[summary["history"]:])
    with pytest.raises(TwinsimError, match="observed until"):
        LiveRun(model_dir, LiveConfig(users=3, history=str(small_world), start="2025-04-01"), []).backfill()
