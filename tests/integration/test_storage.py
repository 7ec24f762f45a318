"""The ObjectStore contract on the local store and on a real S3 server (moto_server), plus S3 failure modes."""
from __future__ import annotations

import http.client
import http.server
import io
import os
import threading

import pytest

from daemon import layout, storage
from daemon.storage import StorageError
from daemon.storage_local import LocalObjectStore
from daemon.storage_s3 import S3ObjectStore
from tests.servers._util import free_port

B = layout.STATE_BUCKET


# -- the contract, on both stores ------------------------------------------------------------------------

def test_put_get_exists_overwrite(object_store):
    assert object_store.get_bytes(B, "bot-1/state.tar.gz") is None
    assert not object_store.exists(B, "bot-1/state.tar.gz")
    object_store.put_bytes(B, "bot-1/state.tar.gz", b"v1")
    assert object_store.get_bytes(B, "bot-1/state.tar.gz") == b"v1"
    assert object_store.exists(B, "bot-1/state.tar.gz")
    object_store.put_bytes(B, "bot-1/state.tar.gz", b"")
    assert object_store.get_bytes(B, "bot-1/state.tar.gz") == b""
    object_store.put_bytes(B, "bot-1/state.tar.gz", bytes(range(256)) * 100)
    assert object_store.get_bytes(B, "bot-1/state.tar.gz") == bytes(range(256)) * 100


def test_missing_bucket_and_key(object_store, tmp_path):
    assert object_store.get_bytes("no-such-bucket", "k") is None
    assert object_store.get_file("no-such-bucket", "k", str(tmp_path / "out")) is False
    assert not (tmp_path / "out").exists()
    assert list(object_store.list("no-such-bucket")) == []
    assert not object_store.exists("no-such-bucket", "k")
    object_store.delete("no-such-bucket", "k")  # no error


def test_list_is_sorted_and_filtered_by_prefix(object_store):
    keys = ["logs/b/20261204/000001-0000000000000000.ndjson", "logs/b/20261204/000000-0000000000000100.ndjson",
            "logs/b/20261203/000000-0000000000000000.ndjson", "logs/b2/20261204/000000-0000000000000000.ndjson",
            "logs/a.txt"]
    for k in keys:
        object_store.put_bytes(layout.LOGS_BUCKET, k, k.encode())
    assert list(object_store.list(layout.LOGS_BUCKET)) == sorted(keys)
    assert list(object_store.list(layout.LOGS_BUCKET, "logs/b/")) == sorted(k for k in keys if k.startswith("logs/b/"))
    assert list(object_store.list(layout.LOGS_BUCKET, "logs/b")) == sorted(k for k in keys if k.startswith("logs/b"))
    assert list(object_store.list(layout.LOGS_BUCKET, "logs/b/20261204/000001")) == [keys[0]]
    assert list(object_store.list(layout.LOGS_BUCKET, "zzz")) == []


def test_delete(object_store):
    object_store.put_bytes(B, "x/y/z", b"1")
    object_store.put_bytes(B, "x/other", b"2")
    object_store.delete(B, "x/y/z")
    object_store.delete(B, "x/y/z")
    assert object_store.get_bytes(B, "x/y/z") is None
    assert list(object_store.list(B)) == ["x/other"]


def test_put_file_and_get_file(object_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1_500_000))
    object_store.put_file(layout.CODE_BUCKET, "bots/abc/v1.zip", str(src))
    out = tmp_path / "dl" / "code.zip"
    assert object_store.get_file(layout.CODE_BUCKET, "bots/abc/v1.zip", str(out)) is True
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["code.zip"]  # no temp file left beside it


def test_put_file_of_missing_source_is_a_clear_error(object_store, tmp_path):
    object_store.put_bytes(B, "k", b"old")
    with pytest.raises(StorageError) as ei:
        object_store.put_file(B, "k", str(tmp_path / "missing"))
    assert not ei.value.retryable and "missing" in str(ei.value)
    assert object_store.get_bytes(B, "k") == b"old"


def test_ping(object_store):
    object_store.ping()


# -- local store specifics -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/abs/key", "a//b", "./a", "a/./b", "", ".tmp-x"])
def test_local_store_refuses_unsafe_keys(tmp_path, key):
    s = LocalObjectStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        s.put_bytes(B, key, b"x")
    with pytest.raises(ValueError):
        s.get_bytes(B, key)
    assert not (tmp_path / "escape").exists()


