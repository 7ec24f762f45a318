"""The MongoDB desired-state store (pymongo), over the0's own databases and documents.

Collections:
- ``<bots_db>.bots`` and ``<schedules_db>.bot_schedules``: the0's documents, found by their ``id`` field.
  Documents written by the0 (with their own ``_id``, datetimes, extra fields) are read as they are and
  returned JSON-able: ``_id`` dropped, datetimes as ISO-8601 UTC strings, ObjectIds as hex strings.
  ``upsert_doc`` replaces a document in place and keeps its ``_id``.
- ``<bots_db>.runtime_status``: one record per bot, ``_id`` = bot id.
- ``<schedules_db>.runtime_runs``: one record per scheduled run, ``_id`` = run id (plus a unique index on
  ``run_id`` and an index on (schedule_id, scheduled_at desc)); an insert that meets an existing run id
  fails with E11000, so ``claim_run`` is True for exactly one caller across every runtime.

Every operation touches one document (or reads), so nothing is half-written. A server that cannot be
reached surfaces within about ``SELECT_TIMEOUT_MS`` as ``StoreUnavailable``. Indexes are created on first
use and retried on later calls while the server is down. Only plain CRUD, ``createIndexes`` and ``ping``
are used: no change streams and no ``buildinfo`` (so the Mongo wire server of the tests serves it too).
"""
from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import uuid
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Iterator

import pymongo
from bson import Binary, Decimal128, ObjectId
from bson.errors import BSONError
from pymongo import errors as perr

from actors.stores.base import BOTS, SCHEDULES, Store, StoreError, StoreUnavailable, check_collection, doc_id, run_keys
from daemon.jsonlog import event

log = logging.getLogger(__name__)

BOTS_COLLECTION = "bots"
SCHEDULES_COLLECTION = "bot_schedules"
STATUS_COLLECTION = "runtime_status"
RUNS_COLLECTION = "runtime_runs"

SELECT_TIMEOUT_MS = 2000  # how long an operation waits for a reachable server before StoreUnavailable
CONNECT_TIMEOUT_MS = 5000  # also the heartbeat's timeout: a busy server is not taken for a dead one
SOCKET_TIMEOUT_MS = 15000  # a server that stops answering mid-operation


_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))


def plain(value: Any) -> Any:
    """``value`` with BSON-only types turned into JSON types (datetime -> ISO string, ObjectId -> str)."""
    t = type(value)
    if t is dict:
        return {k: v if type(v) in _JSON_SCALARS else plain(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _JSON_SCALARS else plain(v) for v in value]
    if t in _JSON_SCALARS:
        return value
    return _plain_other(value)


def _plain_other(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)):  # Int64 and other subclasses
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4):
        return str(value.as_uuid(value.subtype))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


