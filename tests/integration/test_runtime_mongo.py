"""MongoDB as the source of truth: the runtime (a real child process) against a real Mongo wire server
(or MONGO_URI), a real nats-server and real bot processes.

- a bot written straight into MongoDB, with no NATS message, runs within one reconcile period; deleting
  it from MongoDB stops it;
- MongoDB stopped for 30 s: no bot restarted, readiness false, then true again by itself;
- NATS killed and restarted: the runtime reconnects, converges to the store, and hears events again;
- two runtimes on one store and one NATS: each scheduled run starts exactly once.
"""
from __future__ import annotations

import datetime as dt
import zipfile
from io import BytesIO
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from actors.ctl import zip_dir
from daemon import layout
from daemon.storage_local import LocalObjectStore
import secrets

from tests.integration.test_runtime_process import ROOT, RuntimeProcess, bot_pids, nats_request
from tests.servers._util import hold_for, wait_for
from tests.servers.mongo import fresh_db_names
from tests.servers.nats import NatsServer


_T = secrets.token_hex(3)
C1, C2, C3, MARK = f"counter-{_T}", f"c2-{_T}", f"c3-{_T}", f"marker-{_T}"


def the0_bot_doc(bot_id: str, file_path: str, **config) -> dict:
    """A document shaped as the0's API writes it (ObjectId, datetimes, extra fields)."""
    return {
        "_id": ObjectId(),
        "id": bot_id,
        "name": f"{bot_id} (from the0)",
        "userId": "user-1",
        "config": {"interval": 0.2, **config},
        "custom": {"version": "1.0.0", "filePath": file_path,
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}, "name": bot_id}},
        "createdAt": dt.datetime.now(dt.timezone.utc),
        "updatedAt": dt.datetime.now(dt.timezone.utc),
    }


def marker_bot_zip() -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", (
            "import os, time\n"
            "def main(bot_id, config):\n"
            "    with open(config['marker'], 'a') as f:\n"
            "        f.write(f'{os.getpid()} {time.time()}\\n')\n"
        ))
    return buf.getvalue()


def make_runtime(tmp_path: Path, name: str, nats_url: str, mongo_uri: str, names) -> RuntimeProcess:
    data = tmp_path / name
    objects = LocalObjectStore(str(data / "objects"))
    objects.put_bytes(layout.CODE_BUCKET, "counter/code.zip", zip_dir(ROOT / "examples" / "counter"))
    objects.put_bytes(layout.CODE_BUCKET, "marker/code.zip", marker_bot_zip())
    return RuntimeProcess(data, nats_url, {
        "MONGO_URI": mongo_uri, "THE0_MONGO_BOTS_DB": names.bots_db,
        "THE0_MONGO_SCHEDULES_DB": names.schedules_db, "THE0_INSTANCE_ID": name,
    })


@pytest.fixture
def cleanup_bots():
    yield
    import os
    import signal

    for bot in (C1, C2, C3, MARK):
        for pid in bot_pids(bot):
            os.kill(pid, signal.SIGKILL)


def test_store_edits_without_events_are_applied_within_one_period(tmp_path, nats_server, mongo_uri, cleanup_bots):
    names = fresh_db_names()
    rt = make_runtime(tmp_path, "rt", nats_server.url, mongo_uri, names).start()
    try:
        client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000)
        bots = client[names.bots_db]["bots"]
        bots.insert_one(the0_bot_doc(C1, "counter/code.zip"))  # no NATS message
        wait_for(lambda: len(bot_pids(C1)) == 1 and (rt.status(C1) or {}).get("state") == "running", 20,
                 what="bot started by the periodic reconcile")
        # its status is stored beside the0's documents, in the runtime's own collection
        status = client[names.bots_db]["runtime_status"]
        wait_for(lambda: (status.find_one({"_id": C1}) or {}).get("state") == "running", 20, what="status stored")
        bots.delete_one({"id": C1})
        wait_for(lambda: bot_pids(C1) == [], 20, what="bot stopped after its document was deleted")
        client.close()
    finally:
        rt.stop()