def test_local_store_refuses_unsafe_buckets(tmp_path):
    s = LocalObjectStore(tmp_path / "objects")
    for bucket in ("..", "a/b", ""):
        with pytest.raises(ValueError):
            s.put_bytes(bucket, "k", b"x")


def test_local_writes_are_atomic_for_concurrent_readers(tmp_path):
    s = LocalObjectStore(tmp_path / "objects")
    a, b = b"A" * (2 * 1024 * 1024), b"B" * (3 * 1024 * 1024)
    s.put_bytes(B, "k", a)
    stop = threading.Event()
    seen: set[int] = set()
    torn: list[int] = []

    def reader():
        while not stop.is_set():
            got = s.get_bytes(B, "k")
            seen.add(len(got))
            if got not in (a, b):
                torn.append(len(got))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            s.put_bytes(B, "k", a if i % 2 else b)
    finally:
        stop.set()
        t.join()
    assert torn == []
    assert [p.name for p in (tmp_path / "objects" / B).iterdir()] == ["k"]  # no temp files left


def test_local_failed_write_keeps_old_object(tmp_path):
    s = LocalObjectStore(tmp_path / "objects")
    s.put_bytes(B, "k", b"old")

    class Boom(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError("disk gone")

    with pytest.raises(StorageError):
        s._write_atomic(s._path(B, "k"), lambda f: f.write(Boom().read(10)))
    assert s.get_bytes(B, "k") == b"old"
    assert sorted(p.name for p in (tmp_path / "objects" / B).iterdir()) == ["k"]


def test_from_env_picks_the_store(tmp_path, s3_server):
    local = storage.from_env({"THE0_DATA_DIR": str(tmp_path / "data")})
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "data" / "objects").absolute()
    local = storage.from_env({"THE0_OBJECTS_DIR": str(tmp_path / "objs"), "THE0_DATA_DIR": "/nowhere"})
    assert local.root == (tmp_path / "objs").absolute()
    s3 = storage.from_env(s3_server.env)
    assert isinstance(s3, S3ObjectStore)
    s3.ping()


# -- S3 specifics ----------------------------------------------------------------------------------------

