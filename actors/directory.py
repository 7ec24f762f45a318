"""Who owns which bot: routes backend events (exits, cluster status) to the owning actor.

BotActors and ScheduleActors register themselves in ``on_start`` and leave in ``on_stop``/``on_failure``.
The backend's single event source calls ``route_exit``; an exit nobody owns (a bot deleted meanwhile) is
logged and dropped: the reconciler cleans up what is left.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import pykka

from actors.backends.base import ExitResult, Handle
from actors.messages import ClusterStatus, Exited
from daemon.jsonlog import event

log = logging.getLogger(__name__)


class Directory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[str, str], pykka.ActorRef] = {}

    def register(self, kind: str, bot_id: str, ref: pykka.ActorRef) -> None:
        with self._lock:
            self._owners[(kind, bot_id)] = ref

    def unregister(self, kind: str, bot_id: str, ref: pykka.ActorRef) -> None:
        with self._lock:
            if self._owners.get((kind, bot_id)) is ref:
                del self._owners[(kind, bot_id)]

    def owner(self, kind: str, bot_id: str) -> pykka.ActorRef | None:
        with self._lock:
            return self._owners.get((kind, bot_id))

    def tell(self, kind: str, bot_id: str, message: Any) -> bool:
        ref = self.owner(kind, bot_id)
        if ref is None:
            return False
        try:
            ref.tell(message)
            return True
        except pykka.ActorDeadError:
            return False

    def route_exit(self, handle: Handle, result: ExitResult) -> None:
        msg = Exited(handle.bot_id, handle.run_id, result.code, result.reason, result.oom_killed, handle.ref)
        if not self.tell(handle.kind, handle.bot_id, msg):
            event(log, "exit.unowned", bot_id=handle.bot_id, run_id=handle.run_id, code=result.code)

    def route_status(self, bot_id: str, status: dict) -> None:
        self.tell("realtime", bot_id, ClusterStatus(status))
