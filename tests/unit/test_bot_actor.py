"""BotActor: start, adoption, restart policies, backoff sequence and reset, config-hash replacement.

Time is a ManualClock: backoff and the stable-running reset are exercised by advancing it, never by
sleeping. The backend is tests.fakes.FakeBackend, an in-memory stand-in for the Backend interface (the real
backends are tested in tests/integration); it counts exactly how many times a task was started or stopped.
"""
from __future__ import annotations

import random


from actors.backends.base import Handle
from actors.bot import BotActor, backoff_delay
from actors.config import RestartDefaults
from actors.directory import Directory
from actors.messages import Exited, GetStatus, Reconfigure, RestartNow
from actors.status import StatusBoard
from daemon.clock import ManualClock
from tests.fakes import FakeBackend, defn


DEFAULTS = RestartDefaults()


def start_actor(backend, d=None, adopt=None, clock=None, rng_seed=1, leave=lambda: False):
    clock = clock or ManualClock()
    board = StatusBoard()
    ref = BotActor.start(None, d or defn(), backend, clock, DEFAULTS, board, Directory(),
                         adopt=adopt, leave_running=leave, rng=random.Random(rng_seed))
    return ref, clock, board


def status(ref):
    return ref.ask(GetStatus())


def crash(ref, backend, bot_id="b1", code=1):
    status(ref)  # let the actor handle what the clock told it first
    backend.die(bot_id)
    ref.tell(Exited(bot_id, None, code, "crashed"))
    return status(ref)


def test_starts_once_and_reports_running():
    be = FakeBackend()
    ref, _, board = start_actor(be)
    s = status(ref)
    assert s["state"] == "running" and len(be.started) == 1
    assert board.get("b1")["state"] == "running"


def test_backoff_doubles_with_jitter_and_caps():
    rng = random.Random(7)
    seen = [backoff_delay(n, DEFAULTS, rng) for n in range(1, 13)]
    for n, d in enumerate(seen, start=1):
        base = min(2 ** (n - 1), 300)
        assert base * 0.9 <= d <= base * 1.1, (n, d)
    assert max(seen) <= 330


def test_crash_restarts_after_backoff_sequence():
    be = FakeBackend()
    ref, clock, _ = start_actor(be)
    expected_bases = [1, 2, 4, 8, 16]
    for i, base in enumerate(expected_bases, start=1):
        s = crash(ref, be)
        assert s["state"] == "backoff"
        delay = s["next_restart_at"] - clock.time()
        assert base * 0.9 <= delay <= base * 1.1
        clock.advance(delay * 0.5)
        assert status(ref)["state"] == "backoff" and len(be.started) == i  # not yet
        clock.advance(delay * 0.5 + 0.001)
        s = status(ref)
        assert s["state"] == "running" and len(be.started) == i + 1 and s["restarts"] == i


def test_backoff_resets_after_stable_running():
    be = FakeBackend()
    ref, clock, _ = start_actor(be)
    for _ in range(4):
        s = crash(ref, be)
        clock.advance(s["next_restart_at"] - clock.time() + 0.001)
    s = crash(ref, be)
    assert s["next_restart_at"] - clock.time() >= 16 * 0.9  # fifth failure: ~16 s
    clock.advance(s["next_restart_at"] - clock.time() + 0.001)
    assert status(ref)["state"] == "running"  # restarted; its stable timer is armed now
    clock.advance(DEFAULTS.reset_after + 1)  # 600 s of clean running
    status(ref)
    s = crash(ref, be)
    assert s["next_restart_at"] - clock.time() <= 1.1  # back to ~1 s


def test_on_failure_policy_does_not_restart_clean_exit():
    be = FakeBackend()
    ref, clock, _ = start_actor(be, defn(restart="on-failure"))
    s = crash(ref, be, code=0)
    assert s["state"] == "stopped" and s["last_exit_code"] == 0
    clock.advance(1000)
    assert len(be.started) == 1


def test_on_failure_policy_restarts_failed_exit():
    be = FakeBackend()
    ref, clock, _ = start_actor(be, defn(restart="on-failure"))
    s = crash(ref, be, code=3)
    assert s["state"] == "backoff"
    clock.advance(2)
    assert status(ref)["state"] == "running" and len(be.started) == 2


def test_never_policy():
    be = FakeBackend()
    ref, clock, _ = start_actor(be, defn(restart="never"))
    assert crash(ref, be, code=1)["state"] == "failed"
    clock.advance(1000)
    assert len(be.started) == 1


def test_max_restarts_then_failed():
    be = FakeBackend()
    ref, clock, _ = start_actor(be, defn(max_restarts=2))
    for _ in range(2):
        crash(ref, be)
        clock.advance(10)
    s = crash(ref, be)
    assert s["state"] == "failed" and s["restarts"] == 2 and "limit" in s["error"]
    clock.advance(1000)
    assert len(be.started) == 3


