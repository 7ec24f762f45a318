"""ScheduleActor: fire times, DST, concurrency, catch-up, claims, timeouts, RunNow, Reconfigure, exits.

``FakeBackend`` below and ``tests.fakes.MemoryStore`` stand in for the ``Backend`` and ``Store`` interfaces only, so
these tests pin the actor's behaviour with a ManualClock and no I/O; the real stores (sqlite, MongoDB)
and backends (process, Docker, Kubernetes) are tested against real servers in their own suites.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import pykka
import pytest

from actors.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    ExitResult,
    Handle,
    RunSpec,
    TaskNotFound,
    TaskState,
)
from actors.directory import Directory
from actors.messages import SCHEDULED, BotDefinition, Exited, GetStatus, Reconfigure, RunNow, Timer
from actors.schedule import SKIPPED_REASON, ScheduleActor
from actors.stores.base import StoreUnavailable
from daemon.clock import ManualClock
from daemon.layout import run_id_for
from tests.fakes import MemoryStore

SID = "sched-1"
FAR_FUTURE = 9_999_999_999  # next_execution_time later than any fire: "nothing was missed"


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


# --- fakes (interface stand-ins, see module docstring) --------------------------------------------


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, fires_schedules: bool = False) -> None:
        self.capabilities = Capabilities(fires_schedules=fires_schedules)
        self.lock = threading.Lock()
        self.started: list[RunSpec] = []
        self.running: dict[str, Handle] = {}
        self.stopped: list[tuple[str, float]] = []
        self.removed: list[str] = []
        self.ensured: list[BotDefinition] = []
        self.fail_run_once: Exception | None = None
        self.fail_ensure: Exception | None = None
        self.stop_result: ExitResult | None = ExitResult(code=-15, signal=15)
        self.managed: list[tuple[Handle, TaskState]] = []

    def run_once(self, spec: RunSpec) -> Handle:
        with self.lock:
            if self.fail_run_once is not None:
                raise self.fail_run_once
            self.started.append(spec)
            h = Handle(spec.bot.id, "scheduled", f"ref-{spec.run_id}", spec.bot.config_hash, spec.run_id,
                       started_at=spec.scheduled_at or 0.0)
            self.running[spec.run_id] = h
            return h

    def stop(self, handle: Handle, grace: float) -> ExitResult | None:
        with self.lock:
            self.stopped.append((handle.run_id, grace))
            self.running.pop(handle.run_id, None)
            return self.stop_result

    def remove(self, handle: Handle) -> None:
        with self.lock:
            self.removed.append(handle.run_id)

    def inspect(self, handle: Handle) -> TaskState:
        for h, st in self.managed:
            if h == handle:
                return st
        raise TaskNotFound(handle.ref)

    def list_managed(self) -> list[Handle]:
        return [h for h, _ in self.managed]

    def start(self, spec: RunSpec) -> Handle:
        raise AssertionError("a ScheduleActor never starts realtime bots")

    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        return []

    def watch(self, on_exit) -> None:
        pass

    def ensure_schedule(self, bot: BotDefinition) -> None:
        if self.fail_ensure is not None:
            raise self.fail_ensure
        self.ensured.append(bot)

    def run_ids(self) -> list[str]:
        return [s.run_id for s in self.started]


# --- helpers --------------------------------------------------------------------------------------


def definition(schedule: str, tz: str = "UTC", next_execution_time: float | None = FAR_FUTURE,
               version: str = "1", **config: Any) -> BotDefinition:
    doc: dict[str, Any] = {
        "id": SID,
        "config": {"schedule": schedule, "timezone": tz, **config},
        "custom": {"version": version, "filePath": "bots/s.zip",
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }
    if next_execution_time is not None:
        doc["next_execution_time"] = next_execution_time
    return BotDefinition.from_document(doc, SCHEDULED)


class Harness:
    def __init__(self, defn: BotDefinition, start: float, backend: FakeBackend | None = None,
                 store: MemoryStore | None = None, **kwargs: Any) -> None:
        self.clock = ManualClock(start)
        self.backend = backend or FakeBackend()
        self.store = store or MemoryStore()
        self.statuses: list[dict] = []
        self.ref = ScheduleActor.start(None, defn, self.backend, self.store, self.clock, "runtime-a",
                                       lambda sid, st: self.statuses.append(st), **kwargs)
        self.status()  # on_start (adoption, catch-up, first timer) has run once this answers

    def status(self) -> dict:
        return self.ref.ask(GetStatus(), timeout=10)

    def tell(self, msg: Any) -> dict:
        self.ref.tell(msg)
        return self.status()

    def run_for(self, seconds: float) -> None:
        """Advance the clock timer by timer, letting the actor handle each one (and re-arm) in turn."""
        remaining = seconds
        while True:
            pending = self.clock.pending()
            if not pending or pending[0][0] > remaining:
                self.clock.advance(remaining)
                self.status()
                return
            step = max(0.0, pending[0][0])
            self.clock.advance(step)
            remaining -= step
            self.status()

    def run_until(self, wall: float) -> None:
        self.run_for(wall - self.clock.time())

    def exit(self, run_id: str, code: int = 0, reason: str = "") -> dict:
        return self.tell(Exited(SID, run_id, code, reason))


# --- firing ---------------------------------------------------------------------------------------


def test_fires_at_the_cron_times_and_keeps_next_execution_time():
    h = Harness(definition("0 * * * *", next_execution_time=None), utc(2026, 1, 1, 0, 10))
    st = h.status()
    assert st["next_run"] == utc(2026, 1, 1, 1) and st["state"] == "idle"
    assert h.store.next_execution[SID] == utc(2026, 1, 1, 1)
    assert h.backend.started == []  # 00:00 is 600 s old: beyond the starting deadline, no catch-up
    h.run_until(utc(2026, 1, 1, 0, 59, 59))
    assert h.backend.started == []
    h.run_for(1)
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 1, 1))]
    spec = h.backend.started[0]
    assert spec.scheduled_at == utc(2026, 1, 1, 1) and spec.bot.id == SID
    run = h.store.runs[spec.run_id]
    assert run["state"] == "starting" and run["owner"] == "runtime-a" and run["started_at"] == utc(2026, 1, 1, 1)
    st = h.status()
    assert st["state"] == "running" and st["active_runs"] == [spec.run_id]
    assert st["next_run"] == utc(2026, 1, 1, 2)
    assert h.store.next_execution[SID] == utc(2026, 1, 1, 1)  # written off the fire's critical path ..
    h.run_for(2)
    assert h.store.next_execution[SID] == utc(2026, 1, 1, 2)  # .. 2 s later
    h.exit(spec.run_id, 0)
    h.run_until(utc(2026, 1, 1, 2, 0, 1))
    h.exit(run_id_for(SID, utc(2026, 1, 1, 2)), 0)
    h.run_until(utc(2026, 1, 1, 3, 0, 1))
    assert h.backend.run_ids()[1:] == [run_id_for(SID, utc(2026, 1, 1, 2)), run_id_for(SID, utc(2026, 1, 1, 3))]


def test_long_waits_are_armed_in_steps_and_follow_the_wall_clock():
    h = Harness(definition("0 0 * * *"), utc(2026, 1, 1, 0, 10))
    assert h.clock.pending()[0][0] == 3600.0  # a day away: armed in hourly steps
    h.run_until(utc(2026, 1, 1, 23, 59, 59))
    assert h.backend.started == []
    h.run_for(1)
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 2))]


def test_dst_zone_schedule_fires_once_in_the_gap_and_once_in_the_overlap():
    london = "Europe/London"
    h = Harness(definition("30 1 * * *", london), utc(2026, 3, 28, 12))
    h.run_until(utc(2026, 3, 29, 12))
    h.exit(h.backend.run_ids()[-1])
    h.run_until(utc(2026, 3, 30, 12))
    h.exit(h.backend.run_ids()[-1])
    assert [s.scheduled_at for s in h.backend.started] == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    # Jump the wall clock to the autumn change (as after a long downtime): the next hourly timer step
    # notices the fire it was waiting for is long past, logs it as missed, and re-arms from now.
    h.clock.set_time(utc(2026, 10, 24, 12))
    h.run_until(utc(2026, 10, 25, 12))
    h.exit(h.backend.run_ids()[-1])
    h.run_until(utc(2026, 10, 26, 12))
    assert [s.scheduled_at for s in h.backend.started[2:]] == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_stale_timer_tokens_are_ignored():
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 10))
    h.tell(Timer("fire", token=12345))
    h.tell(Timer("timeout:nope", token=1))
    assert h.backend.started == []
    assert h.status()["next_run"] == utc(2026, 1, 1, 1)


# --- concurrency ----------------------------------------------------------------------------------


def test_forbid_skips_while_a_run_is_active_and_records_the_skip():
    h = Harness(definition("* * * * *"), utc(2026, 1, 1, 0, 0, 30))
    h.run_until(utc(2026, 1, 1, 0, 2))
    first, second = run_id_for(SID, utc(2026, 1, 1, 0, 1)), run_id_for(SID, utc(2026, 1, 1, 0, 2))
    assert h.backend.run_ids() == [first]
    skipped = h.store.runs[second]
    assert skipped["reason"] == SKIPPED_REASON and skipped["state"] == "skipped"
    assert [r["run_id"] for r in h.store.list_runs(SID)] == [second, first]
    h.exit(first, 0)
    h.run_until(utc(2026, 1, 1, 0, 3))
    assert h.backend.run_ids() == [first, run_id_for(SID, utc(2026, 1, 1, 0, 3))]


def test_allow_starts_alongside_the_active_run():
    h = Harness(definition("* * * * *", concurrency="allow"), utc(2026, 1, 1, 0, 0, 30))
    h.run_until(utc(2026, 1, 1, 0, 2))
    assert len(h.backend.started) == 2
    assert h.status()["active_runs"] == sorted(h.backend.run_ids())


def test_replace_stops_the_active_run_then_starts():
    h = Harness(definition("* * * * *", concurrency="replace"), utc(2026, 1, 1, 0, 0, 30), stop_grace=7.0)
    h.run_until(utc(2026, 1, 1, 0, 2))
    first, second = h.backend.run_ids()
    assert h.backend.stopped == [(first, 7.0)]
    assert h.store.runs[first]["reason"] == f"replaced by {second}"
    assert h.store.runs[first]["exit_code"] == -15
    assert first in h.backend.removed
    assert h.status()["active_runs"] == [second]


def test_replace_when_the_stop_result_comes_later_as_an_exit():
    backend = FakeBackend()
    backend.stop_result = None
    h = Harness(definition("* * * * *", concurrency="replace"), utc(2026, 1, 1, 0, 0, 30), backend=backend)
    h.run_until(utc(2026, 1, 1, 0, 2))
    first, second = h.backend.run_ids()
    h.exit(first, 143, "signal 15")
    assert h.store.runs[first]["reason"] == f"replaced by {second}"
    assert h.status()["active_runs"] == [second]


# --- catch-up after downtime ----------------------------------------------------------------------


def test_catch_up_one_run_when_missed_by_100s():
    missed = utc(2026, 1, 1, 12)
    h = Harness(definition("0 * * * *", next_execution_time=missed), missed + 100)
    assert h.backend.run_ids() == [run_id_for(SID, missed)]
    assert h.store.runs[run_id_for(SID, missed)]["trigger"] == "catch-up"
    assert h.status()["next_run"] == utc(2026, 1, 1, 13)


def test_catch_up_after_several_missed_fires_is_still_one_run():
    planned = utc(2026, 1, 1, 11, 50)  # the last fire the runtime had planned before going down
    h = Harness(definition("* * * * *", next_execution_time=planned), utc(2026, 1, 1, 12, 0, 40))
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 1, 12))]
    h.run_for(30)
    assert len(h.backend.started) == 1  # the next fire (12:01) is skipped only by forbid, not doubled
    assert h.store.runs[run_id_for(SID, utc(2026, 1, 1, 12, 1))]["reason"] == SKIPPED_REASON


def test_no_catch_up_when_missed_by_400s():
    missed = utc(2026, 1, 1, 12)
    h = Harness(definition("0 * * * *", next_execution_time=missed), missed + 400)
    assert h.backend.started == [] and h.store.runs == {}
    assert h.status()["next_run"] == utc(2026, 1, 1, 13)


def test_catch_up_honours_a_custom_starting_deadline():
    missed = utc(2026, 1, 1, 12)
    h = Harness(definition("0 * * * *", next_execution_time=missed, starting_deadline=1000), missed + 400)
    assert h.backend.run_ids() == [run_id_for(SID, missed)]


def test_no_catch_up_for_a_fire_that_already_has_a_run_record():
    missed = utc(2026, 1, 1, 12)
    store = MemoryStore()
    store.runs[run_id_for(SID, missed)] = {"run_id": run_id_for(SID, missed), "schedule_id": SID,
                                           "scheduled_at": missed}
    h = Harness(definition("0 * * * *", next_execution_time=missed), missed + 100, store=store)
    assert h.backend.started == []


def test_no_catch_up_for_a_fire_before_the_schedule_existed():
    # the0 set next_execution_time at creation: the 12:00 fire was never due for this schedule.
    h = Harness(definition("0 * * * *", next_execution_time=utc(2026, 1, 1, 13)), utc(2026, 1, 1, 12, 1))
    assert h.backend.started == []


# --- claims, errors ---------------------------------------------------------------------------------


def test_claimed_elsewhere_is_not_run():
    fire = utc(2026, 1, 1, 1)
    store = MemoryStore()
    store.runs[run_id_for(SID, fire)] = {"run_id": run_id_for(SID, fire), "schedule_id": SID,
                                         "scheduled_at": fire, "owner": "runtime-b"}
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), store=store)
    h.run_until(fire + 1)
    assert h.backend.started == []
    assert store.runs[run_id_for(SID, fire)]["owner"] == "runtime-b"
    assert h.status()["next_run"] == utc(2026, 1, 1, 2)


def test_backend_error_is_recorded_and_the_actor_lives_on():
    backend = FakeBackend()
    backend.fail_run_once = BackendError("docker daemon not reachable")
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), backend=backend)
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    rid = run_id_for(SID, utc(2026, 1, 1, 1))
    assert h.store.runs[rid]["reason"] == "start_failed: docker daemon not reachable"
    st = h.status()
    assert st["state"] == "idle" and st["last_run"]["reason"].startswith("start_failed")
    assert h.ref.is_alive()
    backend.fail_run_once = None
    h.run_until(utc(2026, 1, 1, 2, 0, 1))
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 1, 2))]


def test_store_outage_at_claim_time_is_retried_within_the_deadline():
    store = MemoryStore()
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), store=store)
    store.claim_error = StoreUnavailable("mongo down")
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    assert h.backend.started == [] and "mongo down" in h.status()["error"]
    store.claim_error = None
    h.run_for(5)
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 1, 1))]


# --- timeout, RunNow, exits -----------------------------------------------------------------------


def test_run_timeout_stops_the_run_and_records_timeout():
    backend = FakeBackend()
    backend.stop_result = None  # the exit arrives later, from the event source
    h = Harness(definition("0 * * * *", timeout=60), utc(2026, 1, 1, 0, 30), backend=backend, stop_grace=3.0)
    h.run_until(utc(2026, 1, 1, 1, 0, 59))
    assert backend.stopped == []
    h.run_for(1)
    rid = run_id_for(SID, utc(2026, 1, 1, 1))
    assert backend.stopped == [(rid, 3.0)]
    st = h.exit(rid, 143, "signal 15")
    assert h.store.runs[rid]["reason"] == "timeout" and h.store.runs[rid]["exit_code"] == 143
    assert st["state"] == "idle" and st["last_exit_code"] == 143


def test_a_run_that_ends_in_time_cancels_its_timeout():
    h = Harness(definition("0 * * * *", timeout=60), utc(2026, 1, 1, 0, 30))
    h.run_until(utc(2026, 1, 1, 1, 0, 10))
    h.exit(run_id_for(SID, utc(2026, 1, 1, 1)), 0)
    h.run_for(120)
    assert h.backend.stopped == []


def test_run_now_fires_immediately_with_a_distinct_run_id():
    h = Harness(definition("0 0 1 1 *"), utc(2026, 3, 1, 10, 0, 5))
    rid = run_id_for(SID, utc(2026, 3, 1, 10, 0, 5))
    assert h.ref.ask(RunNow(), timeout=10) == {"run_id": rid, "started": True, "reason": "manual"}
    st = h.status()
    assert h.backend.run_ids() == [rid] and st["active_runs"] == [rid]
    assert h.store.runs[rid]["trigger"] == "manual"
    assert st["next_run"] == utc(2027, 1, 1)
    h.clock.advance(1)
    refused = h.ref.ask(RunNow(), timeout=10)  # forbid: the first run is still active
    assert refused["started"] is False and refused["reason"] == SKIPPED_REASON
    assert h.backend.run_ids() == [rid]


def test_exits_are_recorded_and_the_task_removed():
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30))
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    rid = h.backend.run_ids()[0]
    h.clock.advance(42)
    st = h.exit(rid, 3)
    rec = h.store.runs[rid]
    assert rec["exit_code"] == 3 and rec["reason"] == "exit code 3" and rec["ended_at"] == utc(2026, 1, 1, 1, 0, 43)
    assert h.backend.removed == [rid]
    assert st["last_exit_code"] == 3 and st["last_run"]["run_id"] == rid and st["state"] == "idle"
    h.exit(rid, 3)  # a duplicate exit changes nothing
    assert h.backend.removed == [rid]


def test_exits_are_routed_through_the_directory():
    directory = Directory()
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), directory=directory)
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    handle = h.backend.running[h.backend.run_ids()[0]]
    directory.route_exit(handle, ExitResult(code=0))
    assert h.status()["last_exit_code"] == 0
    h.ref.stop()
    assert directory.owner("scheduled", SID) is None


def test_status_sink_sees_every_change():
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30))
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    h.exit(h.backend.run_ids()[0], 0)
    states = [s["state"] for s in h.statuses]
    assert states[0] == "idle" and "running" in states and states[-1] == "idle"
    assert h.statuses[-1]["last_exit_code"] == 0 and h.statuses[-1]["kind"] == "scheduled"
    assert h.statuses[-1]["restarts"] == 0


# --- reconfigure, adoption, Kubernetes --------------------------------------------------------------


def test_reconfigure_changes_the_cron_and_active_runs_keep_going():
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30))
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    old = h.backend.run_ids()[0]
    st = h.tell(Reconfigure(definition("30 * * * *", version="2", concurrency="allow")))
    assert st["next_run"] == utc(2026, 1, 1, 1, 30) and h.store.next_execution[SID] == utc(2026, 1, 1, 1, 30)
    assert st["active_runs"] == [old] and h.backend.stopped == []
    h.run_until(utc(2026, 1, 1, 1, 30, 1))
    new = h.backend.started[1]
    assert new.bot.version == "2" and h.backend.started[0].bot.version == "1"
    h.exit(old, 0)
    assert h.store.runs[old]["exit_code"] == 0
    h.run_until(utc(2026, 1, 1, 2, 0, 1))  # the old 02:00 timer is gone
    assert len(h.backend.started) == 2


def test_running_runs_are_adopted_on_start():
    backend = FakeBackend()
    rid = run_id_for(SID, utc(2026, 1, 1, 1))
    live = Handle(SID, "scheduled", "ref-live", "", rid, started_at=utc(2026, 1, 1, 1))
    gone_id = run_id_for(SID, utc(2026, 1, 1, 0))
    gone = Handle(SID, "scheduled", "ref-gone", "", gone_id, started_at=utc(2026, 1, 1, 0))
    backend.managed = [(live, TaskState(running=True)), (gone, TaskState(False, ExitResult(code=1)))]
    store = MemoryStore()
    for r in (rid, gone_id):
        store.runs[r] = {"run_id": r, "schedule_id": SID, "scheduled_at": 0}
    h = Harness(definition("0 * * * *", timeout=600), utc(2026, 1, 1, 1, 5), backend=backend, store=store)
    st = h.status()
    assert st["active_runs"] == [rid]
    assert store.runs[gone_id]["exit_code"] == 1 and gone_id in backend.removed
    h.run_for(299)  # the adopted run's timeout counts from its start (01:00 + 600 s)
    assert backend.stopped == []
    h.run_for(1)
    assert backend.stopped == [(rid, 15.0)]


def test_kubernetes_mode_ensures_the_cronjob_and_never_fires_itself():
    backend = FakeBackend(fires_schedules=True)
    h = Harness(definition("0 * * * *", next_execution_time=utc(2026, 1, 1, 0)), utc(2026, 1, 1, 0, 0, 30),
                backend=backend)
    assert [d.schedule for d in backend.ensured] == ["0 * * * *"]
    h.run_until(utc(2026, 1, 1, 2, 0, 3))
    assert backend.started == []  # no catch-up and no fires: the cluster fires the CronJob
    assert h.store.next_execution[SID] == utc(2026, 1, 1, 3)
    h.tell(Reconfigure(definition("*/5 * * * *", version="2")))
    assert [d.schedule for d in backend.ensured] == ["0 * * * *", "*/5 * * * *"]
    # A run the cluster started is completed when its exit is reported.
    rid = run_id_for(SID, utc(2026, 1, 1, 2))
    h.store.runs[rid] = {"run_id": rid, "schedule_id": SID, "scheduled_at": utc(2026, 1, 1, 2)}
    st = h.exit(rid, 0)
    assert h.store.runs[rid]["exit_code"] == 0 and st["last_run"]["run_id"] == rid


def test_kubernetes_ensure_failure_is_retried():
    backend = FakeBackend(fires_schedules=True)
    backend.fail_ensure = BackendError("apiserver timeout")
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 10), backend=backend)
    assert "apiserver timeout" in h.status()["error"] and h.ref.is_alive()
    backend.fail_ensure = None
    h.run_for(30)
    assert len(backend.ensured) == 1 and h.status()["error"] == ""


def test_actor_stop_leaves_runs_running():
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30))
    h.run_until(utc(2026, 1, 1, 1, 0, 1))
    h.ref.stop()
    assert h.backend.stopped == [] and h.backend.removed == []
    assert h.clock.pending() == []


def test_an_invalid_definition_fails_at_construction():
    defn = definition("0 * * * *")
    bad = BotDefinition(**{**{f: getattr(defn, f) for f in defn.__dataclass_fields__}, "schedule": "nope"})
    with pytest.raises(ValueError):
        ScheduleActor(None, bad, FakeBackend(), MemoryStore(), ManualClock(), "x")
    assert pykka.ActorRegistry.get_all() == []


def test_an_adopt_callable_may_return_one_handle():
    rid = run_id_for(SID, utc(2026, 1, 1, 1))
    live = Handle(SID, "scheduled", "ref-live", "", rid, started_at=utc(2026, 1, 1, 1))
    backend = FakeBackend()
    backend.managed = [(live, TaskState(running=True))]
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 1, 5), backend=backend, adopt=lambda sid: live)
    assert h.status()["active_runs"] == [rid]


def test_two_replicas_sharing_a_real_sqlite_store_run_a_fire_once(tmp_path):
    # The real embedded store (no server needed): its unique run id is what stops a second replica.
    from actors.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "runtime.sqlite")
    try:
        a = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), store=store)  # type: ignore[arg-type]
        b = Harness(definition("0 * * * *"), utc(2026, 1, 1, 0, 30), store=store)  # type: ignore[arg-type]
        a.run_until(utc(2026, 1, 1, 1, 0, 1))
        b.run_until(utc(2026, 1, 1, 1, 0, 1))
        assert len(a.backend.started) + len(b.backend.started) == 1
        winner = a if a.backend.started else b
        rid = run_id_for(SID, utc(2026, 1, 1, 1))
        winner.clock.advance(9)
        winner.exit(rid, 0)
        [run] = store.list_runs(SID)
        assert run["run_id"] == rid and run["exit_code"] == 0 and run["reason"] == "completed"
        assert run["ended_at"] == utc(2026, 1, 1, 1, 0, 10)
    finally:
        pykka.ActorRegistry.stop_all()
        store.close()


def test_replace_keeps_the_active_run_when_another_runtime_claimed_the_fire():
    store = MemoryStore()
    second = run_id_for(SID, utc(2026, 1, 1, 0, 2))
    store.runs[second] = {"run_id": second, "schedule_id": SID, "scheduled_at": utc(2026, 1, 1, 0, 2)}
    h = Harness(definition("* * * * *", concurrency="replace"), utc(2026, 1, 1, 0, 0, 30), store=store)
    h.run_until(utc(2026, 1, 1, 0, 2, 1))
    assert h.backend.run_ids() == [run_id_for(SID, utc(2026, 1, 1, 0, 1))]
    assert h.backend.stopped == []


def test_exit_of_a_run_from_a_crashed_incarnation_is_recorded_and_its_task_removed():
    rid = run_id_for(SID, utc(2026, 1, 1, 1))
    left = Handle(SID, "scheduled", "ref-left", "", rid, started_at=utc(2026, 1, 1, 1))
    backend = FakeBackend()
    store = MemoryStore()
    store.runs[rid] = {"run_id": rid, "schedule_id": SID, "scheduled_at": utc(2026, 1, 1, 1)}
    # The runtime's adopt callable hands runs over once; a restarted actor gets nothing.
    h = Harness(definition("0 * * * *"), utc(2026, 1, 1, 1, 5), backend=backend, store=store, adopt=lambda sid: [])
    backend.managed = [(left, TaskState(running=False, exit=ExitResult(code=0)))]
    st = h.exit(rid, 0)
    assert store.runs[rid]["exit_code"] == 0 and backend.removed == [rid]
    assert st["last_run"]["scheduled_at"] == utc(2026, 1, 1, 1)
