"""The live run: customers with a past, then a future that keeps arriving in (accelerated) real time.

:class:`LiveRun` first samples every customer's ``history_days`` of past and writes it to the sinks in bulk;
then its loop runs on a :class:`~twinsim.simulator.live.clock.LiveClock` (SimPy's real-time environment,
``speed`` simulated seconds per wall second, starting at the present moment or ``start``). Every tick
(``tick_s`` wall seconds) it applies the control commands that arrived, advances every group of customers to
the end of the tick, and emits each drawn event when its simulated time comes (an open model: a slow sink
falls behind on its own queue and never holds up the schedule; lateness against the schedule is measured).

Control commands (``control.py`` turns HTTP requests into them; Python callers use :meth:`LiveRun.call`)
are applied on the loop's thread at a tick boundary, so nothing already drawn is ever rewritten: an imposed
event happens at that boundary and the customer's future is drawn given it. Commands that change events
(impose, add customers) are logged with the simulated time they took effect; with ``state`` (a directory)
the log and the *acknowledged frontier* (every event before it is confirmed by every sink) are saved, and a
restart replays the log without emitting, then emits from the frontier on: events after it come again
with the same ids (at-least-once; consumers de-duplicate on ``event_id``).
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.models.errors import TwinsimError
from twinsim.models.model_dir import load_model, read_table
from twinsim.models.profile import without_profile
from twinsim.simulator.cohort import DAY_S, Loaded
from twinsim.simulator.engine import model_hash
from twinsim.simulator.live.clock import LiveClock
from twinsim.simulator.live.customers import Group, Imposed, check_imposed, draw_customers, iso, records, rows_of
from twinsim.simulator.live.sinks.records import event_id
from twinsim.simulator.population import Population, as_utc, history_population

FAST_TICK_S = 3600.0  # simulated seconds per tick while jumping ahead
GROUP_WALL_S = 0.001  # events due within this many wall seconds of each other are emitted together
LATENESS_WINDOW = 10_000  # emissions whose lateness the percentiles are taken over
JUMP_LIMIT_DAYS = 400  # a jump to a customer's next event of a type gives up after this many simulated days


@dataclass
class LiveConfig:
    """A live run: ``users`` new customers (``where``: attribute values, e.g. ``{"segment": ["student"]}``),
    each with ``history_days`` of past before ``start`` (default: now), or the customers of the event log
    ``history`` (its events, then the model's continuation of the silence after them up to ``start``); then
    live at ``speed``."""

    users: int | None = 50  # with ``history``: the first N of the log's customers (None: all)
    where: dict[str, list[str]] = field(default_factory=dict)
    history_days: int = 365
    history: str | None = None  # an event log whose customers go live (their past: the log, then the gap)
    speed: float = 60.0
    start: str | None = None
    seed: int = 0
    tick_s: float = 0.05

    def validate(self) -> None:
        if self.users is not None and self.users < 1:
            raise TwinsimError(f"--users must be at least 1 (got {self.users}); e.g. --users 50")
        if self.history is None and self.users is None:
            raise TwinsimError("give --users N (new customers) or --history LOG (a log's customers)")
        if self.history is not None and self.where:
            raise TwinsimError("--where draws new customers; with --history the customers are the log's: leave "
                               "--where out (or cut the log first)")
        if self.history_days < 0:
            raise TwinsimError(f"--history-days must be >= 0 (got {self.history_days}); e.g. --history-days 365")
        if not self.speed > 0:
            raise TwinsimError(f"--speed must be positive: simulated seconds per wall second (got {self.speed}); "
                               "e.g. --speed 60 (a minute a second) or --speed 1 (real time)")
        if not 0 < self.tick_s <= 1:
            raise TwinsimError(f"tick_s must be in (0, 1] wall seconds (got {self.tick_s})")

    def identity(self) -> dict:
        """What a restart must share with the run it continues (speed and tick may change)."""
        return {k: v for k, v in asdict(self).items() if k not in ("speed", "tick_s")}


class CommandError(TwinsimError):
    """A control request that cannot be done; ``status`` is its HTTP status (400, 404, 409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Command:
    kind: str
    args: dict
    future: Future


class LiveRun:
    """See the module's docstring. ``sinks``: objects with ``submit(records)``, ``flush(timeout)``,
    ``close(timeout)``, ``stats()`` and optionally ``write_bulk(records)`` (``sinks/``)."""

    def __init__(self, model_dir: str | Path, config: LiveConfig, sinks: list, state: str | Path | None = None,
                 on_progress: Callable[[dict], None] | None = None) -> None:
        config.validate()
        self.model_dir, self.config, self.sinks = Path(model_dir), config, list(sinks)
        model, schema, _ = load_model(self.model_dir)
        self.schema = schema
        self.loaded = Loaded(model, schema, read_table(self.model_dir, "context"))
        self.on_progress = on_progress
        self.state_dir = None if state is None else Path(state)
        self.model_sha256 = model_hash(self.model_dir)
        start = as_utc(config.start) if config.start else pd.Timestamp(int(time.time()), unit="s", tz="UTC")
        self.start_s = start.timestamp()
        self.groups: list[Group] = []
        self.joined: list[dict] = []  # per group: first index, count, where, joined_s
        self.log: list[dict] = []  # commands that changed events, with the simulated time they took effect
        self.pending_log: deque[dict] = deque()  # a restart's logged commands still to apply (at their times)
        self.commands: queue.Queue[_Command] = queue.Queue()
        self.frontier_s = self.start_s
        self.resume_from: float | None = None
        self.clock: LiveClock | None = None
        self.paused = self.stopping = False
        self.jump: dict | None = None  # {"to_s"} or {"user_id", "event_type", "limit_s"}, with its future
        self.counts = {"emitted": 0, "history": 0, "imposed": 0, "added": 0, "ticks": 0}
        self.lateness: deque[float] = deque(maxlen=LATENESS_WINDOW)
        self.sent: deque[tuple[int, float]] = deque()  # (records submitted so far, latest time among them)
        self._saved_at = self._progress_at = 0.0
        self._answering: Future | None = None  # the command being applied (a jump answers when it ends)
        self._load_state()

    # -- the public API ----------------------------------------------------------------------------------------
    def call(self, kind: str, timeout: float | None = 30.0, **args):
        """Run a control command on the loop's thread and return its answer (raises :class:`CommandError`).
        Kinds: ``customers``, ``customer`` (user_id), ``impose`` (user_id, event_type, marks, amount), ``add``
        (count, where), ``pause``, ``resume``, ``speed`` (speed), ``jump`` (to, or user_id + event_type),
        ``clock``, ``stop``."""
        future: Future = Future()
        self.commands.put(_Command(kind, args, future))
        return future.result(timeout)

    def backfill(self) -> int:
        """Sample the first customers' past up to the start and write it to every sink; returns the events."""
        if not self.groups:
            self._add_group(self.config.users, self.config.where, self.start_s, write=self.resume_from is None)
        return self.counts["history"]

    def run(self, for_s: float | None = None, until: str | None = None) -> dict:
        """Live until ``for_s`` wall seconds have passed, the simulated time ``until`` (ISO date or time), or a
        ``stop`` command; then flush the sinks (and save the state). Returns :meth:`summary`."""
        self.backfill()
        until_s = None if until is None else as_utc(until).timestamp()
        deadline = None if for_s is None else time.monotonic() + for_s
        now = self.resume_from if self.resume_from is not None else self.start_s
        self._replay_to(now)
        self.clock = LiveClock(now, self.config.speed)
        try:
            self.clock.run(until=self.clock.process(self._loop(until_s, deadline)))
        finally:
            self._finish()
        return self.summary()

    def summary(self) -> dict:
        late = np.fromiter(self.lateness, float, len(self.lateness))
        alive = sum(int(g.alive().sum()) for g in self.groups)
        now = self.clock.now if self.clock is not None else self.start_s
        return {"now": iso(now), "speed": self.clock.speed if self.clock else self.config.speed,
                "paused": self.paused, "customers": sum(len(g.members) for g in self.groups), "active": alive,
                **self.counts, "frontier": iso(self.frontier_s),
                "lateness_p50_s": float(np.percentile(late, 50)) if len(late) else None,
                "lateness_p99_s": float(np.percentile(late, 99)) if len(late) else None,
                "lateness_max_s": float(late.max()) if len(late) else None,
                "sinks": [s.stats() for s in self.sinks]}

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self, until_s: float | None, deadline: float | None):
        clock, config = self.clock, self.config
        while not self.stopping:
            self._apply_commands()
            if self.stopping:
                break
            self._apply_logged()
            step = FAST_TICK_S if clock.fast else config.tick_s * clock.speed
            horizon = clock.now + step
            for limit in (until_s, self._jump_to(), self.pending_log[0]["at_s"] if self.pending_log else None):
                if limit is not None and limit > clock.now:
                    horizon = min(horizon, limit)
            frame = self._advance(horizon)
            self._check_jump(frame)
            yield from self._emit(frame)
            self._end_jump()  # (a jump to an event ends with it: the rest of the tick keeps the schedule)
            if horizon > clock.now:
                yield clock.timeout(horizon - clock.now)
            self.counts["ticks"] += 1
            self._end_jump()
            self._apply_logged()
            self._housekeeping()
            if until_s is not None and clock.now >= until_s:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break

    def _advance(self, horizon_s: float) -> pd.DataFrame:
        frames = [g.advance(horizon_s) for g in self.groups]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        return frame.sort_values("time_s", kind="stable", ignore_index=True)

    def _emit(self, frame: pd.DataFrame):
        """Each event at its simulated time, together with those due within ``GROUP_WALL_S`` of it."""
        if not len(frame):
            return
        clock = self.clock
        times = frame["time_s"].to_numpy()
        every = records(frame, self.schema)  # once per tick: a frame's conversion costs more than its rows
        window = GROUP_WALL_S * clock.speed
        i = 0
        while i < len(times):
            if clock.fast:
                self._end_jump()  # (a jump to an event ends once it is out: what follows keeps the schedule)
            j = int(np.searchsorted(times, times[i] + (window if not clock.fast else 0.0), side="right"))
            if times[i] > clock.now:
                yield clock.timeout(times[i] - clock.now)
            batch = every[i:j]
            wall = time.monotonic()
            for t, record in zip(times[i:j], batch, strict=True):
                due = clock.wall_of(float(t))
                record["scheduled_wall"] = None if clock.fast else due
                if not clock.fast:
                    self.lateness.append(max(0.0, wall - due))
            self._submit(batch, float(times[j - 1]))
            i = j

    def _submit(self, batch: list[dict], latest_s: float) -> None:
        for sink in self.sinks:
            sink.submit(batch)
        self.counts["emitted"] += len(batch)
        self.sent.append((self.counts["emitted"], latest_s))
        for group in self.groups:
            group.remember(batch)

    # -- commands ------------------------------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        while True:
            try:
                command = self.commands.get(timeout=0.05) if self.paused else self.commands.get_nowait()
            except queue.Empty:
                if self.paused and not self.stopping:
                    continue
                return
            self._answering = command.future
            try:
                answer = getattr(self, f"_do_{command.kind}")(**command.args)
            except AttributeError:
                command.future.set_exception(CommandError(f"unknown command {command.kind!r}", 404))
            except CommandError as e:
                command.future.set_exception(e)
            except KeyError as e:
                command.future.set_exception(CommandError(str(e.args[0]), 404))
            except TwinsimError as e:
                command.future.set_exception(CommandError(str(e), 400))
            except Exception as e:  # noqa: BLE001 - the caller gets it; the run goes on
                command.future.set_exception(e)
            else:
                if self.jump is not None and self.jump.get("future") is command.future:
                    continue  # answered when the jump ends
                command.future.set_result(answer)

    def _do_customers(self) -> list[dict]:
        out = []
        for g in self.groups:
            alive = g.alive()
            for row, user in enumerate(g.user_ids):
                out.append({"user_id": str(user), **_attributes(g, row),
                            "active": bool(alive[row]), "events": int(g.counts[row])})
        return out

    def _do_customer(self, user_id: str) -> dict:
        group, row = rows_of(self.groups, user_id)
        return {"user_id": user_id, "attributes": _attributes(group, row),
                "active": bool(group.alive()[row]), "events": int(group.counts[row]),
                "recent": list(group.recent[row]), "next": group.pending(row), "now": iso(self.clock.now)}

    def _do_impose(self, user_id: str, event_type: str, marks: dict | None = None, amount: float | None = None,
                   _at_s: float | None = None) -> dict:
        event = Imposed(user_id, event_type, dict(marks or {}), amount)
        group, row = rows_of(self.groups, user_id)
        check_imposed(event, self.schema)
        if not group.alive()[row]:
            raise CommandError(f"customer {user_id!r} has ended (closed their account); impose on an active one "
                               "(GET /customers shows 'active')", 409)
        at_s = self.clock.now if _at_s is None else _at_s
        group.impose(row, event, at_s)
        self.counts["imposed"] += 1
        if _at_s is None:
            self._log({"kind": "impose", "at_s": at_s, "user_id": user_id, "event_type": event_type,
                       "marks": event.marks, "amount": amount})
        return {"user_id": user_id, "event_type": event_type, "marks": event.marks, "amount": amount,
                "timestamp": iso(group.cohort.roll.pending["t_next"][row]),
                "event_id": event_id(self.config.seed, user_id, int(group.counts[row]))}

    def _do_add(self, count: int, where: dict | None = None, _at_s: float | None = None) -> dict:
        if not isinstance(count, int) or count < 1:
            raise CommandError(f"count must be an integer >= 1 (got {count!r}); e.g. {{\"count\": 5}}")
        where = {k: [v] if isinstance(v, str) else list(v) for k, v in (where or {}).items()}
        at_s = self.clock.now if _at_s is None else _at_s
        group = self._add_group(count, where, at_s, write=_at_s is None)
        if _at_s is None:
            self._log({"kind": "add", "at_s": at_s, "count": count, "where": where})
        return {"added": [str(u) for u in group.user_ids], "joined": iso(at_s)}

    def _do_pause(self) -> dict:
        self.paused = True
        return self._do_clock()

    def _do_resume(self) -> dict:
        self.paused = False
        self.clock.rebase()
        return self._do_clock()

    def _do_speed(self, speed: float) -> dict:
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0:
            raise CommandError(f"speed must be a positive number (got {speed!r}); e.g. {{\"speed\": 3600}}")
        self.clock.rebase(float(speed))
        return self._do_clock()

    def _do_jump(self, to: str | None = None, user_id: str | None = None, event_type: str | None = None) -> dict:
        if self.jump is not None:
            raise CommandError("a jump is already under way; wait for it to end", 409)
        future = self._current_future()
        if to is not None:
            try:
                to_s = as_utc(to).timestamp()
            except ValueError:
                raise CommandError(f"to {to!r} is not a time; e.g. {{\"to\": \"2026-12-24T09:00:00Z\"}}") from None
            if to_s <= self.clock.now:
                raise CommandError(f"to {to!r} is not after now ({iso(self.clock.now)}); jumps go forward only")
            self.jump = {"to_s": to_s, "future": future}
        elif user_id is not None and event_type is not None:
            rows_of(self.groups, user_id)
            if event_type not in self.schema.event_types:
                raise CommandError(f"event_type {event_type!r} is not an event type of the model; one of "
                                   f"{self.schema.event_types}")
            self.jump = {"user_id": user_id, "event_type": event_type, "future": future,
                         "limit_s": self.clock.now + JUMP_LIMIT_DAYS * DAY_S}
        else:
            raise CommandError('give "to" (a time) or "user_id" and "event_type" (that customer\'s next such event); '
                               'e.g. {"user_id": "s0000003", "event_type": "income"}')
        self.clock.set_fast(True)
        return None

    def _do_clock(self) -> dict:
        return {"now": iso(self.clock.now), "speed": self.clock.speed, "paused": self.paused,
                "jumping": self.jump is not None}

    def _do_stop(self) -> dict:
        self.stopping = True
        return self._do_clock()

    def _do_status(self) -> dict:
        return self.summary()

    # -- jumps -----------------------------------------------------------------------------------------------------
    def _current_future(self) -> Future | None:
        return self._answering

    def _jump_to(self) -> float | None:
        if self.jump is None:
            return None
        return self.jump.get("to_s", self.jump.get("limit_s"))

    def _check_jump(self, frame: pd.DataFrame) -> None:
        """A jump to a customer's next event of a type ends at that event, once it has been drawn."""
        jump = self.jump
        if jump is None or "user_id" not in jump or not len(frame):
            return
        hit = frame[(frame["user_id"].astype(str) == jump["user_id"])
                    & (frame["event_type"].astype(str) == jump["event_type"])]
        if len(hit):
            jump["to_s"] = float(hit["time_s"].iloc[0])
            jump["event"] = records(hit.iloc[:1], self.schema)[0]

    def _end_jump(self) -> None:
        jump = self.jump
        if jump is None or self.clock.now < self._jump_to():
            return
        self.jump = None
        self.clock.set_fast(False)
        answer = {**self._do_clock(), "event": jump.get("event")}
        if "user_id" in jump and "event" not in jump:
            answer["error"] = f"no {jump['event_type']} of {jump['user_id']} within {JUMP_LIMIT_DAYS} days"
        if jump["future"] is not None:
            jump["future"].set_result(answer)

    # -- groups, replay, state -------------------------------------------------------------------------------------
    def _add_group(self, count: int, where: dict, at_s: float, write: bool) -> Group:
        first = sum(j["count"] for j in self.joined)
        if self.config.history and not self.joined:
            members, part, begin_s = self._logged_customers(at_s)
            count = len(members)
        else:
            members, part = draw_customers(self.model_dir, self.schema, first, count, self.config.seed, where)
            begin_s = at_s - self.config.history_days * DAY_S
        taken = set().union(*(g.row_of for g in self.groups))
        clash = sorted(taken.intersection(part.users["user_id"].astype(str)))
        if clash:
            raise CommandError(f"the new customers' ids {clash[:3]} are taken by customers of the run (the --history "
                               "log uses twinsim's own ids); continue a log with other ids to add customers", 409)
        group = Group(self.loaded, str(self.model_dir), self.config.seed, members, part, at_s, begin_s)
        history = group.advance(at_s)
        if len(group.known):
            history = pd.concat([group.known, history], ignore_index=True)
        group.remember(records(history.groupby("row").tail(group.recent[0].maxlen), self.schema))
        if write and len(history):
            batch = records(history, self.schema)
            for sink in self.sinks:
                (sink.write_bulk if hasattr(sink, "write_bulk") else sink.submit)(batch)
            self.counts["history"] += len(batch)
        if self.groups:
            self.counts["added"] += count
        self.groups.append(group)
        self.joined.append({"first": first, "count": count, "where": where, "joined_s": at_s})
        return group

    def _logged_customers(self, start_s: float) -> tuple[np.ndarray, Population, float]:
        """``--history``: the log's customers (the first ``users`` of them if given), their known events, and
        where their past begins; the live start must not fall inside the log's observation."""
        population = history_population(Path(self.config.history), self.schema)
        until = population.history.observed_until_s
        if start_s < until:
            raise TwinsimError(f"--start {iso(start_s)}: the history {self.config.history} is observed until "
                               f"{iso(until)}; its customers go live at or after it (leave --start out: now)")
        if self.config.users is not None:
            population = population.take(np.arange(min(self.config.users, len(population))))
        first = pd.Timestamp(population.history.time_s.min(), unit="s", tz="UTC").normalize().timestamp()
        return np.arange(len(population), dtype=np.int64), population, min(first, start_s)

    def _log(self, entry: dict) -> None:
        self.log.append(entry)
        self._save()

    def _replay_to(self, now_s: float) -> None:
        """A restart: apply the logged commands up to ``now_s`` (the frontier) without emitting anything."""
        while self.pending_log and self.pending_log[0]["at_s"] < now_s:
            entry = self.pending_log[0]
            for g in self.groups:
                g.advance(entry["at_s"])
            self._apply_entry(self.pending_log.popleft())
        for g in self.groups:
            g.advance(now_s)

    def _apply_logged(self) -> None:
        while self.pending_log and self.pending_log[0]["at_s"] <= self.clock.now:
            self._apply_entry(self.pending_log.popleft())

    def _apply_entry(self, entry: dict) -> None:
        args = {k: v for k, v in entry.items() if k not in ("kind", "at_s")}
        getattr(self, f"_do_{entry['kind']}")(**args, _at_s=entry["at_s"])
        self.log.append(entry)

    def _frontier(self) -> float:
        """Every event before the returned simulated time is acknowledged (or dead-lettered) by every sink."""
        settled = min((stats["acknowledged"] + stats["failed"] for stats in (s.stats() for s in self.sinks)),
                      default=self.counts["emitted"])
        while self.sent and self.sent[0][0] <= settled:
            _, latest = self.sent.popleft()
            self.frontier_s = max(self.frontier_s, latest)
        if not self.sent and self.clock is not None:
            self.frontier_s = max(self.frontier_s, self.clock.now)
        return self.frontier_s

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._saved_at >= 1.0:
            self._frontier()
            self._save()
        if self.on_progress is not None and now - self._progress_at >= 5.0:
            self._progress_at = now
            self.on_progress(self.summary())

    def _state_file(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / "live.json"

    def _save(self) -> None:
        path = self._state_file()
        self._saved_at = time.monotonic()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"config": self.config.identity(), "model": str(self.model_dir), "model_sha256": self.model_sha256,
                 "start_s": self.start_s, "frontier_s": self.frontier_s, "log": self.log + list(self.pending_log),
                 "counts": self.counts, "saved": iso(time.time())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)

    def _load_state(self) -> None:
        path = self._state_file()
        if path is None or not path.exists():
            return
        state = json.loads(path.read_text())
        if state["config"] != self.config.identity() or state["model_sha256"] != self.model_sha256:
            differ = sorted(k for k in self.config.identity() if state["config"].get(k) != self.config.identity()[k])
            raise TwinsimError(f"--state {self.state_dir}: holds a run of other options ({differ or 'the model'}: "
                               f"{ {k: state['config'].get(k) for k in differ} }); give the same options to restart "
                               "it, or a new --state directory")
        self.start_s = state["start_s"]
        self.frontier_s = self.resume_from = state["frontier_s"]
        self.pending_log = deque(state["log"])
        self.counts.update({k: v for k, v in state["counts"].items() if k in ("history",)})

    def _finish(self) -> None:
        for sink in self.sinks:
            sink.flush(30.0)
        self._frontier()
        self._save()


def _attributes(group: Group, row: int) -> dict:
    """A customer's static attributes as plain JSON values (the model's activity profile left out)."""
    values = without_profile(group.users.iloc[[row]]).iloc[0].drop("user_id").to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