def test_start_failure_is_retried_with_backoff():
    be = FakeBackend(fail_starts=2)
    ref, clock, _ = start_actor(be)
    s = status(ref)
    assert s["state"] == "backoff" and "image missing" in s["error"]
    clock.advance(1.2)
    assert status(ref)["state"] == "backoff"  # second failure, ~2 s
    clock.advance(2.5)
    assert status(ref)["state"] == "running"


def test_same_hash_reconfigure_does_not_replace():
    be = FakeBackend()
    ref, _, _ = start_actor(be)
    ref.tell(Reconfigure(defn()))
    status(ref)
    assert len(be.started) == 1 and be.stopped == []


def test_changed_hash_replaces_exactly_once():
    be = FakeBackend()
    ref, _, _ = start_actor(be)
    new = defn(symbol="ETH")
    ref.tell(Reconfigure(new))
    ref.tell(Reconfigure(new))  # a duplicate event changes nothing more
    s = status(ref)
    assert len(be.stopped) == 1 and len(be.started) == 2
    assert s["state"] == "running" and s["config_hash"] == new.config_hash
    assert be.started[-1].bot.config_hash == new.config_hash


def test_adopts_running_task_without_starting():
    be = FakeBackend()
    d = defn()
    h = Handle("b1", "realtime", "task-old", d.config_hash, started_at=123.0)
    be.running["b1"] = h
    ref, _, _ = start_actor(be, d, adopt=lambda bot_id: h)
    s = status(ref)
    assert s["state"] == "running" and be.started == [] and be.stopped == []


def test_adopted_task_with_old_hash_is_replaced():
    be = FakeBackend()
    h = Handle("b1", "realtime", "task-old", "0" * 64)
    be.running["b1"] = h
    ref, _, _ = start_actor(be, defn(), adopt=lambda bot_id: h)
    status(ref)
    assert be.stopped == [h] and len(be.started) == 1


def test_actor_crash_leaves_task_running():
    be = FakeBackend()
    ref, _, _ = start_actor(be)
    status(ref)
    ref.tell("not a message the actor knows")  # unknown messages are ignored, not fatal
    assert status(ref)["state"] == "running"

    ref.tell(Reconfigure(None))  # a bug: handling it raises inside the actor -> on_failure
    wait_dead(ref)
    assert be.stopped == [] and "b1" in be.running


def wait_dead(ref):
    from tests.servers._util import wait_for

    wait_for(lambda: not ref.is_alive(), 5, what="actor to die")


def test_stop_stops_the_task_unless_left_running():
    be = FakeBackend()
    ref, _, board = start_actor(be)
    status(ref)
    ref.stop()
    assert len(be.stopped) == 1
    be2 = FakeBackend()
    ref2, _, _ = start_actor(be2, leave=lambda: True)
    status(ref2)
    ref2.stop()
    assert be2.stopped == [] and "b1" in be2.running


def test_restart_now_resets_backoff():
    be = FakeBackend()
    ref, clock, _ = start_actor(be)
    for _ in range(3):
        crash(ref, be)
        clock.advance(10)
    s = ref.ask(RestartNow())
    assert s["state"] == "running" and len(be.stopped) == 1
    s = crash(ref, be)
    assert s["next_restart_at"] - clock.time() <= 1.1


def test_exit_of_unknown_run_is_ignored():
    be = FakeBackend()
    ref, _, _ = start_actor(be)
    ref.tell(Exited("b1", "b1-123", 1))
    assert status(ref)["state"] == "running"


def test_platform_restarts_means_actor_only_reports():
    be = FakeBackend(restarts_bots=True)
    ref, clock, _ = start_actor(be)
    ref.tell(Exited("b1", None, 2, "Error"))
    s = status(ref)
    assert s["state"] == "running" and s["last_exit_code"] == 2
    clock.advance(1000)
    assert len(be.started) == 1


def test_exit_of_a_replaced_task_is_ignored():
    be = FakeBackend()
    ref, _, _ = start_actor(be)
    old = status(ref) and be.running["b1"]
    ref.tell(Reconfigure(defn(symbol="ETH")))
    status(ref)
    new = be.running["b1"]
    assert new.ref != old.ref
    ref.tell(Exited("b1", None, 143, "killed by signal 15", ref=old.ref))  # the old task's late event
    s = status(ref)
    assert s["state"] == "running" and be.removed == [old] and "b1" in be.running
    ref.tell(Exited("b1", None, 1, "crash", ref=new.ref))
    assert status(ref)["state"] == "backoff"
