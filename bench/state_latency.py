"""Benchmark: a bot's state write -> the new state.tar.gz in the object store (StateSync, real clock + inotify).

For the local-directory store and for the real S3 server (moto_server, started here on a free
127.0.0.1 port and stopped again): one warm-up write (first upload, creates the bucket: its own row), then 100 writes of
state.json, one at a time, each timed from just before
the write to the end of the upload that carries it (the store is wrapped to note when each put
returns). Targets: p50 < debounce + 50 ms, p99 < 1 s. Bounded: 2 x 100 writes.

    .venv/bin/python bench/state_latency.py
"""
from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.state_sync import StateSync  # noqa: E402
from daemon.storage_local import LocalObjectStore  # noqa: E402
from daemon.watcher import DirWatcher  # noqa: E402

WRITES = 100
DEBOUNCE = 0.2


class TimedStore:
    """Delegates to a real store; remembers when each put of state.json content returned."""

    def __init__(self, inner):
        self.inner = inner
        self.cv = threading.Condition()
        self.seen: dict[bytes, float] = {}

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        self.inner.put_bytes(bucket, key, data, content_type)
        done = time.monotonic()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            m = tf.extractfile("state.json")
            content = m.read() if m else b""
        with self.cv:
            self.seen.setdefault(hashlib.sha256(content).digest(), done)
            self.cv.notify_all()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def wait(self, content: bytes, timeout: float) -> float | None:
        h = hashlib.sha256(content).digest()
        with self.cv:
            self.cv.wait_for(lambda: h in self.seen, timeout)
            return self.seen.get(h)


def measure(name: str, inner, tmp: Path) -> list[str]:
    state = tmp / name / "state"
    state.mkdir(parents=True)
    store = TimedStore(inner)
    watcher = DirWatcher()
    ref = StateSync.start(None, f"lat-{name}", str(state), str(tmp / name / "work"), store,
                          watcher=watcher, debounce=DEBOUNCE)
    lat = []
    first = None
    try:
        for i in range(-1, WRITES):  # write -1 warms up: first upload (bucket creation, connection)
            content = f'{{"i": {i}, "pad": "{"x" * 200}"}}'.encode()
            t0 = time.monotonic()
            (state / "state.json").write_bytes(content)
            done = store.wait(content, 10)
            if done is None:
                raise SystemExit(f"{name}: write {i} never reached the store")
            if i < 0:
                first = done - t0
            else:
                lat.append(done - t0)
    finally:
        ref.stop()
        watcher.close()
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    t50, t99 = DEBOUNCE + 0.05, 1.0
    return [
        f"| state first upload incl. bucket creation ({name}) | {first * 1000:.0f} ms | < 2000 ms | {'ok' if first < 2 else 'MISS'} |",
        f"| state write->store p50 ({name}) | {p50 * 1000:.0f} ms | < {t50 * 1000:.0f} ms | {'ok' if p50 < t50 else 'MISS'} |",
        f"| state write->store p99 ({name}) | {p99 * 1000:.0f} ms | < {t99 * 1000:.0f} ms | {'ok' if p99 < t99 else 'MISS'} |",
    ]


def main() -> None:
    from tests.servers.s3 import S3Server
    from daemon.storage_s3 import S3ObjectStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    rows = []
    srv = None
    try:
        rows += measure("local", LocalObjectStore(tmp / "objects"), tmp)
        (tmp / "s3").mkdir()
        srv = S3Server(tmp / "s3").start()
        rows += measure("s3", S3ObjectStore.from_env(srv.env), tmp)
    finally:
        if srv:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| name | value | target | ok/MISS |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(r)
    import pykka

    pykka.ActorRegistry.stop_all()


if __name__ == "__main__":
    main()
