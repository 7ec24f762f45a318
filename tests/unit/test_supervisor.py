"""Supervisor semantics: strategies, restart types, intensity, ordering, shutdown, dynamic children, stale
reports, and how a Supervised actor reports each way its life can end under pykka 4.5.

Time for intensity is a ManualClock (advanced, never slept). Asynchronous effects are awaited with
wait_for (a poll with a deadline); the only real-time wait is the supervisor's own shutdown timeout in
the abandonment tests (0.2 s).
"""
from __future__ import annotations

import logging
import threading

import pykka
import pytest

from daemon.clock import ManualClock
from daemon.supervisor import ChildExit, ChildSpec, Link, Supervised, Supervisor
from tests.servers._util import wait_for


class Journal:
    """A thread-safe list of (what, who) the test actors append to."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, what: str, who: str) -> None:
        with self._lock:
            self._items.append((what, who))

    def items(self, what: str | None = None) -> list:
        with self._lock:
            return [i if what is None else i[1] for i in self._items if what is None or i[0] == what]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Worker(Supervised):
    """A test child: journals its start and stop; "crash" raises (a failure), "quit" stops it (normal)."""

    def __init__(self, link, name, journal, fail_start=False, stop_gate=None, fail_stop=False, fail_on_failure=False):
        super().__init__(link)
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.stop_gate = stop_gate
        self.fail_stop = fail_stop
        self.fail_on_failure = fail_on_failure

    def on_start(self):
        super().on_start()
        self.journal.add("start", self.name)
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    def on_stop(self):
        self.journal.add("stop", self.name)
        if self.stop_gate is not None:
            self.stop_gate.wait(30)
        if self.fail_stop:
            raise RuntimeError(f"{self.name} failed while stopping")
        super().on_stop()

    def on_failure(self, *exc_info):
        self.journal.add("failure", self.name)
        super().on_failure(*exc_info)
        if self.fail_on_failure:
            raise RuntimeError(f"{self.name} on_failure raised too")

    def on_receive(self, message):
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "quit":
            self.stop()
            return None
        return super().on_receive(message)


def worker(name, journal, restart="permanent", shutdown=5.0, **kw) -> ChildSpec:
    return ChildSpec(name, lambda link: Worker.start(link, name, journal, **kw), restart=restart, shutdown=shutdown)


def refs(sup) -> dict:
    return dict(sup.proxy().which_children().get(timeout=10))


def restarted(sup, child_id, old):
    """Wait until child ``child_id`` runs under a ref other than ``old``; return the new ref."""
    return wait_for(lambda: (r := refs(sup).get(child_id)) is not None and r != old and r,
                    what=f"child {child_id} restarted")


@pytest.fixture
def journal():
    return Journal()


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def gave_up():
    reasons: list[str] = []
    return reasons


def start_sup(children, clock, gave_up=None, **kw):
    return Supervisor.start(None, children=children, clock=clock,
                            on_give_up=(gave_up.append if gave_up is not None else None), **kw)


# -- ordering -----------------------------------------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse(journal, clock):
    sup = start_sup([worker(n, journal) for n in "abc"], clock)
    assert list(refs(sup)) == ["a", "b", "c"]
    assert journal.items("start") == ["a", "b", "c"]
    sup.stop(timeout=10)
    assert journal.items("stop") == ["c", "b", "a"]
    assert pykka.ActorRegistry.get_all() == []


def test_each_child_finishes_on_start_before_the_next_starts(clock):
    order: list[str] = []

    class Slow(Supervised):
        def __init__(self, link, name, gate):
            super().__init__(link)
            self.name, self.gate = name, gate

        def on_start(self):
            super().on_start()
            order.append(f"{self.name}:begin")
            if self.gate is not None:
                assert self.gate.wait(10)
            order.append(f"{self.name}:end")

    gate = threading.Event()
    threading.Timer(0.05, gate.set).start()  # releases "a" from another thread; the supervisor must wait for it
    sup = start_sup([ChildSpec("a", lambda link: Slow.start(link, "a", gate)),
                     ChildSpec("b", lambda link: Slow.start(link, "b", None))], clock)
    assert refs(sup)["b"] is not None
    assert order == ["a:begin", "a:end", "b:begin", "b:end"]


def test_start_failure_stops_started_children_in_reverse_and_fails(journal, clock, gave_up):
    def broken(link):
        raise OSError("no such image")

    sup = start_sup([worker("a", journal), worker("b", journal), ChildSpec("c", broken), worker("d", journal)],
                    clock, gave_up)
    wait_for(lambda: gave_up, what="on_give_up")
    assert not sup.is_alive()
    assert journal.items("start") == ["a", "b"]
    assert journal.items("stop") == ["b", "a"]
    assert "'c' failed to start" in gave_up[0] and "no such image" in gave_up[0]


# -- strategies ---------------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_failed_child(journal, clock):
    sup = start_sup([worker(n, journal) for n in "abc"], clock, strategy="one_for_one")
    before = refs(sup)
    journal.clear()
    before["b"].tell("crash")
    new_b = restarted(sup, "b", before["b"])
    after = refs(sup)
    assert after["a"] == before["a"] and after["c"] == before["c"] and after["b"] == new_b
    assert journal.items("start") == ["b"]
    assert sup.proxy().restart_count().get() == 1


def test_one_for_all_restarts_everyone_stopping_in_reverse_starting_in_order(journal, clock):
    sup = start_sup([worker(n, journal) for n in "abc"], clock, strategy="one_for_all")
    before = refs(sup)
    journal.clear()
    before["b"].tell("crash")
    restarted(sup, "b", before["b"])
    after = refs(sup)
    assert all(after[n] != before[n] and after[n].is_alive() for n in "abc")
    assert journal.items("stop") == ["c", "a"]
    assert journal.items("start") == ["a", "b", "c"]
    # The siblings' own stop reports (stale) were queued before this ask: no second restart.
    assert sup.proxy().restart_count().get() == 1
    assert refs(sup) == after


def test_rest_for_one_restarts_the_child_and_those_after_it(journal, clock):
    sup = start_sup([worker(n, journal) for n in "abcd"], clock, strategy="rest_for_one")
    before = refs(sup)
    journal.clear()
    before["b"].tell("crash")
    restarted(sup, "b", before["b"])
    after = refs(sup)
    assert after["a"] == before["a"]
    assert all(after[n] != before[n] for n in "bcd")
    assert journal.items("stop") == ["d", "c"]
    assert journal.items("start") == ["b", "c", "d"]
    assert sup.proxy().restart_count().get() == 1


def test_one_for_all_drops_temporary_siblings(journal, clock):
    sup = start_sup([worker("a", journal), worker("t", journal, restart="temporary"), worker("c", journal)],
                    clock, strategy="one_for_all")
    before = refs(sup)
    before["a"].tell("crash")
    restarted(sup, "a", before["a"])
    assert list(refs(sup)) == ["a", "c"]


# -- restart types ------------------------------------------------------------------------------------


def test_permanent_child_is_restarted_after_a_normal_stop_too(journal, clock):
    sup = start_sup([worker("p", journal)], clock)
    old = refs(sup)["p"]
    old.tell("quit")
    restarted(sup, "p", old)


def test_transient_child_is_restarted_after_a_failure_only(journal, clock):
    sup = start_sup([worker("t", journal, restart="transient")], clock)
    old = refs(sup)["t"]
    old.tell("crash")
    new = restarted(sup, "t", old)
    new.tell("quit")
    wait_for(lambda: refs(sup) == {"t": None}, what="transient child left stopped")
    assert sup.proxy().restart_count().get() == 1


def test_temporary_child_is_never_restarted_and_its_spec_is_dropped(journal, clock):
    sup = start_sup([worker("t", journal, restart="temporary"), worker("q", journal, restart="temporary")], clock)
    current = refs(sup)
    current["t"].tell("crash")
    current["q"].tell("quit")
    wait_for(lambda: refs(sup) == {}, what="temporary children removed")
    assert journal.items("start") == ["t", "q"]
    assert sup.proxy().restart_count().get() == 0


# -- intensity ----------------------------------------------------------------------------------------


def crash_and_wait(sup, child_id):
    old = refs(sup)[child_id]
    old.tell("crash")
    return restarted(sup, child_id, old)


def test_intensity_exceeded_at_the_root_stops_children_and_calls_on_give_up(journal, clock, gave_up):
    sup = start_sup([worker("a", journal), worker("b", journal)], clock, gave_up, intensity=2, period=10)
    crash_and_wait(sup, "b")
    crash_and_wait(sup, "b")
    assert not gave_up
    journal.clear()
    refs(sup)["b"].tell("crash")  # the third restart within 10 s is one too many
    wait_for(lambda: gave_up, what="on_give_up")
    assert "more than 2 restarts in 10s" in gave_up[0] and "'b'" in gave_up[0]
    wait_for(lambda: not sup.is_alive(), what="root supervisor stopped")
    assert journal.items("stop") == ["a"]  # b had crashed; a was stopped, and nothing restarted
    assert journal.items("start") == []
    assert pykka.ActorRegistry.get_all() == []


def test_intensity_zero_gives_up_on_the_first_restart(journal, clock, gave_up):
    sup = start_sup([worker("a", journal)], clock, gave_up, intensity=0)
    refs(sup)["a"].tell("crash")
    wait_for(lambda: gave_up, what="on_give_up")
    assert journal.items("start") == ["a"]


def test_restarts_spread_over_more_than_the_period_do_not_escalate(journal, clock, gave_up):
    sup = start_sup([worker("a", journal)], clock, gave_up, intensity=2, period=10)
    for _ in range(6):  # one restart every 6 s: never more than 2 in any 10 s window
        crash_and_wait(sup, "a")
        clock.advance(6)
    assert not gave_up and sup.is_alive()
    assert len(journal.items("start")) == 7


def test_window_is_inclusive_of_its_edge(journal, clock, gave_up):
    sup = start_sup([worker("a", journal)], clock, gave_up, intensity=1, period=10)
    crash_and_wait(sup, "a")
    clock.advance(10.5)  # the first restart left the window
    crash_and_wait(sup, "a")
    clock.advance(10)  # exactly `period` later: still inside (OTP counts t >= now - period)
    refs(sup)["a"].tell("crash")
    wait_for(lambda: gave_up, what="on_give_up")


def test_escalation_to_a_parent_supervisor_then_to_the_root(journal, clock, gave_up):
    def child_sup(link):
        return Supervisor.start(link, children=[worker("w", journal)], clock=clock, name="inner",
                                intensity=0)

    root = start_sup([worker("x", journal), ChildSpec("inner", child_sup, type="supervisor", shutdown=None)],
                     clock, gave_up, intensity=1, period=30, name="root")
    inner1 = refs(root)["inner"]
    w1 = dict(inner1.proxy().which_children().get())["w"]
    x = refs(root)["x"]

    w1.tell("crash")  # inner gives up (intensity 0) -> root sees a failure and restarts inner
    inner2 = restarted(root, "inner", inner1)
    assert not inner1.is_alive()
    w2 = dict(inner2.proxy().which_children().get())["w"]
    assert w2 != w1 and w2.is_alive()
    assert refs(root)["x"] == x  # one_for_one at the root
    assert not gave_up

    w2.tell("crash")  # inner gives up again -> second restart at the root in 30 s -> root gives up
    wait_for(lambda: gave_up, what="root on_give_up")
    assert "root" in gave_up[0]
    wait_for(lambda: not root.is_alive(), what="root stopped")
    assert not x.is_alive()
    assert pykka.ActorRegistry.get_all() == []


def test_a_child_whose_on_start_raises_counts_as_a_failure(journal, clock, gave_up):
    sup = start_sup([worker("a", journal, fail_start=True)], clock, gave_up, intensity=3)
    wait_for(lambda: gave_up, what="on_give_up")
    assert journal.items("start") == ["a"] * 4  # first start + 3 restarts, then the 4th restart is refused
    assert not sup.is_alive()


def test_a_restart_whose_start_raises_is_retried_and_escalates(journal, clock, gave_up):
    calls = []

    def flaky(link):
        calls.append(link.generation)
        if len(calls) > 1:
            raise OSError("backend down")
        return Worker.start(link, "a", journal)

    sup = start_sup([ChildSpec("a", flaky)], clock, gave_up, intensity=3)
    refs(sup)["a"].tell("crash")
    wait_for(lambda: gave_up, what="on_give_up")
    assert len(calls) == 4  # the start + 3 restart attempts
    assert len(set(calls)) == 4  # each attempt had its own generation
    assert not sup.is_alive()


def test_stopping_the_root_normally_does_not_call_on_give_up(journal, clock, gave_up):
    sup = start_sup([worker("a", journal)], clock, gave_up)
    sup.stop(timeout=10)
    assert gave_up == []


# -- shutdown timeout ---------------------------------------------------------------------------------


def abandoned_ids(caplog) -> list:
    return [r.fields["child_id"] for r in caplog.records
            if r.name == "daemon.supervisor" and r.getMessage() == "supervisor.child_abandoned"]


def test_a_child_that_does_not_stop_within_shutdown_is_abandoned_and_logged(journal, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="daemon.supervisor")
    gate = threading.Event()
    try:
        sup = start_sup([worker("a", journal), worker("stuck", journal, shutdown=0.2, stop_gate=gate),
                         worker("c", journal)], clock)
        sup.stop(timeout=10)  # returns: "stuck" is abandoned after 0.2 s, "a" is still stopped after it
        assert journal.items("stop") == ["c", "stuck", "a"]
        assert abandoned_ids(caplog) == ["stuck"]
    finally:
        gate.set()


def test_terminate_child_abandons_a_stuck_child(journal, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="daemon.supervisor")
    gate = threading.Event()
    try:
        sup = start_sup([worker("stuck", journal, shutdown=0.2, stop_gate=gate)], clock)
        assert sup.proxy().terminate_child("stuck").get(timeout=10) is True
        assert abandoned_ids(caplog) == ["stuck"]
        assert refs(sup) == {}
        gate.set()
        # Its late exit report is ignored: nothing restarts.
        assert sup.proxy().restart_count().get() == 0 and refs(sup) == {}
    finally:
        gate.set()


def test_a_child_that_stops_in_time_is_not_logged_as_abandoned(journal, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="daemon.supervisor")
    sup = start_sup([worker("a", journal, shutdown=5.0)], clock)
    sup.stop(timeout=10)
    assert abandoned_ids(caplog) == []


# -- dynamic children ---------------------------------------------------------------------------------


def test_dynamic_children(journal, clock):
    sup = start_sup([worker("static", journal)], clock)
    proxy = sup.proxy()
    ref = proxy.start_child(worker("d1", journal)).get()
    proxy.start_child(worker("d2", journal)).get()
    assert ref.is_alive() and proxy.child("d1").get() == ref
    assert [cid for cid, _ in proxy.which_children().get()] == ["static", "d1", "d2"]

    with pytest.raises(ValueError, match="already has a child 'd1'"):
        proxy.start_child(worker("d1", journal)).get()

    def broken(link):
        raise OSError("no image")

    with pytest.raises(OSError, match="no image"):
        proxy.start_child(ChildSpec("bad", broken)).get()
    assert proxy.child("bad").get() is None

    ref.tell("crash")  # a dynamic child is supervised like a static one
    restarted(sup, "d1", ref)

    journal.clear()
    assert proxy.terminate_child("d1").get() is True
    assert journal.items("stop") == ["d1"]
    assert proxy.terminate_child("d1").get() is False
    assert proxy.child("d1").get() is None
    assert [cid for cid, _ in proxy.which_children().get()] == ["static", "d2"]
    assert proxy.restart_count().get() == 1  # the terminated child's stop report did not restart it

    sup.stop(timeout=10)
    assert journal.items("stop") == ["d1", "d2", "static"]


# -- stale reports ------------------------------------------------------------------------------------


def test_a_report_from_an_old_generation_is_ignored(journal, clock):
    links: list[Link] = []

    def start(link):
        links.append(link)
        return Worker.start(link, "a", journal)

    sup = start_sup([ChildSpec("a", start)], clock)
    old = refs(sup)["a"]
    old.tell("crash")
    new = restarted(sup, "a", old)
    assert links[1].generation != links[0].generation

    sup.tell(ChildExit("a", links[0].generation, "failure", RuntimeError("old news")))
    sup.tell(ChildExit("nobody", 99, "failure", None))
    assert refs(sup) == {"a": new} and new.is_alive()
    assert sup.proxy().restart_count().get() == 1

    sup.tell(ChildExit("a", links[1].generation, "failure", None))  # the current generation counts
    restarted(sup, "a", new)


# -- how Supervised reports each end ------------------------------------------------------------------


class Probe(pykka.ThreadingActor):
    """Stands in for a supervisor: records the ChildExit reports it is told."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_receive(self, message):
        self.seen.append(message)

    def reports(self):
        return list(self.seen)


