"""``daemon sync`` for real: BotSync embedded (real clock, inotify, local store), ``python -m daemon sync``
ended by the done-file and by SIGTERM, live lines over a real NATS server, a StateSync round trip through
the real S3 server, and many bots on one inotify instance.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

from daemon import layout
from daemon.logread import read_lines
from daemon.publish import Publisher
from daemon.storage_local import LocalObjectStore
from daemon.sync import BotSync
from daemon.watcher import DirWatcher
from tests.servers._util import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _dirs(tmp: Path, bot: str = "b1") -> dict:
    d = {"state": tmp / bot / "state", "logs": tmp / bot / "logs", "work": tmp / bot / "work"}
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    d["log"] = d["logs"] / "bot.log"
    return d


def _state_files(store, bot: str) -> dict[str, bytes]:
    data = store.get_bytes(layout.STATE_BUCKET, layout.state_key(bot))
    if data is None:
        return {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_botsync_embedded_mirrors_state_and_logs_and_final_flush_ships_the_partial_line(tmp_path):
    d = _dirs(tmp_path)
    store = LocalObjectStore(tmp_path / "objects")
    watcher = DirWatcher()
    bs = BotSync.start("b1", str(d["state"]), str(d["log"]), str(d["work"]), store, watcher=watcher)
    try:
        (d["state"] / "state.json").write_text('{"pos": 1}')
        _append(d["log"], "started\n{\"level\": \"info\", \"msg\": \"tick\"}\n")
        wait_for(lambda: _state_files(store, "b1") == {"state.json": b'{"pos": 1}'}, 10, what="state upload")
        wait_for(lambda: read_lines(store, "b1") == ["started", '{"level": "info", "msg": "tick"}'], 10,
                 what="log lines shipped")
        (d["state"] / "state.json").write_text('{"pos": 2}')
        _append(d["log"], "last words without newline")
        res = bs.stop(final=True, deadline=10)
        assert res["state"].outcome in ("uploaded", "unchanged") and res["logs"].ok
        assert _state_files(store, "b1") == {"state.json": b'{"pos": 2}'}
        assert read_lines(store, "b1")[-1] == "last words without newline"
        assert not bs.is_alive()
    finally:
        watcher.close()


def _env(tmp: Path, d: dict, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "NATS_"))}
    env.update(BOT_ID="b1", STATE_PATH=str(d["state"]), LOGS_PATH=str(d["logs"]), SYNC_WORK_DIR=str(d["work"]),
               THE0_OBJECTS_DIR=str(tmp / "objects"), PYTHONPATH=str(ROOT), **extra)
    return env


def test_daemon_sync_command_stops_on_done_file_after_final_sync(tmp_path):
    d = _dirs(tmp_path)
    (d["state"] / "state.json").write_text('{"done": false}')
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "sync"], env=_env(tmp_path, d),
                            stderr=open(tmp_path / "daemon.log", "wb"))
    try:
        store = LocalObjectStore(tmp_path / "objects")
        wait_for(lambda: _state_files(store, "b1"), 20, what="the first state upload")
        # the bot's last acts, then bootstrap writes the done-file
        (d["state"] / "state.json").write_text('{"done": true}')
        _append(d["log"], "bye\nno newline")
        (d["logs"] / ".done").touch()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _state_files(store, "b1") == {"state.json": b'{"done": true}'}
    assert read_lines(store, "b1") == ["bye", "no newline"]
    events = [json.loads(x)["event"] for x in (tmp_path / "daemon.log").read_text().splitlines() if x.startswith("{")]
    assert "sync.final" in events and "sync.stopped" in events


def test_daemon_sync_command_final_sync_on_sigterm(tmp_path):
    d = _dirs(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "sync"], env=_env(tmp_path, d),
                            stderr=open(tmp_path / "daemon.log", "wb"))
    try:
        wait_for(lambda: "sync.running" in (tmp_path / "daemon.log").read_text(), 20, what="daemon running")
        (d["state"] / "state.json").write_text('{"sig": "term"}')
        _append(d["log"], "a\nb")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    store = LocalObjectStore(tmp_path / "objects")
    assert _state_files(store, "b1") == {"state.json": b'{"sig": "term"}'}
    assert read_lines(store, "b1") == ["a", "b"]


def _subscribe(url: str, subject: str, got: list, ready: threading.Event, stop: threading.Event) -> None:
    import nats

    async def run() -> None:
        nc = await nats.connect(url)

        async def cb(msg) -> None:
            got.append(json.loads(msg.data))

        await nc.subscribe(subject, cb=cb)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)  # wait-ok: subscriber loop until the test is done
        await nc.close()

    asyncio.run(run())


def test_log_lines_are_published_live_on_nats(tmp_path, nats_server):
    d = _dirs(tmp_path)
    got: list = []
    ready, stop = threading.Event(), threading.Event()
    sub = threading.Thread(target=_subscribe, args=(nats_server.url, layout.logs_subject("b1"), got, ready, stop))
    sub.start()
    pub = Publisher(nats_server.url).start()
    watcher = DirWatcher()
    try:
        assert ready.wait(10) and pub.wait_connected(10)
        bs = BotSync.start("b1", str(d["state"]), str(d["log"]), str(d["work"]),
                           LocalObjectStore(tmp_path / "objects"), publish=pub, watcher=watcher)
        _append(d["log"], "".join(f"live {i}\n" for i in range(50)))
        wait_for(lambda: len(got) >= 50, 15, what="50 live lines on NATS")
        assert [g["line"] for g in got] == [f"live {i}" for i in range(50)]
        assert all(g["epoch"] == 0 for g in got)
        bs.stop()
    finally:
        stop.set()
        sub.join(10)
        pub.close()
        watcher.close()
    assert pub.sent == 50 and pub.dropped == 0


def test_publisher_drops_and_counts_while_nats_is_down(nats_server):
    pub = Publisher(nats_server.url, reconnect_wait=0.2).start()
    try:
        assert pub.wait_connected(10)
        assert pub.publish("the0.bot.logs.x", b"{}")
        nats_server.stop()
        wait_for(lambda: not pub.connected, 10, what="the publisher to see NATS down")
        assert pub.publish("the0.bot.logs.x", b"{}") is False
        assert pub.dropped >= 1
    finally:
        pub.close(2)


def test_state_and_logs_round_trip_through_the_s3_server(tmp_path, s3_server):
    from daemon.archive import extract_tar
    from daemon.storage_s3 import S3ObjectStore

    s3_server.reset()
    store = S3ObjectStore.from_env(s3_server.env, base_delay=0.05)
    d = _dirs(tmp_path, "s3bot")
    (d["state"] / "sub").mkdir()
    (d["state"] / "state.json").write_text('{"cash": 1000}')
    (d["state"] / "sub" / "model.bin").write_bytes(os.urandom(4096))
    watcher = DirWatcher()
    try:
        bs = BotSync.start("s3bot", str(d["state"]), str(d["log"]), str(d["work"]), store, watcher=watcher)
        wait_for(lambda: store.exists(layout.STATE_BUCKET, layout.state_key("s3bot")), 20, what="state in S3")
        (d["state"] / "state.json").write_text('{"cash": 990}')
        _append(d["log"], "sold 10\n")
        wait_for(lambda: _state_files(store, "s3bot").get("state.json") == b'{"cash": 990}', 20,
                 what="the change in S3")
        wait_for(lambda: read_lines(store, "s3bot") == ["sold 10"], 20, what="the log line in S3")
        bs.stop()
    finally:
        watcher.close()
    restored = tmp_path / "restored"
    extract_tar(store.get_bytes(layout.STATE_BUCKET, layout.state_key("s3bot")), restored)
    assert (restored / "state.json").read_text() == '{"cash": 990}'
    assert (restored / "sub" / "model.bin").read_bytes() == (d["state"] / "sub" / "model.bin").read_bytes()


def _inotify_instances() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            pass
    return n


def test_many_bots_share_one_inotify_instance(tmp_path):
    before = _inotify_instances()
    watcher = DirWatcher()
    store = LocalObjectStore(tmp_path / "objects")
    bots = [f"bot{i}" for i in range(40)]
    syncs = []
    try:
        for b in bots:
            d = _dirs(tmp_path, b)
            syncs.append(BotSync.start(b, str(d["state"]), str(d["log"]), str(d["work"]), store, watcher=watcher))
        assert _inotify_instances() == before + 1
        for b in bots:
            (tmp_path / b / "state" / "state.json").write_text(json.dumps({"bot": b}))
            _append(tmp_path / b / "logs" / "bot.log", f"hello from {b}\n")
        for b in bots:
            wait_for(lambda: _state_files(store, b) == {"state.json": json.dumps({"bot": b}).encode()}, 20,
                     what=f"{b}'s state")
            wait_for(lambda: read_lines(store, b) == [f"hello from {b}"], 20, what=f"{b}'s log line")
    finally:
        for s in syncs:
            s.stop(final=False)
        watcher.close()
    assert watcher.roots() == []
