"""LogShip: batching by size and delay, partial lines, truncation, rotation, checkpoint-after-upload,
restart and crash re-ship to the same key, fresh-start epochs, JSON fields, publishing, watcher wake-ups.

Manual clock throughout; the store is the real local-directory store (``FlakyStore`` only counts and
injects failures, which cannot be produced on demand otherwise).
"""
from __future__ import annotations

import json
import os

import pytest

from daemon import layout
from daemon.clock import ManualClock
from daemon.log_ship import CHECKPOINT_FILE, LogChanged, LogShip
from daemon.storage import StorageError
from daemon.storage_local import LocalObjectStore
from daemon.watcher import DirWatcher
from tests.servers._util import wait_for
from tests.unit.test_state_sync import FlakyStore

BOT = "bot-logs-1"


def read_objects(store, bot: str = BOT) -> list[tuple[str, list[dict]]]:
    out = []
    for key in store.list(layout.LOGS_BUCKET, layout.logs_prefix(bot)):
        body = store.get_bytes(layout.LOGS_BUCKET, key).decode()
        assert body.endswith("\n")
        out.append((key, [json.loads(x) for x in body.splitlines()]))
    return out


def read_lines(store, bot: str = BOT) -> list[tuple[int, int, str]]:
    """Every shipped line once, in (epoch, offset) order: what a log reader returns."""
    seen = {}
    for _, recs in read_objects(store, bot):
        for r in recs:
            seen[(r["epoch"], r["offset"])] = r["line"]
    return [(e, o, line) for (e, o), line in sorted(seen.items())]