def probe_reports(probe):
    return probe.proxy().reports().get()


@pytest.mark.parametrize("case,reason,error", [
    ("stop", "normal", None),
    ("quit", "normal", None),
    ("crash", "failure", "a crashed"),
    ("fail_start", "failure", "a cannot start"),
    ("fail_stop", "failure", "a failed while stopping"),
    ("fail_on_failure", "failure", "a crashed"),
])
def test_supervised_reports_its_end_once(journal, case, reason, error):
    probe = Probe.start()
    link = Link(probe, "a", 7)
    kw = {k: True for k in ("fail_start", "fail_stop", "fail_on_failure") if k == case}
    ref = Worker.start(link, "a", journal, **kw)
    if case in ("stop", "fail_stop"):
        ref.stop(timeout=10)
    elif case == "quit":
        ref.tell("quit")
    elif case in ("crash", "fail_on_failure"):
        ref.tell("crash")
    assert link.ended.wait(10)
    [report] = wait_for(lambda: probe_reports(probe), what="report")
    assert (report.child_id, report.generation, report.reason) == ("a", 7, reason)
    assert (str(report.error) if report.error else None) == error
    assert probe_reports(probe) == [report]


def test_standalone_supervised_actor_reports_to_nobody(journal):
    ref = Worker.start(None, "solo", journal)
    ref.tell("crash")
    wait_for(lambda: not ref.is_alive(), what="actor dead")


