"""The embedded desired-state store: one SQLite file (``THE0_DATA_DIR/runtime.db``) in WAL mode.

Documents are kept as JSON text keyed by (collection, id); bot status by bot id; scheduled runs by run id,
the table's PRIMARY KEY, so ``claim_run`` succeeds once per run id even when several store instances (or
processes) share the file. One connection per store, serialised by a lock, so any thread may call it.

Errors: a locked or unreadable database raises ``StoreUnavailable`` (retry later); a document that is not
JSON raises ``StoreError``. Every write is one transaction: nothing is half-written.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from actors.stores.base import SCHEDULES, Store, StoreError, StoreUnavailable, check_collection, doc_id, run_keys
from daemon.jsonlog import event

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS status (
    bot_id TEXT PRIMARY KEY,
    body   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    schedule_id  TEXT NOT NULL,
    scheduled_at,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_schedule ON runs (schedule_id, scheduled_at DESC);
"""

BUSY_TIMEOUT_S = 5.0


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not JSON-serialisable: {e}") from None


class SqliteStore(Store):
    """``Store`` over one SQLite file; ``path`` is created (with its parent directory) when missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"cannot open the sqlite store at {self.path}: {e}; check the path and disk") from None
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------------------
    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a write runs in one IMMEDIATE transaction (all or nothing)."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the sqlite store at {self.path} is closed")
            try:
                if write:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                else:
                    yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"sqlite store {self.path}: {e}; retry later") from None
            except sqlite3.Error as e:
                raise StoreError(f"sqlite store {self.path}: {e}") from None

    # --- desired state ------------------------------------------------------------------------------
    def list_docs(self, collection: str) -> list[dict[str, Any]]:
        check_collection(collection)
        with self._conn() as db:
            rows = db.execute("SELECT body FROM docs WHERE collection = ? ORDER BY id", (collection,)).fetchall()
        # one parse of one JSON array is markedly cheaper than one parse per document
        return json.loads("[" + ",".join([body for (body,) in rows]) + "]")

    def get_doc(self, collection: str, doc_id_: str) -> dict[str, Any] | None:
        check_collection(collection)
        with self._conn() as db:
            row = db.execute("SELECT body FROM docs WHERE collection = ? AND id = ?", (collection, doc_id_)).fetchone()
        return json.loads(row[0]) if row else None

    def create_doc(self, collection: str, doc: dict[str, Any]) -> bool:
        check_collection(collection)
        key = doc_id(doc)
        body = _dumps(doc, f"document {key!r}")
        with self._conn(write=True) as db:
            cur = db.execute(
                "INSERT INTO docs (collection, id, body) VALUES (?, ?, ?) ON CONFLICT (collection, id) DO NOTHING",
                (collection, key, body),
            )
            return cur.rowcount == 1

    def upsert_doc(self, collection: str, doc: dict[str, Any]) -> None:
        check_collection(collection)
        key = doc_id(doc)
        _dumps(doc, f"document {key!r}")  # refuse what is not JSON before touching anything
        with self._conn(write=True) as db:
            # Like Mongo's $set: the top-level fields of ``doc`` replace the stored ones, others stay.
            row = db.execute("SELECT body FROM docs WHERE collection = ? AND id = ?", (collection, key)).fetchone()
            merged = {**json.loads(row[0]), **doc} if row else doc
            db.execute(
                "INSERT INTO docs (collection, id, body) VALUES (?, ?, ?)"
                " ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
                (collection, key, _dumps(merged, f"document {key!r}")),
            )

    def delete_doc(self, collection: str, doc_id_: str) -> bool:
        check_collection(collection)
        with self._conn(write=True) as db:
            cur = db.execute("DELETE FROM docs WHERE collection = ? AND id = ?", (collection, doc_id_))
            return cur.rowcount == 1

    def set_next_execution(self, schedule_id: str, when: float | None) -> None:
        with self._conn(write=True) as db:
            row = db.execute(
                "SELECT body FROM docs WHERE collection = ? AND id = ?", (SCHEDULES, schedule_id)
            ).fetchone()
            if row is None:
                event(log, "store.next_execution.missing", level=logging.WARNING, schedule_id=schedule_id)
                return
            doc = json.loads(row[0])
            if when is None:
                doc.pop("next_execution_time", None)
            else:
                doc["next_execution_time"] = int(when)
            db.execute(
                "UPDATE docs SET body = ? WHERE collection = ? AND id = ?",
                (_dumps(doc, f"schedule {schedule_id!r}"), SCHEDULES, schedule_id),
            )

    # --- runtime-owned records ----------------------------------------------------------------------
    def put_status(self, bot_id: str, status: dict[str, Any]) -> None:
        body = _dumps(status, f"status of {bot_id!r}")
        with self._conn(write=True) as db:
            db.execute(
                "INSERT INTO status (bot_id, body) VALUES (?, ?) ON CONFLICT (bot_id) DO UPDATE SET body = excluded.body",
                (bot_id, body),
            )

    def get_status(self, bot_id: str) -> dict[str, Any] | None:
        with self._conn() as db:
            row = db.execute("SELECT body FROM status WHERE bot_id = ?", (bot_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_status(self, bot_id: str) -> None:
        with self._conn(write=True) as db:
            db.execute("DELETE FROM status WHERE bot_id = ?", (bot_id,))

    def claim_run(self, run: dict[str, Any]) -> bool:
        run_id, schedule_id = run_keys(run)
        body = _dumps(run, f"run {run_id!r}")
        try:
            with self._conn(write=True) as db:
                db.execute(
                    "INSERT INTO runs (run_id, schedule_id, scheduled_at, body) VALUES (?, ?, ?, ?)",
                    (run_id, schedule_id, run.get("scheduled_at"), body),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def finish_run(self, run_id: str, fields: dict[str, Any]) -> None:
        with self._conn(write=True) as db:
            row = db.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                event(log, "store.finish_run.missing", level=logging.WARNING, run_id=run_id)
                return
            run = json.loads(row[0])
            run.update({k: v for k, v in fields.items() if k not in ("run_id", "schedule_id")})
            db.execute("UPDATE runs SET body = ? WHERE run_id = ?", (_dumps(run, f"run {run_id!r}"), run_id))

    def list_runs(self, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._conn() as db:
            rows = db.execute(
                "SELECT body FROM runs WHERE schedule_id = ? ORDER BY scheduled_at DESC, run_id DESC LIMIT ?",
                (schedule_id, max(0, int(limit))),
            ).fetchall()
        return [json.loads(body) for (body,) in rows]

    def ping(self) -> None:
        with self._conn() as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