def test_mongo_outage_restarts_nothing_and_readiness_recovers(tmp_path, nats_server, mongo_restartable, cleanup_bots):
    names = fresh_db_names()
    rt = make_runtime(tmp_path, "rt", nats_server.url, mongo_restartable.uri, names).start()
    try:
        r = nats_request(rt.nats_url, "the0.bot.created", {k: v for k, v in the0_bot_doc(C1, "counter/code.zip").items()
                                                            if k not in ("_id", "createdAt", "updatedAt")})
        assert r["ok"], r
        wait_for(lambda: len(bot_pids(C1)) == 1, 20, what="bot running")
        pid = bot_pids(C1)[0]
        mongo_restartable.stop()
        wait_for(lambda: not rt.ready(), 20, what="readiness false during the outage")
        hold_for(lambda: bot_pids(C1) == [pid] and rt.proc.poll() is None, 30,
                 what="bot untouched and runtime alive while MongoDB is down")
        assert rt.ctl("list")["ok"]  # operators still get answers
        mongo_restartable.start()
        wait_for(rt.ready, 30, what="readiness true again")
        assert bot_pids(C1) == [pid]
        assert rt.status(C1)["restarts"] == 0
    finally:
        rt.stop()


def test_nats_restart_reconnects_and_converges(tmp_path, mongo_uri, cleanup_bots):
    names = fresh_db_names()
    (tmp_path / "nats-dir").mkdir()
    nats = NatsServer(tmp_path / "nats-dir").start()
    rt = make_runtime(tmp_path, "rt", nats.url, mongo_uri, names).start()
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000)
    try:
        nats.stop()
        wait_for(lambda: not rt.ready(), 20, what="not ready without NATS")
        # the0's API writes MongoDB, then its publish is lost because NATS is down
        client[names.bots_db]["bots"].insert_one(the0_bot_doc(C2, "counter/code.zip"))
        nats = NatsServer(tmp_path / "nats-dir", port=nats.port).start()
        wait_for(rt.ready, 30, what="reconnected and ready")
        wait_for(lambda: len(bot_pids(C2)) == 1, 30, what="converged to the store after reconnect")
        # subscriptions were restored: an event is acted on at once again
        doc = {k: v for k, v in the0_bot_doc(C3, "counter/code.zip").items() if k not in ("_id", "createdAt", "updatedAt")}
        assert nats_request(nats.url, "the0.bot.created", doc)["ok"]
        wait_for(lambda: len(bot_pids(C3)) == 1, 20, what="event after reconnect")
    finally:
        rt.stop()
        nats.stop()
        client.close()


def test_two_runtimes_start_each_scheduled_run_once(tmp_path, nats_server, mongo_uri, cleanup_bots):
    names = fresh_db_names()
    marker = tmp_path / "marks.txt"
    a = make_runtime(tmp_path, "rt-a", nats_server.url, mongo_uri, names).start()
    b = make_runtime(tmp_path, "rt-b", nats_server.url, mongo_uri, names).start()
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000)
    try:
        doc = {"id": MARK, "config": {"schedule": "*/2 * * * * *", "marker": str(marker)},
               "custom": {"version": "1", "filePath": "marker/code.zip",
                          "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}
        assert nats_request(nats_server.url, "the0.bot-schedule.created", doc)["ok"]
        runs = client[names.schedules_db]

        def finished():
            coll = [c for c in runs.list_collection_names() if "run" in c]
            if not coll:
                return []
            return list(runs[coll[0]].find({"schedule_id": MARK, "exit_code": 0}))

        wait_for(lambda: len(finished()) >= 4, 60, what="four finished runs")
        assert nats_request(nats_server.url, "the0.bot-schedule.deleted", {"id": MARK})["ok"]
        wait_for(lambda: a.ctl("status", id=MARK)["ok"] is False and b.ctl("status", id=MARK)["ok"] is False,
                 20, what="schedule gone from both")
        all_runs = [r for c in runs.list_collection_names() if "run" in c for r in runs[c].find({"schedule_id": MARK})]
        started = [r for r in all_runs if not str(r.get("reason", "")).startswith("skipped")]
        ids = [r["run_id"] for r in all_runs]
        assert len(ids) == len(set(ids))
        owners = {r.get("owner") for r in started}
        assert owners <= {"rt-a", "rt-b"}
        lines = marker.read_text().splitlines()
        assert len(lines) == len(started), (len(lines), len(started), all_runs)
    finally:
        a.stop()
        b.stop()
        client.close()
