"""The desired-state store contract, run on both stores: SQLite (a file in tmp_path) and MongoDB (MONGO_URI
or the Mongo wire server; fresh database names per test). Mongo-only tests at the end: documents written
by the0 directly with pymongo, and an outage (server stopped, then started again).
"""
from __future__ import annotations

import datetime as dt
import threading

import pymongo
import pytest
from bson import ObjectId

from actors.config import Config
from actors.stores import BOTS, SCHEDULES, StoreError, StoreUnavailable, open_store
from actors.stores.mongo import MongoStore
from actors.stores.sqlite import SqliteStore
from tests.servers._util import wait_for
from tests.servers.mongo import fresh_db_names


def bot_doc(bot_id: str, version: str = "1.0.0", **extra) -> dict:
    doc = {
        "id": bot_id,
        "config": {"symbol": "BTC/USD", "interval": 60, "nested": {"a": [1, 2, {"b": None}]}},
        "custom": {
            "version": version,
            "filePath": f"user-1/{bot_id}/{version}.zip",
            "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py", "query": "query.py"}},
        },
    }
    doc.update(extra)
    return doc


def schedule_doc(schedule_id: str, cron: str = "*/5 * * * *") -> dict:
    doc = bot_doc(schedule_id)
    doc["config"].update({"schedule": cron, "timezone": "Europe/London"})
    doc["next_execution_time"] = 1_700_000_000
    return doc


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def new_store(request, tmp_path):
    """A factory of store instances on ONE database: each call is another "runtime" sharing it."""
    opened = []
    if request.param == "sqlite":
        path = tmp_path / "runtime.db"
        make = lambda: SqliteStore(path)  # noqa: E731
    else:
        uri = request.getfixturevalue("mongo_uri")
        names = request.getfixturevalue("mongo_db_names")
        make = lambda: MongoStore(uri, names.bots_db, names.schedules_db)  # noqa: E731

    def factory():
        store = make()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store):
    return new_store()


# --- desired state ---------------------------------------------------------------------------------

def test_get_missing_is_none(store):
    assert store.get_doc(BOTS, "nope") is None
    assert store.get_doc(SCHEDULES, "nope") is None
    assert store.list_docs(BOTS) == []


def test_create_skips_an_existing_id(store):
    assert store.create_doc(BOTS, bot_doc("b1", "1.0.0")) is True
    assert store.create_doc(BOTS, bot_doc("b1", "2.0.0")) is False
    assert store.get_doc(BOTS, "b1")["custom"]["version"] == "1.0.0"


def test_upsert_inserts_then_replaces_the_fields_it_carries(store):
    store.upsert_doc(BOTS, dict(bot_doc("b1", "1.0.0"), userId="u1", createdAt="2026-01-01"))
    assert store.get_doc(BOTS, "b1") == dict(bot_doc("b1", "1.0.0"), userId="u1", createdAt="2026-01-01")
    replacement = {"id": "b1", "config": {"x": 1}, "custom": {"version": "2.0.0", "filePath": "f.zip",
                                                               "config": {"runtime": "nodejs20",
                                                                          "entrypoints": {"bot": "main.js"}}}}
    store.upsert_doc(BOTS, replacement)
    # config and custom are replaced whole (old config keys gone); the0's own fields stay
    assert store.get_doc(BOTS, "b1") == dict(replacement, userId="u1", createdAt="2026-01-01")
    assert len(store.list_docs(BOTS)) == 1


def test_delete(store):
    store.create_doc(BOTS, bot_doc("b1"))
    assert store.delete_doc(BOTS, "b1") is True
    assert store.delete_doc(BOTS, "b1") is False
    assert store.get_doc(BOTS, "b1") is None


def test_list_keeps_collections_apart(store):
    for i in range(5):
        store.create_doc(BOTS, bot_doc(f"bot-{i}"))
    store.create_doc(SCHEDULES, schedule_doc("sched-1"))
    assert sorted(d["id"] for d in store.list_docs(BOTS)) == [f"bot-{i}" for i in range(5)]
    assert store.list_docs(SCHEDULES) == [schedule_doc("sched-1")]
    assert store.get_doc(BOTS, "sched-1") is None


