"""The status board: every actor's latest status, readable without asking the actor.

Actors ``publish`` their status on every transition; ``ctl list`` and ``ctl status`` read the board, so a
busy actor (starting a container) never delays an operator's request. A ``StatusWriter`` thread copies
changed entries to the store in the background, so a slow or absent store never blocks an actor.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from actors.stores.base import Store, StoreError
from daemon.jsonlog import event

log = logging.getLogger(__name__)


class StatusBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[tuple[str, str], dict[str, Any]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._removed: set[tuple[str, str]] = set()

    def publish(self, kind: str, bot_id: str, status: dict[str, Any]) -> None:
        key = (kind, bot_id)
        with self._lock:
            self._status[key] = dict(status, id=bot_id, kind=kind)
            self._dirty.add(key)
            self._removed.discard(key)

    def remove(self, kind: str, bot_id: str) -> None:
        key = (kind, bot_id)
        with self._lock:
            self._status.pop(key, None)
            self._dirty.discard(key)
            self._removed.add(key)

    def get(self, bot_id: str, kind: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            for k in ((kind,) if kind else ("realtime", "scheduled")):
                s = self._status.get((k, bot_id))
                if s is not None:
                    return dict(s)
        return None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(v) for _, v in sorted(self._status.items())]

    def count(self, kind: str | None = None, state: str | None = None) -> int:
        with self._lock:
            return sum(
                1 for (k, _), v in self._status.items()
                if (kind is None or k == kind) and (state is None or v.get("state") == state)
            )

    def take_changes(self) -> tuple[dict[tuple[str, str], dict[str, Any]], set[tuple[str, str]]]:
        with self._lock:
            changed = {k: dict(self._status[k]) for k in self._dirty}
            removed = set(self._removed)
            self._dirty.clear()
            self._removed.clear()
        return changed, removed

    def mark_dirty(self, keys: set[tuple[str, str]], removed: set[tuple[str, str]]) -> None:
        """Put back what a failed write did not store, unless a newer change superseded it."""
        with self._lock:
            self._dirty.update(k for k in keys if k in self._status)
            self._removed.update(k for k in removed if k not in self._status)


class StatusWriter:
    """Copies board changes to the store every ``interval`` seconds from one thread; retries on outage."""

    def __init__(self, board: StatusBoard, store: Store, interval: float = 1.0) -> None:
        self.board = board
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)

    def start(self) -> "StatusWriter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.flush()

    def flush(self) -> bool:
        changed, removed = self.board.take_changes()
        done: set[tuple[str, str]] = set()
        gone: set[tuple[str, str]] = set()
        try:
            for key, status in changed.items():
                self.store.put_status(key[1], status)
                done.add(key)
            for key in removed:
                self.store.delete_status(key[1])
                gone.add(key)
            return True
        except StoreError as e:
            self.board.mark_dirty(set(changed) - done, removed - gone)
            event(log, "status.write_failed", logging.WARNING, error=str(e), pending=len(changed) - len(done))
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