class CrashAfterPut(FlakyStore):
    """The upload lands, then the daemon 'dies' before it can checkpoint (the put raises afterwards)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.crash_next = 0

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        super().put_bytes(bucket, key, data, content_type)
        if self.crash_next > 0:
            self.crash_next -= 1
            raise StorageError("injected: died right after the upload")


@pytest.fixture
def env(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    return {
        "log": logs / "bot.log",
        "work": tmp_path / "work",
        "store": CrashAfterPut(LocalObjectStore(tmp_path / "objects")),
        "clock": ManualClock(),
        "published": [],
    }


def start(env, work=None, **kw):
    kw.setdefault("publish", lambda subj, data: env["published"].append((subj, json.loads(data))))
    return LogShip.start(None, BOT, str(env["log"]), str(work or env["work"]), env["store"],
                         clock=env["clock"], **kw)


def status(ref) -> dict:
    return ref.proxy().status().get(timeout=10)


def poke(ref) -> dict:
    ref.tell(LogChanged())
    return status(ref)


def advance(ref, clock, seconds) -> dict:
    clock.advance(seconds)
    return status(ref)


def append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def checkpoint(env) -> dict:
    with open(env["work"] / CHECKPOINT_FILE) as f:
        return json.load(f)


def test_lines_wait_for_max_delay_then_ship_as_one_object(env):
    ref = start(env)
    append(env["log"], "".join(f"line {i}\n" for i in range(10)))
    st = poke(ref)
    assert st["pending_lines"] == 10 and st["batches"] == 0
    assert advance(ref, env["clock"], 0.5)["batches"] == 0
    assert advance(ref, env["clock"], 0.6)["batches"] == 1
    [(key, recs)] = read_objects(env["store"])
    assert key == layout.log_key(BOT, 0, env["clock"].time(), 0)
    assert [r["line"] for r in recs] == [f"line {i}" for i in range(10)]
    assert [r["offset"] for r in recs] == [7 * i for i in range(10)]
    assert all(r["epoch"] == 0 and "fields" not in r for r in recs)
    assert checkpoint(env)["offset"] == 70 and checkpoint(env)["inflight"] is None
    assert [s for s, _ in env["published"]] == [f"the0.bot.logs.{BOT}"] * 10
    assert [p["line"] for _, p in env["published"]] == [f"line {i}" for i in range(10)]


def test_batches_are_cut_at_max_bytes(env):
    ref = start(env, max_bytes=1000)
    line = "x" * 49 + "\n"
    append(env["log"], line * 100)
    st = poke(ref)
    assert st["batches"] == 5  # 20 lines = 1000 bytes each
    objs = read_objects(env["store"])
    assert [len(recs) for _, recs in objs] == [20] * 5
    assert [recs[0]["offset"] for _, recs in objs] == [0, 1000, 2000, 3000, 4000]
    assert len(read_lines(env["store"])) == 100


def test_partial_line_waits_for_its_end_and_final_flush_ships_it(env):
    ref = start(env)
    append(env["log"], "abc")
    poke(ref)
    assert advance(ref, env["clock"], 5)["batches"] == 0
    append(env["log"], "def\nnext-partial")
    poke(ref)
    advance(ref, env["clock"], 1.1)
    assert read_lines(env["store"]) == [(0, 0, "abcdef")]
    res = ref.proxy().flush(final=True).get(timeout=10)
    assert res.ok and res.offset == os.path.getsize(env["log"])
    assert read_lines(env["store"]) == [(0, 0, "abcdef"), (0, 7, "next-partial")]


def test_json_lines_keep_their_fields(env):
    ref = start(env)
    append(env["log"], '{"level": "info", "msg": "bought", "qty": 3}\nplain {not json\n[1, 2]\n')
    ref.proxy().flush(final=False).get(timeout=10)
    recs = [r for _, rs in read_objects(env["store"]) for r in rs]
    assert recs[0]["fields"] == {"level": "info", "msg": "bought", "qty": 3}
    assert recs[0]["line"] == '{"level": "info", "msg": "bought", "qty": 3}'
    assert "fields" not in recs[1] and "fields" not in recs[2]


def test_offsets_are_bytes_and_crlf_is_trimmed(env):
    ref = start(env)
    append(env["log"], "h\u00e9llo\r\nnext\n{\"a\": \"\u00e9\"}\r\n")
    ref.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [(0, 0, "h\u00e9llo"), (0, 8, "next"), (0, 13, '{"a": "\u00e9"}')]
    recs = [r for _, rs in read_objects(env["store"]) for r in rs]
    assert recs[2]["fields"] == {"a": "\u00e9"}


def test_truncation_starts_a_new_epoch_at_offset_zero(env):
    ref = start(env)
    append(env["log"], "one\ntwo\nthree\n")
    ref.proxy().flush(final=False).get(timeout=10)
    with open(env["log"], "w") as f:
        f.write("after\n")
    poke(ref)
    ref.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [(0, 0, "one"), (0, 4, "two"), (0, 8, "three"), (1, 0, "after")]
    assert checkpoint(env)["epoch"] == 1 and checkpoint(env)["offset"] == 6


def test_truncated_and_rewritten_past_our_position_is_a_new_epoch(env):
    ref = start(env)
    append(env["log"], "old line one\n")
    ref.proxy().flush(final=False).get(timeout=10)
    with open(env["log"], "w") as f:  # copytruncate, then the bot writes more than before
        f.write("new generation line, longer than the old file\n")
    ref.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [
        (0, 0, "old line one"), (1, 0, "new generation line, longer than the old file")]


def test_rotation_drains_the_old_file_then_starts_a_new_epoch(env):
    ref = start(env)
    w = open(env["log"], "a")
    w.write("a1\na2\n")
    w.flush()
    ref.proxy().flush(final=False).get(timeout=10)
    os.rename(env["log"], str(env["log"]) + ".1")
    w.write("a3\na4-partial")  # the writer still holds the old file
    w.close()
    append(env["log"], "b1\n")
    poke(ref)
    ref.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [
        (0, 0, "a1"), (0, 3, "a2"), (0, 6, "a3"), (0, 9, "a4-partial"), (1, 0, "b1")]


def test_checkpoint_moves_only_after_the_upload_succeeded(env):
    store, clock = env["store"], env["clock"]
    ref = start(env, retry_base=0.5)
    append(env["log"], "ok\n")
    ref.proxy().flush(final=False).get(timeout=10)
    env["published"].clear()
    append(env["log"], "keep me\n")
    store.fail_next = 2
    poke(ref)
    st = advance(ref, clock, 1.1)
    assert st["state"] == "retrying" and store.failures == 1
    cp = checkpoint(env)
    assert cp["offset"] == 3 and cp["inflight"] == {"start": 3, "end": 11, "at": cp["inflight"]["at"]}
    assert env["published"] == []  # nothing published before it is stored
    append(env["log"], "more\n")
    poke(ref)  # no upload attempt while backing off
    assert store.failures == 1
    advance(ref, clock, 0.6)
    assert store.failures == 2 and checkpoint(env)["offset"] == 3
    st = advance(ref, clock, 1.2)
    assert st["state"] == "idle" and checkpoint(env)["offset"] == 11
    advance(ref, clock, 1.1)
    assert checkpoint(env)["offset"] == 16
    assert read_lines(env["store"]) == [(0, 0, "ok"), (0, 3, "keep me"), (0, 11, "more")]
    assert [p["line"] for _, p in env["published"]] == ["keep me", "more"]
    assert ref.is_alive()


def test_restart_resumes_from_the_checkpoint_without_doubles(env):
    ref = start(env)
    append(env["log"], "first\n")
    ref.proxy().flush(final=False).get(timeout=10)
    ref.stop()
    append(env["log"], "second\n")
    ref2 = start(env)
    ref2.proxy().flush(final=False).get(timeout=10)
    objs = read_objects(env["store"])
    assert [[r["line"] for r in recs] for _, recs in objs] == [["first"], ["second"]]


def test_crash_after_upload_before_checkpoint_reships_the_same_batch_to_the_same_key(env):
    store, clock = env["store"], env["clock"]
    ref = start(env, max_bytes=10)
    append(env["log"], "0123456789abc\n")
    store.crash_next = 1
    poke(ref)
    ref.stop()  # "killed": the object is stored, the checkpoint still says inflight
    assert checkpoint(env)["offset"] == 0 and checkpoint(env)["inflight"]["end"] == 14
    [key] = [k for k, _ in read_objects(store)]
    clock.set_time(clock.time() + 86400)  # restarted the next day: the key must not change
    append(env["log"], "later\n")
    ref2 = start(env, max_bytes=10)
    ref2.proxy().flush(final=False).get(timeout=10)
    keys = [k for k, _ in read_objects(store)]
    assert keys[0] == key or key in keys
    assert len(keys) == 2
    assert [line for _, _, line in read_lines(store)] == ["0123456789abc", "later"]
    assert [len(recs) for _, recs in read_objects(store)] == [1, 1]


def test_fresh_start_takes_the_next_epoch_and_never_overwrites_an_older_run(env, tmp_path):
    ref = start(env)
    append(env["log"], "run1\n")
    ref.proxy().flush(final=False).get(timeout=10)
    ref.stop()
    # a new container: new log file, no checkpoint
    os.remove(env["log"])
    append(env["log"], "run2\n")
    ref2 = start(env, work=tmp_path / "fresh-work")
    ref2.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [(0, 0, "run1"), (1, 0, "run2")]


def test_file_created_after_start_and_replaced_while_down(env):
    ref = start(env)
    assert status(ref)["epoch"] is None
    append(env["log"], "x\n")
    ref.proxy().flush(final=False).get(timeout=10)
    ref.stop()
    os.remove(env["log"])
    append(env["log"], "y\n")  # replaced while the daemon was down
    ref2 = start(env)
    ref2.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [(0, 0, "x"), (1, 0, "y")]


def test_periodic_poll_picks_up_lines_without_events(env):
    ref = start(env, poll_interval=1.0)
    append(env["log"], "polled\n")
    advance(ref, env["clock"], 1.0)  # poll reads it
    advance(ref, env["clock"], 1.0)  # batch delay ships it
    assert read_lines(env["store"]) == [(0, 0, "polled")]


def test_watcher_wakes_the_shipper(env):
    watcher = DirWatcher()
    try:
        ref = start(env, watcher=watcher, poll_interval=3600)
        append(env["log"], "seen by inotify\n")
        wait_for(lambda: status(ref)["pending_lines"] == 1, 10, what="the watcher to wake LogShip")
        advance(ref, env["clock"], 1.0)
        assert read_lines(env["store"]) == [(0, 0, "seen by inotify")]
    finally:
        ref.stop()
        watcher.close()


def test_publish_failure_does_not_stop_shipping(env):
    def broken(subject, data):
        raise ConnectionError("nats down")

    ref = start(env, publish=broken)
    append(env["log"], "l1\nl2\n")
    res = ref.proxy().flush(final=False).get(timeout=10)
    assert res.ok and len(read_lines(env["store"])) == 2


def test_rotated_away_and_recreated_later_is_still_a_new_epoch(env):
    ref = start(env)
    append(env["log"], "before\n")
    ref.proxy().flush(final=False).get(timeout=10)
    os.rename(env["log"], str(env["log"]) + ".1")
    append(str(env["log"]) + ".1", "tail of old\n")
    poke(ref)  # no new file yet: keeps reading the old one
    os.remove(str(env["log"]) + ".1")
    append(env["log"], "new file\n")
    ref.proxy().flush(final=False).get(timeout=10)
    assert read_lines(env["store"]) == [(0, 0, "before"), (0, 7, "tail of old"), (1, 0, "new file")]