def test_set_next_execution(store):
    store.create_doc(SCHEDULES, schedule_doc("s1"))
    store.set_next_execution("s1", 1_800_000_300.0)
    doc = store.get_doc(SCHEDULES, "s1")
    assert doc["next_execution_time"] == 1_800_000_300
    assert doc["config"]["schedule"] == "*/5 * * * *"  # the rest is untouched
    store.set_next_execution("s1", None)
    assert "next_execution_time" not in store.get_doc(SCHEDULES, "s1")
    store.set_next_execution("missing", 1.0)  # no schedule: nothing to update, no error
    assert store.get_doc(SCHEDULES, "missing") is None


def test_bad_documents_are_store_errors(store):
    with pytest.raises(StoreError, match="id"):
        store.create_doc(BOTS, {"config": {}})
    with pytest.raises(StoreError, match="id"):
        store.upsert_doc(BOTS, {"id": ""})
    with pytest.raises(StoreError, match="collection"):
        store.list_docs("users")
    with pytest.raises(StoreError, match="run_id"):
        store.claim_run({"schedule_id": "s1"})


def test_writes_from_many_threads_on_one_store(store):
    def work(t):
        for i in range(20):
            store.upsert_doc(BOTS, bot_doc(f"t{t}-{i}"))
            store.put_status(f"t{t}-{i}", {"state": "running"})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(store.list_docs(BOTS)) == 80
    assert store.get_status("t3-19") == {"state": "running"}


# --- runtime-owned records -------------------------------------------------------------------------

def test_status_put_get_delete(store):
    assert store.get_status("b1") is None
    status = {"state": "running", "restarts": 2, "last_exit_code": None, "started_at": 1_700_000_000.5}
    store.put_status("b1", status)
    assert store.get_status("b1") == status
    store.put_status("b1", {"state": "backoff"})
    assert store.get_status("b1") == {"state": "backoff"}
    store.delete_status("b1")
    assert store.get_status("b1") is None
    store.delete_status("b1")  # deleting again is fine


def run(schedule_id: str, at: float, owner: str = "rt-a") -> dict:
    return {"run_id": f"{schedule_id}@{int(at)}", "schedule_id": schedule_id, "scheduled_at": at,
            "started_at": at + 0.25, "owner": owner}


