"""StateSync: debounce and cap on a manual clock, torn state.json, size limits, restart, retries, watcher.

The object store is the real local-directory store; ``FlakyStore`` wraps it only to count uploads and
to make some of them fail (a failing disk or network cannot be produced on demand here).
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from daemon import layout
from daemon.clock import ManualClock
from daemon.state_sync import Changed, StateSync
from daemon.storage import ObjectStore, StorageError
from daemon.storage_local import LocalObjectStore
from daemon.watcher import DirWatcher
from tests.servers._util import wait_for

BOT = "bot-1"


class FlakyStore(ObjectStore):
    """A real store that counts puts and fails the next ``fail_next`` of them (StorageError)."""

    def __init__(self, inner: ObjectStore):
        self.inner = inner
        self.puts: list[str] = []
        self.fail_next = 0
        self.failures = 0

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures += 1
            raise StorageError("injected failure: store unreachable")
        self.inner.put_bytes(bucket, key, data, content_type)
        self.puts.append(key)

    def put_file(self, bucket, key, path, content_type="application/octet-stream"):
        with open(path, "rb") as f:
            self.put_bytes(bucket, key, f.read(), content_type)

    def get_bytes(self, bucket, key):
        return self.inner.get_bytes(bucket, key)

    def get_file(self, bucket, key, path):
        return self.inner.get_file(bucket, key, path)

    def exists(self, bucket, key):
        return self.inner.exists(bucket, key)

    def list(self, bucket, prefix=""):
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures += 1
            raise StorageError("injected failure: store unreachable")
        return self.inner.list(bucket, prefix)

    def delete(self, bucket, key):
        self.inner.delete(bucket, key)

    def ping(self):
        self.inner.ping()


def stored_files(store: ObjectStore, bot: str = BOT) -> dict[str, bytes]:
    data = store.get_bytes(layout.STATE_BUCKET, layout.state_key(bot))
    assert data is not None, "no state object stored"
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile():
                out[m.name] = tf.extractfile(m).read()
    return out


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    work = tmp_path / "work"
    store = FlakyStore(LocalObjectStore(tmp_path / "objects"))
    clock = ManualClock()
    return state, work, store, clock


def start(env, watcher=None, **kw):
    state, work, store, clock = env
    ref = StateSync.start(None, BOT, str(state), str(work), store, clock=clock, watcher=watcher, **kw)
    status(ref)  # on_start's first sync has run
    return ref


def status(ref) -> dict:
    return ref.proxy().status().get(timeout=10)


def changed(ref, overflow: bool = False) -> None:
    """What the watcher does, then wait until the actor has handled it (timers are set)."""
    ref.tell(Changed(overflow))
    status(ref)


def advance(ref, clock, seconds: float) -> None:
    """Move the manual clock, then wait until the actor has handled the timers that fired."""
    clock.advance(seconds)
    status(ref)


def write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_empty_state_and_nothing_stored_uploads_nothing(env):
    ref = start(env)
    assert env[2].puts == []
    assert status(ref)["state"] == "idle"


def test_change_is_uploaded_after_trailing_debounce(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"n": 1}')
    changed(ref)
    advance(ref, clock, 0.1)
    assert status(ref)["uploads"] == 0  # still inside the debounce
    changed(ref)  # another change moves the trailing edge
    status(ref)
    advance(ref, clock, 0.15)
    assert status(ref)["uploads"] == 0
    advance(ref, clock, 0.1)
    assert status(ref)["uploads"] == 1
    assert stored_files(store) == {"state.json": b'{"n": 1}'}


def test_max_latency_cap_uploads_during_a_continuous_stream_of_changes(env):
    state, _, store, clock = env
    ref = start(env, debounce=0.2, max_latency=2.0)
    for i in range(19):  # a change every 0.1 s: the debounce alone would never fire
        write(state / "state.json", json.dumps({"n": i}))
        changed(ref)
        advance(ref, clock, 0.1)
    assert status(ref)["uploads"] == 0  # 1.9 s after the first change
    write(state / "state.json", json.dumps({"n": 19}))
    changed(ref)
    advance(ref, clock, 0.1)  # 2.0 s: the cap
    assert status(ref)["uploads"] == 1
    assert json.loads(stored_files(store)["state.json"]) == {"n": 19}


def test_burst_of_1000_writes_through_the_watcher_gives_few_uploads_and_last_content(env):
    state, _, store, clock = env
    watcher = DirWatcher()
    try:
        ref = start(env, watcher=watcher)
        for i in range(1000):
            write(state / "state.json", json.dumps({"n": i}))
        wait_for(lambda: status(ref)["changes"] > 0, 10, what="the watcher to report the writes")
        for _ in range(10):  # late inotify events may still move the trailing edge; the cap bounds it
            advance(ref, clock, 0.3)
        assert 1 <= status(ref)["uploads"] <= 3, status(ref)
        assert json.loads(stored_files(store)["state.json"]) == {"n": 999}
    finally:
        ref.stop()
        watcher.close()


def test_torn_state_json_is_never_uploaded_and_the_last_good_one_stays(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"good": 1}')
    changed(ref)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 1
    write(state / "state.json", '{"good": 2, "tor')
    changed(ref)
    advance(ref, clock, 0.3)
    st = status(ref)
    assert st["uploads"] == 1
    assert st["state"] == "invalid"
    assert "state.json does not parse" in st["last_result"].reason
    assert stored_files(store) == {"state.json": b'{"good": 1}'}
    # the periodic rescan does not upload it either
    advance(ref, clock, 61)
    assert status(ref)["uploads"] == 1
    # the final flush neither
    assert ref.proxy().flush().get(timeout=10).outcome == "rejected"
    write(state / "state.json", '{"good": 3}')
    changed(ref)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 2
    assert stored_files(store) == {"state.json": b'{"good": 3}'}


def test_other_files_need_not_be_json(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "model.bin", "not json {")
    changed(ref)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 1


def test_kill_between_write_and_upload_is_uploaded_on_next_start(env):
    state, work, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"v": "unsaved"}')
    changed(ref)
    ref.stop()  # dies before the debounce fired (no flush)
    assert store.puts == []
    ref2 = start(env)
    assert status(ref2)["uploads"] == 1
    assert stored_files(store) == {"state.json": b'{"v": "unsaved"}'}
    ref2.stop()
    # a restart that finds nothing new uploads nothing
    ref3 = start(env)
    advance(ref3, clock, 61)
    assert status(ref3)["uploads"] == 0
    assert len(store.puts) == 1
    assert (work / "state.digest").exists()
    assert not any(p.name == "state.digest" for p in state.rglob("*"))


def test_fresh_work_dir_with_state_restored_from_the_store_uploads_nothing(env, tmp_path):
    state, work, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"v": 1}')
    ref.proxy().flush().get(timeout=10)
    ref.stop()
    # a new container: same state (restored by daemon init), empty work dir
    ref2 = StateSync.start(None, BOT, str(state), str(tmp_path / "work2"), store, clock=clock)
    assert status(ref2)["uploads"] == 0
    assert len(store.puts) == 1


def test_no_upload_during_idleness_but_rescan_catches_missed_changes(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"v": 1}')
    changed(ref)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 1
    for _ in range(5):
        advance(ref, clock, 60)
    assert status(ref)["uploads"] == 1
    write(state / "extra.txt", "changed without an event (lost by overflow)")
    advance(ref, clock, 60)
    assert status(ref)["uploads"] == 2
    assert "extra.txt" in stored_files(store)


def test_overflow_forces_a_sync(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "a.txt", "x")
    changed(ref, overflow=True)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 1


def test_size_limits_refuse_with_a_clear_error(env):
    state, _, store, clock = env
    ref = start(env, max_file_bytes=100, max_total_bytes=150)
    write(state / "big.bin", "x" * 101)
    changed(ref)
    advance(ref, clock, 0.3)
    st = status(ref)
    assert st["uploads"] == 0 and st["state"] == "invalid"
    assert "big.bin" in st["last_result"].reason and "per-file limit" in st["last_result"].reason
    os.remove(state / "big.bin")
    write(state / "a.bin", "x" * 80)
    write(state / "b.bin", "x" * 80)
    changed(ref)
    advance(ref, clock, 0.3)
    st = status(ref)
    assert st["uploads"] == 0
    assert "total limit" in st["last_result"].reason
    os.remove(state / "b.bin")
    changed(ref)
    advance(ref, clock, 0.3)
    assert status(ref)["uploads"] == 1


def test_upload_failures_are_retried_with_backoff_and_the_actor_lives(env):
    state, _, store, clock = env
    ref = start(env, retry_base=0.5)
    store.fail_next = 3
    write(state / "state.json", '{"v": 1}')
    changed(ref)
    advance(ref, clock, 0.3)
    st = status(ref)
    assert st["state"] == "retrying" and st["uploads"] == 0 and store.failures == 1
    write(state / "state.json", '{"v": 2}')  # changes during backoff: the retry takes the latest
    changed(ref)
    advance(ref, clock, 0.6)
    # first retry (0.5 s +-10 %)
    assert store.failures == 2
    advance(ref, clock, 1.2)
    # second (1 s)
    assert store.failures == 3
    advance(ref, clock, 2.5)
    # third (2 s) succeeds
    st = status(ref)
    assert st["state"] == "idle" and st["uploads"] == 1
    assert stored_files(store) == {"state.json": b'{"v": 2}'}
    assert ref.is_alive()


def test_flush_syncs_now(env):
    state, _, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"final": true}')
    changed(ref)
    res = ref.proxy().flush().get(timeout=10)
    assert res.outcome == "uploaded"
    assert stored_files(store) == {"state.json": b'{"final": true}'}
    advance(ref, clock, 1)  # the stale debounce timer does nothing
    assert status(ref)["uploads"] == 1


def test_new_subdirectory_is_watched(env):
    state, _, store, clock = env
    watcher = DirWatcher()
    try:
        ref = start(env, watcher=watcher)
        os.mkdir(state / "sub")
        wait_for(lambda: str(state / "sub") in watcher.watched_dirs(), 10, what="the new subdirectory's watch")
        advance(ref, clock, 0.3)
        seen = status(ref)["changes"]
        write(state / "sub" / "deep.txt", "hello")
        wait_for(lambda: status(ref)["changes"] > seen, 10, what="a change event from the subdirectory")
        advance(ref, clock, 0.3)
        assert stored_files(store) == {"sub/deep.txt": b"hello"}
    finally:
        ref.stop()
        watcher.close()


def test_a_vanished_state_dir_never_replaces_the_stored_state(env):
    import shutil

    state, _, store, clock = env
    ref = start(env)
    write(state / "state.json", '{"keep": 1}')
    changed(ref)
    advance(ref, clock, 0.3)
    shutil.rmtree(state)
    changed(ref)
    advance(ref, clock, 0.3)
    st = status(ref)
    assert st["uploads"] == 1 and "missing" in st["last_result"].reason
    assert stored_files(store) == {"state.json": b'{"keep": 1}'}


# -- the shared watcher (daemon.watcher) ---------------------------------------------------------


def test_watcher_serves_several_listeners_and_unregister_drops_watches(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "deep").mkdir(parents=True)
    b.mkdir()
    watcher = DirWatcher()
    try:
        got_a1, got_a2, got_b = [], [], []
        cb_a1, cb_a2 = got_a1.append, got_a2.append
        watcher.register(str(a), cb_a1)
        watcher.register(str(a), cb_a2)
        watcher.register(str(b), got_b.append)
        assert set(watcher.watched_dirs()) == {str(a), str(a / "deep"), str(b)}
        (a / "deep" / "f").write_text("x")
        wait_for(lambda: got_a1 and got_a2, 10, what="both listeners of a")
        assert any(str(a / "deep" / "f") in ev.paths for ev in got_a1)
        assert got_b == []
        watcher.unregister(str(a), cb_a1)
        assert str(a) in watcher.roots()
        watcher.unregister(str(a), cb_a2)
        assert watcher.roots() == [str(b)] and watcher.watched_dirs() == [str(b)]
    finally:
        watcher.close()


def test_watcher_overflow_tells_every_listener_to_rescan(tmp_path):
    from inotify_simple import Event, flags

    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    watcher = DirWatcher()
    try:
        got = []
        watcher.register(str(tmp_path / "x"), got.append)
        watcher.register(str(tmp_path / "y"), got.append)
        # the kernel's queue-overflow event (wd -1), as read from the inotify fd
        watcher._dispatch([Event(wd=-1, mask=flags.Q_OVERFLOW, cookie=0, name="")])
        assert sorted((ev.root, ev.overflow) for ev in got) == [
            (str(tmp_path / "x"), True), (str(tmp_path / "y"), True)]
    finally:
        watcher.close()


def test_watcher_refuses_a_missing_directory(tmp_path):
    from daemon.watcher import WatchError

    watcher = DirWatcher()
    try:
        with pytest.raises(WatchError, match="not a directory"):
            watcher.register(str(tmp_path / "nope"), lambda ev: None)
    finally:
        watcher.close()
