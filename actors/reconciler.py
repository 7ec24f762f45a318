"""Reconciler: makes the live children match the desired state in the store.

On an event (``SyncOne``) it applies that one bot at once; every ``interval`` seconds (``Timer("tick")``)
it diffs the whole store against the live children, so a lost NATS message or a document edited straight
in the store is applied within one period.

Outages: when the store cannot be read, nothing is started or stopped (no orphan storm); readiness turns
false until a full pass succeeds again. A document that does not validate never stops a bot that runs:
it is logged, and the running bot keeps its last good definition.

Adoption: on start the reconciler lists what the backend already runs (``list_managed``) and hands each
running task to its new actor instead of starting a second one; tasks of bots no longer in the store are
stopped and removed, but only after the store was read successfully.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import pykka

from actors.backends.base import Backend, BackendError, Handle
from actors.messages import REALTIME, SCHEDULED, BotDefinition, InvalidDefinition, Reconfigure, Timer
from actors.stores.base import BOTS, SCHEDULES, Store, StoreError
from daemon.clock import Clock
from daemon.jsonlog import event
from daemon.supervisor import ChildSpec, Link, Supervised

log = logging.getLogger(__name__)

COLLECTION = {REALTIME: BOTS, SCHEDULED: SCHEDULES}


@dataclass(frozen=True)
class SyncOne:
    """Apply one bot's desired state now (after a NATS event wrote it to the store)."""

    kind: str
    bot_id: str


@dataclass(frozen=True)
class ReconcileNow:
    """Ask: run a full pass now and return its summary."""


@dataclass(frozen=True)
class Readiness:
    """Ask: (ready, reason)."""