def test_claim_run_exactly_once_when_two_runtimes_race(new_store):
    runtimes = [new_store(), new_store()]
    run_ids = [f"s1@{1_700_000_000 + 60 * i}" for i in range(25)]
    wins: dict[str, list[str]] = {r: [] for r in run_ids}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def racer(name: str, store):
        start.wait()
        for rid in run_ids:
            if store.claim_run({"run_id": rid, "schedule_id": "s1", "scheduled_at": float(rid.split("@")[1]),
                                "started_at": 0.0, "owner": name}):
                with lock:
                    wins[rid].append(name)

    threads = [threading.Thread(target=racer, args=(f"rt{i}", runtimes[i % 2])) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(len(w) == 1 for w in wins.values()), wins
    # the record holds the winner's owner
    recorded = {r["run_id"]: r["owner"] for r in runtimes[0].list_runs("s1", limit=100)}
    assert recorded == {rid: w[0] for rid, w in wins.items()}


def test_list_runs_most_recent_first_with_limit(store):
    for at in (1_700_000_120.0, 1_700_000_000.0, 1_700_000_240.0, 1_700_000_060.0):
        assert store.claim_run(run("s1", at))
    store.claim_run(run("s2", 1_700_009_999.0))
    got = store.list_runs("s1")
    assert [r["scheduled_at"] for r in got] == [1_700_000_240.0, 1_700_000_120.0, 1_700_000_060.0, 1_700_000_000.0]
    assert got[0] == run("s1", 1_700_000_240.0)
    assert [r["scheduled_at"] for r in store.list_runs("s1", limit=2)] == [1_700_000_240.0, 1_700_000_120.0]
    assert store.list_runs("s1", limit=0) == []
    assert store.list_runs("nope") == []


def test_finish_run(store):
    r = run("s1", 1_700_000_000.0)
    assert store.claim_run(r)
    store.finish_run(r["run_id"], {"ended_at": 1_700_000_030.0, "exit_code": 1, "reason": "exited",
                                   "run_id": "ignored", "schedule_id": "ignored"})
    (got,) = store.list_runs("s1")
    assert got == {**r, "ended_at": 1_700_000_030.0, "exit_code": 1, "reason": "exited"}
    assert store.claim_run(r) is False  # a finished run is still claimed
    store.finish_run("missing", {"exit_code": 0})  # no record: nothing to finish, no error


def test_ping(store):
    store.ping()


# --- the factory -----------------------------------------------------------------------------------

def test_open_store_is_sqlite_under_the_data_dir_without_mongo_uri(tmp_path):
    store = open_store(Config(data_dir=tmp_path / "data"))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == tmp_path / "data" / "runtime.db"
        store.create_doc(BOTS, bot_doc("b1"))
    finally:
        store.close()
    reopened = open_store(Config(data_dir=tmp_path / "data"))  # the data survives a restart
    try:
        assert reopened.get_doc(BOTS, "b1") == bot_doc("b1")
    finally:
        reopened.close()


@pytest.mark.mongo
def test_open_store_is_mongo_with_mongo_uri(mongo_uri, mongo_db_names):
    cfg = Config(mongo_uri=mongo_uri, mongo_bots_db=mongo_db_names.bots_db,
                 mongo_schedules_db=mongo_db_names.schedules_db)
    store = open_store(cfg)
    try:
        assert isinstance(store, MongoStore)
        store.create_doc(SCHEDULES, schedule_doc("s1"))
        client = pymongo.MongoClient(mongo_uri)
        try:
            raw = client[mongo_db_names.schedules_db]["bot_schedules"].find_one({"id": "s1"})
        finally:
            client.close()
        assert raw["config"]["schedule"] == "*/5 * * * *"
    finally:
        store.close()


# --- MongoDB only: the0's own documents, and outages --------------------------------------------------

@pytest.fixture
def raw_mongo(mongo_uri):
    client = pymongo.MongoClient(mongo_uri)
    yield client
    client.close()


@pytest.mark.mongo
def test_documents_written_by_the0_are_read_as_they_are(mongo_uri, mongo_db_names, raw_mongo):
    created = dt.datetime(2025, 3, 1, 12, 30, 45, 123000, tzinfo=dt.timezone.utc)
    oid = ObjectId()
    bots = raw_mongo[mongo_db_names.bots_db]["bots"]
    bots.insert_many([
        {"_id": oid, "id": "bot-a", "name": "Grid", "userId": ObjectId(), "createdAt": created,
         "updatedAt": created, "enabled": True,
         "config": {"enabled": False, "symbol": "ETH", "levels": [1.5, 2.5], "since": created},
         "custom": {"version": "0.3.1", "filePath": "u/bot-a/0.3.1.zip",
                    "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}, "name": "grid"}}},
        {"id": "bot-b", "custom": {"version": "1", "filePath": "b.zip",
                                   "config": {"runtime": "rust", "entrypoints": {"bot": "main"}}}},
        {"name": "a document without id is skipped"},
    ])
    schedules = raw_mongo[mongo_db_names.schedules_db]["bot_schedules"]
    schedules.insert_one({"id": "sched-a", "next_execution_time": 1_700_000_000, "createdAt": created,
                          "config": {"schedule": "0 9 * * 1-5", "timezone": "America/New_York"},
                          "custom": {"version": "1", "filePath": "s.zip",
                                     "config": {"runtime": "nodejs20", "entrypoints": {"bot": "index.js"}}}})

    store = MongoStore(mongo_uri, mongo_db_names.bots_db, mongo_db_names.schedules_db)
    try:
        docs = {d["id"]: d for d in store.list_docs(BOTS)}
        assert set(docs) == {"bot-a", "bot-b"}
        a = docs["bot-a"]
        assert "_id" not in a
        assert a["createdAt"] == "2025-03-01T12:30:45.123Z"
        assert a["config"] == {"enabled": False, "symbol": "ETH", "levels": [1.5, 2.5],
                               "since": "2025-03-01T12:30:45.123Z"}
        assert a["enabled"] is True
        assert isinstance(a["userId"], str) and len(a["userId"]) == 24
        assert a["custom"]["config"]["entrypoints"] == {"bot": "main.py"}
        assert store.get_doc(BOTS, "bot-a") == a
        import json

        json.dumps(a)  # JSON-able as returned

        sched = store.get_doc(SCHEDULES, "sched-a")
        assert sched["config"]["timezone"] == "America/New_York"
        assert sched["next_execution_time"] == 1_700_000_000

        # a runtime update replaces the document in place: the0's _id stays
        assert store.create_doc(BOTS, bot_doc("bot-a")) is False
        store.upsert_doc(BOTS, bot_doc("bot-a", "0.4.0"))
        raw = bots.find_one({"id": "bot-a"})
        assert raw["_id"] == oid and raw["custom"]["version"] == "0.4.0"
        assert bots.count_documents({"id": "bot-a"}) == 1
        store.set_next_execution("sched-a", 1_700_000_300)
        assert schedules.find_one({"id": "sched-a"})["next_execution_time"] == 1_700_000_300
        assert schedules.find_one({"id": "sched-a"})["createdAt"] == created.replace(tzinfo=None)
    finally:
        store.close()


@pytest.mark.mongo
def test_runs_have_a_unique_run_id_index(mongo_uri, mongo_db_names, raw_mongo):
    store = MongoStore(mongo_uri, mongo_db_names.bots_db, mongo_db_names.schedules_db)
    try:
        assert store.claim_run(run("s1", 1_700_000_000.0))
        indexes = raw_mongo[mongo_db_names.schedules_db]["runtime_runs"].index_information()
        unique = [i for i in indexes.values() if i.get("unique") and [k for k, _ in i["key"]] == ["run_id"]]
        assert unique, indexes
        assert any([k for k, _ in i["key"]] == ["schedule_id", "scheduled_at"] for i in indexes.values()), indexes
    finally:
        store.close()


@pytest.mark.mongo
@pytest.mark.timeout(180)  # an outage must surface as an error, never as a hang
def test_mongo_outage_is_store_unavailable_and_recovers(mongo_restartable):
    names = fresh_db_names()
    names_store = MongoStore(mongo_restartable.uri, names.bots_db, names.schedules_db)
    try:
        names_store.create_doc(BOTS, bot_doc("before"))
        mongo_restartable.stop()

        for call in (
            lambda: names_store.list_docs(BOTS),
            lambda: names_store.get_doc(BOTS, "before"),
            lambda: names_store.create_doc(BOTS, bot_doc("during")),
            lambda: names_store.claim_run(run("s1", 1_700_000_000.0)),
            lambda: names_store.put_status("before", {"state": "running"}),
            names_store.ping,
        ):
            with pytest.raises(StoreUnavailable, match="unreachable"):
                call()

        mongo_restartable.start()
        wait_for(lambda: names_store.ping() is None, 60, interval=0.2, what="the store to answer after the restart")
        assert [d["id"] for d in names_store.list_docs(BOTS)] == ["before"]  # same data, nothing half-written
        assert names_store.claim_run(run("s1", 1_700_000_000.0)) is True  # the failed claim left no record
        assert names_store.create_doc(BOTS, bot_doc("during")) is True
    finally:
        drop(mongo_restartable.uri, names)
        names_store.close()


@pytest.mark.mongo
@pytest.mark.timeout(60)
def test_mongo_down_at_start_up_then_indexes_are_made_later(mongo_restartable):
    mongo_restartable.stop()
    names = fresh_db_names()
    store = MongoStore(mongo_restartable.uri, names.bots_db, names.schedules_db)  # opening never waits
    try:
        with pytest.raises(StoreUnavailable):
            store.claim_run(run("s1", 1_700_000_000.0))
        mongo_restartable.start()
        wait_for(lambda: store.ping() is None, 60, interval=0.2, what="the store to answer after the start")
        assert store.claim_run(run("s1", 1_700_000_000.0)) is True
        assert store.claim_run(run("s1", 1_700_000_000.0)) is False
        client = pymongo.MongoClient(mongo_restartable.uri)
        try:
            indexes = client[names.schedules_db]["runtime_runs"].index_information()
        finally:
            client.close()
        assert any(i.get("unique") and [k for k, _ in i["key"]] == ["run_id"] for i in indexes.values())
    finally:
        drop(mongo_restartable.uri, names)
        store.close()


def drop(uri: str, names) -> None:
    """Remove a test's databases (matters on a real MongoDB shared by runs); best effort."""
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        for db in (names.bots_db, names.schedules_db):
            client.drop_database(db)
    except pymongo.errors.PyMongoError:
        pass
    finally:
        client.close()
