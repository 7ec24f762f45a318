"""The desired-state store interface (sqlite embedded, MongoDB in production).

Desired state is the0's documents as the0's API writes them: ``bots`` (realtime) and ``schedules``. The
store keeps them as plain dicts (``id`` is the key; Mongo's ``_id`` never leaks out). Runtime-owned
records live beside them: bot status, and scheduled runs keyed by their deterministic run id, which is
unique, so ``claim_run`` succeeds once per run across every runtime sharing the store.
"""
from __future__ import annotations

import abc
from typing import Any

BOTS = "bots"
SCHEDULES = "schedules"
COLLECTIONS = (BOTS, SCHEDULES)


class StoreError(Exception):
    """A store operation failed for a reason retrying will not fix (bad document)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; retry later. Nothing was changed."""


def check_collection(collection: str) -> str:
    """Return ``collection`` when it is BOTS or SCHEDULES; StoreError otherwise."""
    if collection not in COLLECTIONS:
        raise StoreError(f"unknown collection {collection!r}; use one of {', '.join(COLLECTIONS)}")
    return collection


def doc_id(doc: Any) -> str:
    """The ``id`` of a desired-state document; StoreError when it is not a dict with a non-empty str id."""
    if not isinstance(doc, dict):
        raise StoreError(f"a document must be a JSON object, got {type(doc).__name__}")
    value = doc.get("id")
    if not isinstance(value, str) or not value:
        raise StoreError(f"a document needs a non-empty string 'id', got {value!r}")
    return value


def run_keys(run: Any) -> tuple[str, str]:
    """(run_id, schedule_id) of a run record; StoreError when either is not a non-empty str."""
    if not isinstance(run, dict):
        raise StoreError(f"a run must be a dict, got {type(run).__name__}")
    run_id, schedule_id = run.get("run_id"), run.get("schedule_id")
    if not isinstance(run_id, str) or not run_id or not isinstance(schedule_id, str) or not schedule_id:
        raise StoreError(f"a run needs non-empty string run_id and schedule_id, got {run_id!r}, {schedule_id!r}")
    return run_id, schedule_id


class Store(abc.ABC):
    # --- desired state: ``collection`` is BOTS or SCHEDULES --------------------------------------
    @abc.abstractmethod
    def list_docs(self, collection: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def get_doc(self, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def create_doc(self, collection: str, doc: dict[str, Any]) -> bool:
        """Insert unless a document with this id exists; True when inserted."""

    @abc.abstractmethod
    def upsert_doc(self, collection: str, doc: dict[str, Any]) -> None:
        """Insert, or replace the top-level fields ``doc`` carries; other stored fields are kept."""

    @abc.abstractmethod
    def delete_doc(self, collection: str, doc_id: str) -> bool:
        """True when a document was removed."""

    @abc.abstractmethod
    def set_next_execution(self, schedule_id: str, when: float | None) -> None:
        """Keep the0's ``next_execution_time`` (unix seconds) of a schedule up to date."""

    # --- runtime-owned records --------------------------------------------------------------------
    @abc.abstractmethod
    def put_status(self, bot_id: str, status: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def get_status(self, bot_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def delete_status(self, bot_id: str) -> None: ...

    @abc.abstractmethod
    def claim_run(self, run: dict[str, Any]) -> bool:
        """Record a run before it starts. ``run`` has run_id, schedule_id, scheduled_at, started_at, owner.

        True when this call created the record; False when the run id exists (someone claimed it).
        """

    @abc.abstractmethod
    def finish_run(self, run_id: str, fields: dict[str, Any]) -> None:
        """Complete a run record: ended_at, exit_code, reason."""

    @abc.abstractmethod
    def list_runs(self, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Most recent first (by scheduled_at)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached (readiness)."""

    def close(self) -> None:
        pass