class Reconciler(Supervised):
    def __init__(
        self,
        link: Link | None,
        store: Store,
        backend: Backend,
        clock: Clock,
        interval: float,
        supervisor_of: Callable[[str], pykka.ActorRef | None],
        child_spec: Callable[[str, BotDefinition, Callable[[str], Handle | None]], ChildSpec],
        on_removed: Callable[[str, str], None] = lambda kind, bot_id: None,
    ) -> None:
        super().__init__(link)
        self.store = store
        self.backend = backend
        self.clock = clock
        self.interval = interval
        self.supervisor_of = supervisor_of  # kind -> BotSupervisor / ScheduleSupervisor ref
        self.child_spec = child_spec  # (kind, definition, adopt) -> ChildSpec
        self.on_removed = on_removed  # (kind, id): a bot left the desired state (drop its status)
        self.live: dict[str, dict[str, BotDefinition]] = {REALTIME: {}, SCHEDULED: {}}
        self._fingerprints: dict[tuple[str, str], tuple[str, BotDefinition | None]] = {}
        self._adoptable: dict[str, Handle] = {}
        self._adoptable_runs: dict[str, list[Handle]] = {}
        self._runs_handed: set[str] = set()  # schedules whose first actor got its start-up runs
        self._orphan_candidates: list[Handle] = []
        self._adopted = False
        self.ready = False
        self.not_ready_reason = "first reconcile pending"
        self.passes = 0
        self._tick_token = 0

    def on_start(self) -> None:
        super().on_start()
        self._schedule_tick(0.0)

    # --- messages ----------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, SyncOne):
            return self._sync_one(message.kind, message.bot_id)
        if isinstance(message, Timer) and message.name == "tick":
            if message.token == self._tick_token:
                self._full_pass()
                self._schedule_tick(self.interval)
            return None
        if isinstance(message, ReconcileNow):
            return self._full_pass()
        if isinstance(message, Readiness):
            return (self.ready, self.not_ready_reason)
        return super().on_receive(message)

    def _schedule_tick(self, delay: float) -> None:
        self._tick_token += 1
        self.clock.call_later(delay, self.actor_ref, Timer("tick", self._tick_token))

    # --- adoption ----------------------------------------------------------------------------------
    def _load_adoptable(self) -> bool:
        try:
            handles = self.backend.list_managed()
        except BackendError as e:
            self._not_ready(f"backend unavailable: {e}")
            return False
        self._adoptable = {h.bot_id: h for h in handles if h.kind == REALTIME}
        self._adoptable_runs: dict[str, list[Handle]] = {}
        for h in handles:
            if h.kind != REALTIME:
                self._adoptable_runs.setdefault(h.bot_id, []).append(h)
        self._orphan_candidates = list(handles)
        self._adopted = True
        event(log, "reconcile.adoptable", realtime=len(self._adoptable), total=len(handles))
        return True

    def _take_adoptable(self, bot_id: str) -> Handle | None:
        # Called from the new BotActor's thread; dict.pop is atomic under the GIL.
        return self._adoptable.pop(bot_id, None)

    def _take_adoptable_runs(self, schedule_id: str) -> list[Handle]:
        """Runs of a schedule still going: its ScheduleActor adopts them. The first actor of a schedule
        gets them from the start-up listing; a replacement (after a crash) lists the backend again."""
        if schedule_id in self._adoptable_runs:
            self._runs_handed.add(schedule_id)
            return self._adoptable_runs.pop(schedule_id)
        if schedule_id not in self._runs_handed:
            self._runs_handed.add(schedule_id)
            return []
        try:
            return [h for h in self.backend.list_managed() if h.kind != REALTIME and h.bot_id == schedule_id]
        except BackendError as e:
            event(log, "reconcile.list_runs_failed", logging.WARNING, schedule_id=schedule_id, error=str(e))
            return []

    def _remove_orphans(self, desired: dict[str, set[str]]) -> None:
        for h in self._orphan_candidates:
            keep = h.bot_id in desired[REALTIME] if h.kind == REALTIME else h.bot_id in desired[SCHEDULED]
            if keep:
                continue
            event(log, "reconcile.orphan_removed", bot_id=h.bot_id, kind=h.kind, ref=h.ref)
            try:
                self.backend.stop(h, 10.0)
                self.backend.remove(h)
            except BackendError as e:
                event(log, "reconcile.orphan_remove_failed", logging.WARNING, bot_id=h.bot_id, error=str(e))
            if h.kind == REALTIME:
                self._adoptable.pop(h.bot_id, None)
            else:
                self._adoptable_runs.pop(h.bot_id, None)
        self._orphan_candidates = []

    # --- passes ------------------------------------------------------------------------------------
    def _not_ready(self, reason: str) -> None:
        if self.ready or reason != self.not_ready_reason:
            event(log, "reconcile.not_ready", logging.WARNING, reason=reason)
        self.ready = False
        self.not_ready_reason = reason

    def _definition(self, kind: str, doc: dict[str, Any]) -> BotDefinition | None:
        """Parse with a cache keyed by the document's canonical JSON, so an unchanged fleet costs little."""
        bot_id = str(doc.get("id"))
        try:
            fp = json.dumps(doc, sort_keys=True, default=str)
        except (TypeError, ValueError):
            fp = repr(doc)
        cached = self._fingerprints.get((kind, bot_id))
        if cached is not None and cached[0] == fp:
            return cached[1]
        try:
            defn = BotDefinition.from_document(doc, kind)
        except InvalidDefinition as e:
            event(log, "reconcile.invalid_document", logging.ERROR, bot_id=bot_id, kind=kind, error=str(e))
            defn = None
        self._fingerprints[(kind, bot_id)] = (fp, defn)
        return defn

    def _full_pass(self) -> dict[str, int]:
        if not self._adopted and not self._load_adoptable():
            return {"error": 1}
        desired: dict[str, dict[str, BotDefinition | None]] = {}
        try:
            for kind in (REALTIME, SCHEDULED):
                desired[kind] = {}
                for doc in self.store.list_docs(COLLECTION[kind]):
                    bot_id = str(doc.get("id"))
                    desired[kind][bot_id] = self._definition(kind, doc)
        except StoreError as e:
            self._not_ready(f"store unavailable: {e}")
            return {"error": 1}
        summary = {"started": 0, "stopped": 0, "reconfigured": 0}
        for kind in (REALTIME, SCHEDULED):
            self._forget_dead_children(kind)
            want = desired[kind]
            for bot_id, defn in want.items():
                summary_key = self._apply(kind, bot_id, defn, present=True)
                if summary_key:
                    summary[summary_key] += 1
            for bot_id in list(self.live[kind]):
                if bot_id not in want:
                    self._apply(kind, bot_id, None, present=False)
                    summary["stopped"] += 1
            for key in [k for k in self._fingerprints if k[0] == kind and k[1] not in want]:
                del self._fingerprints[key]
        # Keep tasks of enabled bots, and of bots whose document is invalid (never stop on bad input).
        self._remove_orphans({k: {i for i, d in v.items() if d is None or d.enabled} for k, v in desired.items()})
        self.ready = True
        self.not_ready_reason = ""
        self.passes += 1
        return summary

    def _forget_dead_children(self, kind: str) -> None:
        """Children lost with a restarted supervisor are no longer live: the pass starts them again."""
        sup = self.supervisor_of(kind)
        if sup is None:
            self.live[kind].clear()
            return
        try:
            alive = {cid for cid, ref in sup.proxy().which_children().get() if ref is not None}
        except pykka.ActorDeadError:
            alive = set()
        for bot_id in [b for b in self.live[kind] if b not in alive]:
            del self.live[kind][bot_id]

    def _sync_one(self, kind: str, bot_id: str) -> str | None:
        if not self._adopted and not self._load_adoptable():
            return None
        try:
            doc = self.store.get_doc(COLLECTION[kind], bot_id)
        except StoreError as e:
            self._not_ready(f"store unavailable: {e}")
            return None
        if doc is None:
            self._fingerprints.pop((kind, bot_id), None)
            return self._apply(kind, bot_id, None, present=False)
        return self._apply(kind, bot_id, self._definition(kind, doc), present=True)

    def _apply(self, kind: str, bot_id: str, defn: BotDefinition | None, present: bool) -> str | None:
        """Bring one child in line. Returns "started" / "stopped" / "reconfigured" or None."""
        live = self.live[kind].get(bot_id)
        if present and defn is None:
            return None  # invalid document: keep whatever runs as it is
        if defn is not None and defn.enabled:
            if live is None:
                return "started" if self._spawn(kind, defn) else None
            if live != defn:
                sup = self.supervisor_of(kind)
                child = sup.proxy().child(bot_id).get() if sup else None
                if child is None:
                    # Died and not restarted (intensity) or gone: start it again.
                    self.live[kind].pop(bot_id, None)
                    return "started" if self._spawn(kind, defn) else None
                child.tell(Reconfigure(defn))
                self.live[kind][bot_id] = defn
                return "reconfigured"
            return None
        if live is not None:
            self._terminate(kind, bot_id)
            return "stopped"
        return None

    def _spawn(self, kind: str, defn: BotDefinition) -> bool:
        sup = self.supervisor_of(kind)
        if sup is None:
            return False
        spec = self.child_spec(kind, defn, self._take_adoptable if kind == REALTIME else self._take_adoptable_runs)
        try:
            sup.proxy().start_child(spec).get()
        except ValueError:
            pass  # already a child (e.g. restarted by its supervisor): reconfigure on the next pass
        except pykka.ActorDeadError:
            return False
        self.live[kind][defn.id] = defn
        event(log, "reconcile.spawned", bot_id=defn.id, kind=kind)
        return True

    def _terminate(self, kind: str, bot_id: str) -> None:
        sup = self.supervisor_of(kind)
        self.live[kind].pop(bot_id, None)
        if sup is None:
            return
        try:
            sup.proxy().terminate_child(bot_id).get()
        except pykka.ActorDeadError:
            return
        if kind == SCHEDULED and self.backend.capabilities.fires_schedules:
            try:
                self.backend.remove_schedule(bot_id)
            except BackendError as e:
                event(log, "reconcile.remove_schedule_failed", logging.WARNING, bot_id=bot_id, error=str(e))
        self.on_removed(kind, bot_id)
        event(log, "reconcile.terminated", bot_id=bot_id, kind=kind)