# -- validation ---------------------------------------------------------------------------------------


def test_invalid_specs_and_flags_fail_with_clear_errors():
    with pytest.raises(ValueError, match="restart='sometimes'"):
        ChildSpec("a", lambda link: None, restart="sometimes")
    with pytest.raises(ValueError, match="type='thing'"):
        ChildSpec("a", lambda link: None, type="thing")
    with pytest.raises(ValueError, match="shutdown"):
        ChildSpec("a", lambda link: None, shutdown=-1)
    with pytest.raises(ValueError, match="strategy='one_for_some'"):
        Supervisor.start(None, strategy="one_for_some")
    with pytest.raises(ValueError, match=r"duplicate child ids \['a'\]"):
        Supervisor.start(None, children=[ChildSpec("a", lambda link: None), ChildSpec("a", lambda link: None)])
    with pytest.raises(ValueError, match="intensity"):
        Supervisor.start(None, intensity=-1)


def test_a_plain_pykka_child_is_started_and_stopped_in_order(journal, clock, caplog):
    """A child that is not Supervised never reports its end; it is still started, waited for, stopped."""
    caplog.set_level(logging.DEBUG, logger="daemon.supervisor")
    gate = threading.Event()

    class Plain(pykka.ThreadingActor):
        def __init__(self, name, stuck):
            super().__init__()
            self.name, self.stuck = name, stuck

        def on_start(self):
            journal.add("start", self.name)

        def on_stop(self):
            journal.add("stop", self.name)
            if self.stuck:
                gate.wait(30)

    try:
        sup = start_sup([ChildSpec("p1", lambda link: Plain.start("p1", False)),
                         ChildSpec("p2", lambda link: Plain.start("p2", True), shutdown=0.2)], clock)
        assert list(refs(sup)) == ["p1", "p2"]  # answered once the supervisor's on_start is over
        assert journal.items("start") == ["p1", "p2"]
        sup.stop(timeout=10)
        assert journal.items("stop") == ["p2", "p1"]
        assert abandoned_ids(caplog) == ["p2"]
    finally:
        gate.set()