def test_s3_from_env_endpoint_forms():
    base = {"MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}
    s = S3ObjectStore.from_env({**base, "MINIO_ENDPOINT": "minio:9000"})
    assert (s.endpoint, s.secure) == ("minio:9000", False)
    s = S3ObjectStore.from_env({**base, "MINIO_ENDPOINT": "minio:9000", "MINIO_USE_SSL": "true"})
    assert s.secure is True
    s = S3ObjectStore.from_env({**base, "MINIO_ENDPOINT": "https://minio.example:443/"})
    assert (s.endpoint, s.secure) == ("minio.example:443", True)
    s = S3ObjectStore.from_env({**base, "MINIO_ENDPOINT": "http://127.0.0.1:9000", "MINIO_USE_SSL": "true"})
    assert s.secure is False  # an explicit URL scheme wins
    for bad in ({"MINIO_ENDPOINT": "ftp://x:1"}, {"MINIO_ENDPOINT": "http://x:1/path"},
                {"MINIO_ENDPOINT": "x:1", "MINIO_ACCESS_KEY": "only-one"}):
        with pytest.raises(StorageError) as ei:
            S3ObjectStore.from_env(bad)
        assert not ei.value.retryable


def test_s3_big_file_goes_multipart_and_round_trips(s3_server, tmp_path):
    store = S3ObjectStore.from_env(s3_server.env)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))
    store.put_file(layout.CODE_BUCKET, "big/code.zip", str(src))
    # A multipart object's ETag is "<md5 of part md5s>-<part count>".
    etag = store.client.stat_object(layout.CODE_BUCKET, "big/code.zip").etag
    assert etag.endswith("-3"), etag
    out = tmp_path / "out.bin"
    assert store.get_file(layout.CODE_BUCKET, "big/code.zip", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert store.incomplete_uploads(layout.CODE_BUCKET, "big/code.zip") == []


def test_s3_failed_multipart_upload_is_aborted(s3_server):
    store = S3ObjectStore.from_env(s3_server.env)

    class FailsAfterTwoParts(io.RawIOBase):
        """A source that breaks in the middle of a 12 MB upload (as a disk error or a killed producer would)."""

        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.sent >= 10 * 1024 * 1024:
                raise OSError("source went away")
            n = min(len(b), 1024 * 1024)
            b[:n] = b"z" * n
            self.sent += n
            return n

    with pytest.raises(StorageError, match="source went away"):
        store.put_stream(B, "partial", FailsAfterTwoParts(), 12 * 1024 * 1024, part_size=5 * 1024 * 1024)
    assert store.incomplete_uploads(B, "partial") == []
    assert store.get_bytes(B, "partial") is None


def test_s3_leftover_multipart_upload_is_cleaned(s3_server):
    store = S3ObjectStore.from_env(s3_server.env)
    store.put_bytes(B, "other", b"x")  # creates the bucket
    # What a writer killed mid-upload (or whose abort could not reach the server) leaves behind:
    store.client._create_multipart_upload(B, "left/over", {})
    assert len(store.incomplete_uploads(B, "left/over")) == 1
    assert store.abort_incomplete(B, "left/over") == 1
    assert store.incomplete_uploads(B, "left/over") == []


def test_s3_bad_credentials_is_a_clear_non_retryable_error(s3_auth_server):
    sleeps: list[float] = []
    store = S3ObjectStore.from_env({**s3_auth_server.env, "MINIO_ACCESS_KEY": "AKIAWRONGWRONGWRONG1"},
                                   sleep=sleeps.append)
    for op in (lambda: store.get_bytes(B, "k"), lambda: store.put_bytes(B, "k", b"x"), store.ping,
               lambda: list(store.list(B))):
        with pytest.raises(StorageError, match="check MINIO_ACCESS_KEY / MINIO_SECRET_KEY") as ei:
            op()
        assert ei.value.retryable is False
    assert sleeps == []  # never retried


def test_s3_server_down_is_retryable_after_bounded_retries():
    sleeps: list[float] = []
    store = S3ObjectStore(f"127.0.0.1:{free_port()}", "k", "s", tries=5, base_delay=0.2, max_delay=1.0,
                          sleep=sleeps.append)
    with pytest.raises(StorageError, match="unreachable after 5 tries") as ei:
        store.get_bytes(B, "k")
    assert ei.value.retryable is True
    assert len(sleeps) == 4
    # exponential backoff with jitter in [0.5, 1] x min(max_delay, base * 2^n)
    for n, d in enumerate(sleeps):
        assert 0.5 * min(1.0, 0.2 * 2 ** n) <= d <= min(1.0, 0.2 * 2 ** n)
    with pytest.raises(StorageError) as ei:
        store.ping()  # readiness probes try once
    assert ei.value.retryable


class _FlakyProxy:
    """An HTTP proxy in front of the real S3 server that answers the first ``failures`` requests with
    503 SlowDown. A fake only for the fault: no real S3 server here can be told to throttle on demand."""

    def __init__(self, upstream_port: int, failures: int):
        self.failures = failures
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests += 1
                if proxy.failures > 0:
                    proxy.failures -= 1
                    msg = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                           b'<Message>Please reduce your request rate.</Message></Error>')
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_s3_slowdown_is_retried_then_succeeds(s3_server):
    sleeps: list[float] = []
    with _FlakyProxy(s3_server.port, failures=2) as proxy:
        store = S3ObjectStore(f"127.0.0.1:{proxy.port}", s3_server.access_key, s3_server.secret_key,
                              base_delay=0.01, sleep=sleeps.append)
        store.put_bytes(B, "flaky", b"made it")  # bucket check fails twice with SlowDown, then passes
        assert len(sleeps) == 2
        proxy.failures = 5
        with pytest.raises(StorageError, match="unreachable after 5 tries.*SlowDown") as ei:
            store.get_bytes(B, "flaky")
        assert ei.value.retryable
        assert store.get_bytes(B, "flaky") == b"made it"


def test_s3_bucket_deleted_behind_our_back_is_made_again(s3_server):
    s3_server.reset()
    store = S3ObjectStore.from_env(s3_server.env)
    store.put_bytes(B, "a", b"1")
    store.delete(B, "a")
    store.client.remove_bucket(B)  # an operator removed it; the store still has it cached
    store.put_bytes(B, "b", b"2")
    assert store.get_bytes(B, "b") == b"2"


def test_s3_endpoint_that_is_not_s3_is_a_clear_error():
    """A plain web server (not S3) at MINIO_ENDPOINT: a clear, non-retryable error."""

    class NotS3(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotS3)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        store = S3ObjectStore(f"127.0.0.1:{srv.server_address[1]}", "k", "s", sleep=lambda s: None)
        with pytest.raises(StorageError, match="non-S3 response") as ei:
            store.get_bytes(B, "k")
        assert not ei.value.retryable
    finally:
        srv.shutdown()
        srv.server_close()
