"""Control handlers: the0's events and operator requests, and 1,000 hostile payloads that change nothing.

The handlers run against a real SqliteStore; the reconciler is a small recording actor (events must
reach it), which is all the handlers see of it.
"""
from __future__ import annotations

import json
import random
import string
import time

import pykka
import pytest

from actors.control import EVENT_SUBJECTS, Handlers
from actors.messages import BotDefinition, InvalidDefinition, RestartNow, RunNow
from actors.reconciler import SyncOne
from actors.status import StatusBoard
from actors.stores.base import BOTS, SCHEDULES
from actors.stores.sqlite import SqliteStore


class Recorder(pykka.ThreadingActor):
    def __init__(self):
        super().__init__()
        self.got = []

    def on_receive(self, message):
        if message == "get":
            return list(self.got)
        self.got.append(message)


def good_doc(bot_id="bot-1", **config):
    return {
        "id": bot_id,
        "config": dict(config),
        "custom": {"version": "1", "filePath": f"{bot_id}/c.zip",
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }


@pytest.fixture
def env(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite")
    board = StatusBoard()
    rec = Recorder.start()
    told = []

    def tell_owner(kind, bot_id, msg):
        if board.get(bot_id, kind) is None:
            return False
        told.append((kind, bot_id, msg))
        return True

    h = Handlers(store, board, lambda: rec, tell_owner, lambda bot_id, tail: [{"line": f"l{i}"} for i in range(tail)])
    yield h, store, board, rec, told
    store.close()


def call(h, subject, payload):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return h.handle(subject, data)


def test_flat_created_event_is_stored_and_synced(env):
    h, store, _, rec, _ = env
    r = call(h, "the0.bot.created", good_doc())
    assert r == {"ok": True, "id": "bot-1", "created": True}
    assert store.get_doc(BOTS, "bot-1")["custom"]["filePath"] == "bot-1/c.zip"
    assert rec.ask("get") == [SyncOne("realtime", "bot-1")]


def test_wrapped_event_and_create_skips_existing(env):
    h, store, _, _, _ = env
    call(h, "the0.bot.created", good_doc(symbol="BTC"))
    data = good_doc(symbol="ETH")
    del data["id"]
    r = call(h, "the0.bot.created", {"type": "bot.created", "entity_id": "bot-1", "data": data, "timestamp": "x"})
    assert r["ok"] and r["created"] is False
    assert store.get_doc(BOTS, "bot-1")["config"]["symbol"] == "BTC"
    r = call(h, "the0.bot.updated", {"type": "bot.updated", "entity_id": "bot-1", "data": data})
    assert r["ok"] and store.get_doc(BOTS, "bot-1")["config"]["symbol"] == "ETH"


def test_schedule_events_and_delete(env):
    h, store, _, rec, _ = env
    r = call(h, "the0.bot-schedule.created", good_doc("s1", schedule="*/5 * * * *", timezone="Europe/London"))
    assert r["ok"], r
    # a new schedule starts at its next fire time, not with a "missed" run from before it existed
    assert store.get_doc(SCHEDULES, "s1")["next_execution_time"] > time.time() - 1
    r = call(h, "the0.bot-schedule.deleted", {"id": "s1"})
    assert r == {"ok": True, "id": "s1", "deleted": True}
    assert store.get_doc(SCHEDULES, "s1") is None
    assert SyncOne("scheduled", "s1") in rec.ask("get")


def test_bad_cron_and_unknown_runtime_are_refused_and_change_nothing(env):
    h, store, _, rec, _ = env
    r = call(h, "the0.bot-schedule.created", good_doc("s1", schedule="61 * * * *"))
    assert not r["ok"] and "s1" in r["error"]
    doc = good_doc("b2")
    doc["custom"]["config"]["runtime"] = "cobol"
    r = call(h, "the0.bot.created", doc)
    assert not r["ok"] and "unknown runtime" in r["error"]
    assert store.list_docs(BOTS) == [] and store.list_docs(SCHEDULES) == [] and rec.ask("get") == []


def test_update_that_fails_validation_keeps_the_old_document(env):
    h, store, _, _, _ = env
    call(h, "the0.bot.created", good_doc(symbol="BTC"))
    bad = good_doc(symbol="ETH")
    bad["custom"]["config"]["entrypoints"]["bot"] = "../../etc/passwd"
    r = call(h, "the0.bot.updated", bad)
    assert not r["ok"] and "entrypoints.bot" in r["error"]
    assert store.get_doc(BOTS, "bot-1")["config"]["symbol"] == "BTC"


def test_ctl_requests(env):
    h, store, board, _, told = env
    board.publish("realtime", "b1", {"state": "running", "restarts": 2, "last_exit_code": 1})
    board.publish("scheduled", "s1", {"state": "idle", "restarts": 0, "last_exit_code": None, "next_run": 123})
    r = call(h, "the0.runtime.ctl.list", {})
    assert r["ok"] and {b["id"] for b in r["bots"]} == {"b1", "s1"}
    assert [b for b in r["bots"] if b["id"] == "s1"][0]["next_run"] == 123
    assert call(h, "the0.runtime.ctl.status", {"id": "b1"})["status"]["restarts"] == 2
    assert call(h, "the0.runtime.ctl.status", {"id": "s1"})["runs"] == []
    assert call(h, "the0.runtime.ctl.restart", {"id": "b1"})["ok"]
    assert call(h, "the0.runtime.ctl.run", {"id": "s1"})["ok"]
    assert [(k, i, type(m)) for k, i, m in told] == [("realtime", "b1", RestartNow), ("scheduled", "s1", RunNow)]
    assert not call(h, "the0.runtime.ctl.restart", {"id": "nope"})["ok"]
    r = call(h, "the0.runtime.ctl.logs", {"id": "b1", "tail": 3})
    assert r["ok"] and [x["line"] for x in r["lines"]] == ["l0", "l1", "l2"]
    assert not call(h, "the0.runtime.ctl.logs", {"id": "b1", "tail": 10**9})["ok"]
    assert not call(h, "the0.runtime.ctl.shutdown", {})["ok"]


def hostile_payloads(n, seed=42):
    rng = random.Random(seed)
    fixed = [
        b"", b"null", b"[]", b"42", b'"str"', b"{", b"\xff\xfe\x00", b'{"id": null}', b'{"id": 5}',
        b'{"id": "../../etc"}', b'{"id": "a; rm -rf /"}', b'{"id": "$where"}', b'{"id": {"$ne": null}}',
        b'{"id": "x", "config": "notadict"}', b'{"id": "x", "custom": []}', b'{"type": "x", "data": 5}',
        b'{"id": "' + b"a" * 10_000 + b'"}', b'{"id": "ok", "config": {"enabled": "yes"}}',
        json.dumps({"id": "x", "custom": {"filePath": "/abs/../../x", "config": {"runtime": "python3.11",
                    "entrypoints": {"bot": "main.py"}}}}).encode(),
        json.dumps({"id": "x", "config": {"x": "y" * 600_000}}).encode(),
        json.dumps({"id": "x", "custom": {"filePath": "a.zip", "config": {"runtime": "python3.11",
                    "entrypoints": {"bot": "/etc/passwd"}}}}).encode(),
        json.dumps({"id": "x", "config": {"max_restarts": -1}, "custom": {"filePath": "a.zip", "config": {
            "runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}).encode(),
        b"{" * 5000 + b"}" * 5000,
    ]
    out = list(fixed)
    while len(out) < n:
        kind = rng.randrange(4)
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        elif kind == 1:
            s = "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 80)))
            out.append(json.dumps({"id": s, "config": {}, "custom": {}}).encode())
        elif kind == 2:
            val = rng.choice([None, 1, 1.5, True, "x", [], {}, [1, 2], {"a": {"b": None}}])
            doc = good_doc("ok-id")
            path = rng.choice([("config",), ("custom",), ("custom", "config"), ("custom", "config", "runtime"),
                               ("custom", "config", "entrypoints"), ("custom", "filePath"), ("config", "enabled")])
            target = doc
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = val
            try:
                BotDefinition.from_document(doc, "realtime")
                continue  # this mutation happens to be valid: not hostile
            except InvalidDefinition:
                out.append(json.dumps(doc).encode())
        else:
            out.append(json.dumps({"type": "bot.created", "entity_id": rng.choice([None, 3, "", "../x", "ok"]),
                                   "data": rng.choice([None, "x", [], {"config": 1}])}).encode())
    return out[:n]


def test_a_thousand_hostile_payloads_get_ok_false_and_change_nothing(env):
    h, store, board, rec, told = env
    call(h, "the0.bot.created", good_doc("keep-me"))
    before = store.list_docs(BOTS)
    subjects = list(EVENT_SUBJECTS) + ["the0.runtime.ctl." + v for v in ("list", "status", "restart", "run", "logs")]
    rng = random.Random(1)
    refused = 0
    for payload in hostile_payloads(1000):
        subject = rng.choice(subjects)
        r = h.handle(subject, payload)
        assert isinstance(r, dict) and "ok" in r
        json.dumps(r)  # every reply is JSON-able
        if subject.endswith((".list", ".logs")) and r["ok"]:
            continue  # read-only: list ignores its payload; logs of any well-formed id may be read
        if subject.endswith(".deleted") and r["ok"]:
            continue  # a valid id of an absent bot: deleting nothing is fine
        assert r["ok"] is False and r["error"], (subject, payload[:80], r)
        refused += 1
    assert refused > 700
    after = store.list_docs(BOTS)
    assert after == before
    assert store.list_docs(SCHEDULES) == []
    assert told == []
