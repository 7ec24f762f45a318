"""Reconciler: store vs live children, adoption, orphans, outages, invalid documents.

Real SqliteStore and real supervisors/BotActors; the backend is tests.fakes.FakeBackend (it counts
starts and stops). The store outage is injected by ``FlakyStore``, a wrapper over the real store that
raises StoreUnavailable while switched off (the real Mongo outage is tested in tests/integration).
Time is a ManualClock: the periodic pass runs when the test advances it.
"""
from __future__ import annotations


from actors.backends.base import Handle
from actors.bot import BotActor
from actors.config import RestartDefaults
from actors.directory import Directory
from actors.messages import REALTIME, GetStatus
from actors.reconciler import Readiness, ReconcileNow, Reconciler, SyncOne
from actors.status import StatusBoard
from actors.stores.base import BOTS, StoreUnavailable
from actors.stores.sqlite import SqliteStore
from daemon.clock import ManualClock
from daemon.supervisor import ChildSpec, Supervisor
from tests.fakes import FakeBackend, bot_doc, defn


class FlakyStore:
    def __init__(self, inner):
        self.inner = inner
        self.down = False

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            if self.down:
                raise StoreUnavailable("connection refused (test outage)")
            return attr(*a, **kw)

        return call


class World:
    def __init__(self, tmp_path, backend=None, interval=30.0):
        self.clock = ManualClock()
        self.store = FlakyStore(SqliteStore(tmp_path / "db.sqlite"))
        self.backend = backend or FakeBackend()
        self.board = StatusBoard()
        self.directory = Directory()
        self.bots = Supervisor.start(None, [], clock=self.clock, intensity=50, name="bots")
        self.schedules = Supervisor.start(None, [], clock=self.clock, intensity=50, name="schedules")
        self.interval = interval

    def child_spec(self, kind, d, adopt):
        return ChildSpec(d.id, lambda link: BotActor.start(
            link, d, self.backend, self.clock, RestartDefaults(), self.board, self.directory, adopt=adopt))

    def start(self):
        self.rec = Reconciler.start(None, self.store, self.backend, self.clock, self.interval,
                                    lambda kind: self.bots if kind == REALTIME else self.schedules,
                                    self.child_spec, self.board.remove)
        self.rec.ask(Readiness())  # on_start done
        return self

    def settle(self):
        """Deliver the first pass (due at once) and wait until the reconciler handled it."""
        self.clock.advance(0.001)
        return self.rec.ask(Readiness())

    def tick(self):
        self.clock.advance(self.interval + 0.001)
        return self.rec.ask(Readiness())

    def children(self):
        return sorted(cid for cid, ref in self.bots.proxy().which_children().get() if ref is not None)


def test_first_pass_starts_enabled_bots_only(tmp_path):
    w = World(tmp_path)
    w.store.create_doc(BOTS, bot_doc("a"))
    w.store.create_doc(BOTS, bot_doc("b"))
    off = bot_doc("c")
    off["config"]["enabled"] = False
    w.store.create_doc(BOTS, off)
    off2 = bot_doc("d")
    off2["enabled"] = False
    w.store.create_doc(BOTS, off2)
    w.start()
    w.settle()
    assert w.rec.ask(Readiness()) == (True, "")
    assert w.children() == ["a", "b"]
    assert sorted(s.bot.id for s in w.backend.started) == ["a", "b"]


def test_document_inserted_or_deleted_directly_is_applied_within_one_period(tmp_path):
    w = World(tmp_path).start()
    w.settle()
    w.store.inner.create_doc(BOTS, bot_doc("late"))  # no event, straight into the store
    w.tick()
    assert w.children() == ["late"]
    w.store.inner.delete_doc(BOTS, "late")
    w.tick()
    assert w.children() == [] and len(w.backend.stopped) == 1
    assert w.board.get("late") is None


def test_sync_one_acts_at_once(tmp_path):
    w = World(tmp_path).start()
    w.settle()
    w.store.create_doc(BOTS, bot_doc("x"))
    w.rec.ask(SyncOne(REALTIME, "x"))
    assert w.children() == ["x"]
    doc = bot_doc("x", symbol="ETH")
    w.store.upsert_doc(BOTS, doc)
    w.rec.ask(SyncOne(REALTIME, "x"))
    w.bots.proxy().child("x").get().ask(GetStatus())
    assert len(w.backend.stopped) == 1 and len(w.backend.started) == 2  # replaced once
    w.rec.ask(SyncOne(REALTIME, "x"))
    w.rec.ask(ReconcileNow())
    assert len(w.backend.started) == 2  # nothing more


def test_adopts_running_tasks_and_removes_orphans(tmp_path):
    be = FakeBackend()
    keep = Handle("a", "realtime", "task-a", defn("a").config_hash)
    orphan = Handle("gone", "realtime", "task-gone", "x")
    be.running = {"a": keep, "gone": orphan}
    w = World(tmp_path, be)
    w.store.create_doc(BOTS, bot_doc("a"))
    w.start()
    w.settle()
    w.rec.ask(Readiness())
    assert w.children() == ["a"]
    assert be.started == []  # adopted, not started again
    assert be.stopped == [orphan] and be.removed == [orphan]
    assert w.bots.proxy().child("a").get().ask(GetStatus())["state"] == "running"


def test_store_outage_changes_nothing_and_recovers(tmp_path):
    w = World(tmp_path)
    w.store.create_doc(BOTS, bot_doc("a"))
    w.start()
    w.settle()
    assert w.children() == ["a"]
    w.store.down = True
    ready, why = w.tick()
    assert not ready and "store unavailable" in why
    assert w.children() == ["a"] and w.backend.stopped == []
    w.store.down = False
    assert w.tick() == (True, "")
    assert w.children() == ["a"] and len(w.backend.started) == 1


def test_outage_at_start_does_not_remove_adoptable_tasks(tmp_path):
    be = FakeBackend()
    h = Handle("a", "realtime", "task-a", defn("a").config_hash)
    be.running = {"a": h}
    w = World(tmp_path, be)
    w.store.inner.create_doc(BOTS, bot_doc("a"))
    w.store.down = True
    w.start()
    w.settle()
    assert w.rec.ask(Readiness())[0] is False
    assert be.stopped == [] and w.children() == []
    w.store.down = False
    w.tick()
    assert w.children() == ["a"] and be.started == [] and be.stopped == []


def test_invalid_document_keeps_the_running_bot(tmp_path):
    w = World(tmp_path)
    w.store.create_doc(BOTS, bot_doc("a"))
    w.start()
    w.settle()
    bad = bot_doc("a")
    bad["custom"]["config"]["runtime"] = "cobol"
    w.store.inner.upsert_doc(BOTS, bad)  # edited straight in the store
    w.tick()
    assert w.children() == ["a"] and w.backend.stopped == [] and len(w.backend.started) == 1


def test_dead_child_is_started_again_by_the_next_pass(tmp_path):
    w = World(tmp_path)
    w.store.create_doc(BOTS, bot_doc("a"))
    w.start()
    w.settle()
    w.bots.proxy().terminate_child("a").get()  # as if its supervisor gave up on it
    assert w.children() == []
    w.tick()
    assert w.children() == ["a"]