def _without_id(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


def _with_default_timeouts(uri: str) -> dict[str, Any]:
    """Client options that make an outage visible quickly, unless the URI sets them itself."""
    opts = {
        "serverSelectionTimeoutMS": SELECT_TIMEOUT_MS,
        "connectTimeoutMS": CONNECT_TIMEOUT_MS,
        "socketTimeoutMS": SOCKET_TIMEOUT_MS,
    }
    query = uri.partition("?")[2].lower()
    return {k: v for k, v in opts.items() if k.lower() + "=" not in query}


class MongoStore(Store):
    """``Store`` over MongoDB at ``uri``; ``bots_db``/``schedules_db`` are the0's database names."""

    def __init__(self, uri: str, bots_db: str = "bot_runner", schedules_db: str = "bot_scheduler", **client_options: Any):
        try:
            self._client: pymongo.MongoClient = pymongo.MongoClient(
                uri, tz_aware=True, appname="the0-runtime", **{**_with_default_timeouts(uri), **client_options}
            )
        except (perr.ConfigurationError, perr.InvalidURI, ValueError, TypeError) as e:
            raise StoreError(f"MONGO_URI is not usable: {e}") from None
        self._docs = {
            BOTS: self._client[bots_db][BOTS_COLLECTION],
            SCHEDULES: self._client[schedules_db][SCHEDULES_COLLECTION],
        }
        self._status = self._client[bots_db][STATUS_COLLECTION]
        self._runs = self._client[schedules_db][RUNS_COLLECTION]
        self._index_lock = threading.Lock()
        self._indexes_pending = [
            (self._docs[BOTS], [("id", pymongo.ASCENDING)], {"unique": True}),
            (self._docs[SCHEDULES], [("id", pymongo.ASCENDING)], {"unique": True}),
            (self._runs, [("run_id", pymongo.ASCENDING)], {"unique": True}),
            (self._runs, [("schedule_id", pymongo.ASCENDING), ("scheduled_at", pymongo.DESCENDING)], {}),
        ]

    # --- plumbing -----------------------------------------------------------------------------------
    @contextmanager
    def _op(self, what: str) -> Iterator[None]:
        """Run one operation: indexes first (while pending); pymongo errors become store errors."""
        try:
            self._ensure_indexes()
            yield
        except perr.ConnectionFailure as e:  # AutoReconnect, ServerSelectionTimeoutError, NetworkTimeout
            raise StoreUnavailable(f"MongoDB unreachable during {what}: {_short(e)}; retry later") from None
        except perr.PyMongoError as e:
            raise StoreError(f"MongoDB {what} failed: {_short(e)}") from None
        except (BSONError, TypeError, ValueError) as e:  # InvalidDocument, keys that are not str
            raise StoreError(f"MongoDB {what}: cannot encode the document: {e}") from None

    def _ensure_indexes(self) -> None:
        if not self._indexes_pending:
            return
        with self._index_lock:
            while self._indexes_pending:
                coll, keys, opts = self._indexes_pending[0]
                try:
                    coll.create_index(keys, **opts)
                except perr.OperationFailure as e:
                    # Existing duplicates, an index of that name with other options, no privilege: the
                    # store still works (create_doc upserts by id), so warn once and go on.
                    event(
                        log, "store.index.not_created", level=logging.WARNING,
                        collection=coll.full_name, keys=str(keys), error=_short(e),
                    )
                self._indexes_pending.pop(0)

    # --- desired state ------------------------------------------------------------------------------
    def list_docs(self, collection: str) -> list[dict[str, Any]]:
        coll = self._docs[check_collection(collection)]
        out: list[dict[str, Any]] = []
        skipped = 0
        with self._op(f"list {coll.full_name}"):
            for raw in coll.find({}, {"_id": 0}):
                if not isinstance(raw.get("id"), str) or not raw["id"]:
                    skipped += 1
                    continue
                out.append(plain(raw))
        if skipped:
            event(log, "store.docs.without_id", level=logging.WARNING, collection=coll.full_name, count=skipped)
        return out

    def get_doc(self, collection: str, doc_id_: str) -> dict[str, Any] | None:
        coll = self._docs[check_collection(collection)]
        with self._op(f"get {coll.full_name} {doc_id_}"):
            raw = coll.find_one({"id": doc_id_}, {"_id": 0})
        return plain(raw) if raw is not None else None

    def create_doc(self, collection: str, doc: dict[str, Any]) -> bool:
        coll = self._docs[check_collection(collection)]
        key = doc_id(doc)
        with self._op(f"create {coll.full_name} {key}"):
            try:
                res = coll.update_one({"id": key}, {"$setOnInsert": _without_id(doc)}, upsert=True)
            except perr.DuplicateKeyError:  # a concurrent create won the unique index
                return False
            return res.upserted_id is not None

    def upsert_doc(self, collection: str, doc: dict[str, Any]) -> None:
        coll = self._docs[check_collection(collection)]
        key = doc_id(doc)
        with self._op(f"upsert {coll.full_name} {key}"):
            # Top-level fields of the event replace the stored ones; fields the event does not carry
            # (the0's own bookkeeping: userId, name, createdAt...) are kept, and so is its _id.
            update = {"$set": _without_id(doc)}
            try:
                coll.update_one({"id": key}, update, upsert=True)
            except perr.DuplicateKeyError:  # two upserts raced to insert: the document exists now
                coll.update_one({"id": key}, update, upsert=True)

    def delete_doc(self, collection: str, doc_id_: str) -> bool:
        coll = self._docs[check_collection(collection)]
        with self._op(f"delete {coll.full_name} {doc_id_}"):
            return coll.delete_one({"id": doc_id_}).deleted_count == 1

    def set_next_execution(self, schedule_id: str, when: float | None) -> None:
        coll = self._docs[SCHEDULES]
        update = {"$unset": {"next_execution_time": ""}} if when is None else {"$set": {"next_execution_time": int(when)}}
        with self._op(f"set next_execution_time of {schedule_id}"):
            res = coll.update_one({"id": schedule_id}, update)
        if res.matched_count == 0:
            event(log, "store.next_execution.missing", level=logging.WARNING, schedule_id=schedule_id)

    # --- runtime-owned records ----------------------------------------------------------------------
    def put_status(self, bot_id: str, status: dict[str, Any]) -> None:
        with self._op(f"put status of {bot_id}"):
            self._status.replace_one({"_id": bot_id}, _without_id(status), upsert=True)

    def get_status(self, bot_id: str) -> dict[str, Any] | None:
        with self._op(f"get status of {bot_id}"):
            raw = self._status.find_one({"_id": bot_id}, {"_id": 0})
        return plain(raw) if raw is not None else None

    def delete_status(self, bot_id: str) -> None:
        with self._op(f"delete status of {bot_id}"):
            self._status.delete_one({"_id": bot_id})

    def claim_run(self, run: dict[str, Any]) -> bool:
        run_id, _ = run_keys(run)
        with self._op(f"claim run {run_id}"):
            try:
                self._runs.insert_one({**_without_id(run), "_id": run_id})
            except perr.DuplicateKeyError:
                return False
        return True

    def finish_run(self, run_id: str, fields: dict[str, Any]) -> None:
        update = {k: v for k, v in fields.items() if k not in ("_id", "run_id", "schedule_id")}
        if not update:
            return
        with self._op(f"finish run {run_id}"):
            res = self._runs.update_one({"_id": run_id}, {"$set": update})
        if res.matched_count == 0:
            event(log, "store.finish_run.missing", level=logging.WARNING, run_id=run_id)

    def list_runs(self, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
        limit = int(limit)
        if limit <= 0:  # Mongo reads limit 0 as "no limit"
            return []
        with self._op(f"list runs of {schedule_id}"):
            cur = (
                self._runs.find({"schedule_id": schedule_id}, {"_id": 0})
                .sort([("scheduled_at", pymongo.DESCENDING), ("run_id", pymongo.DESCENDING)])
                .limit(limit)
            )
            return [plain(r) for r in cur]

    def ping(self) -> None:
        with self._op("ping"):
            self._client.admin.command("ping")

    def close(self) -> None:
        self._client.close()


def _short(e: BaseException) -> str:
    """pymongo's messages can carry a whole topology description; keep the first line, bounded."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split(", Topology Description:")[0]
    return text if len(text) <= 300 else text[:297] + "..."
