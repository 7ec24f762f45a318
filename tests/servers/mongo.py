"""MongoDB for the tests: a real server at MONGO_URI, or the Mongo wire server (mongoeco[wire]) started here.

Fixtures:
- ``mongo_uri`` (session): MONGO_URI when set, else a wire server started once for the session.
- ``mongo_db_names`` (function): fresh ``(bots_db, schedules_db)`` names for one test, dropped after it,
  so tests (and parallel runs against one real MongoDB) never see each other's documents.
- ``mongo_restartable`` (function): an object with ``.uri``, ``.stop()``, ``.start()`` for outage tests.
  Without MONGO_URI it is a wire server of its own (SQLite file, same port and data after a restart);
  with MONGO_URI it is a TCP relay on 127.0.0.1 in front of that server (only single-host
  ``mongodb://`` URIs), whose stop closes every connection and refuses new ones.

The wire server needs Python >= 3.13: a venv at /tmp/the0-mongo-venv (or THE0_MONGO_VENV) made by
``make test`` (THE0_MONGO_VENV=.venv-mongo), i.e. ``/root/.pyenv/versions/3.13.0/bin/python3 -m venv /tmp/the0-mongo-venv &&
/tmp/the0-mongo-venv/bin/pip install "mongoeco[wire]"``.

By hand: ``.venv/bin/python -m tests.servers.mongo [--port P] [--data FILE]`` runs one until Ctrl-C.
"""
from __future__ import annotations

import itertools
import os
import secrets
import socket
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers._util import free_port, port_open, stop_process, wait_for

DEFAULT_VENV = "/tmp/the0-mongo-venv"
PYTHON313 = "/root/.pyenv/versions/3.13.0/bin/python3"
RUNNER = Path(__file__).resolve().parent / "mongo_server.py"
START_TIMEOUT = 60.0  # importing mongoeco takes a few seconds on a busy 2-core machine


def venv_python() -> str:
    """The 3.13 interpreter that has mongoeco[wire]; a RuntimeError saying how to install it otherwise."""
    venv = Path(os.environ.get("THE0_MONGO_VENV") or DEFAULT_VENV)
    py = venv / "bin" / "python"
    if not py.exists():
        raise RuntimeError(
            f"the Mongo wire server venv is missing at {venv}. Install it with `make deps`, or: "
            f'{PYTHON313} -m venv {venv} && {venv}/bin/pip install "mongoeco[wire]" '
            "(or set MONGO_URI to a real MongoDB)"
        )
    return str(py)


class MongoWireServer:
    """The mongoeco wire server in a child process on 127.0.0.1:port; restartable on the same port/data."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data = self.workdir / "mongo.sqlite3" if persistent else None
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> "MongoWireServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [venv_python(), str(RUNNER), "--port", str(self.port)]
        if self.data is not None:
            cmd += ["--data", str(self.data)]
        log = open(self.workdir / "mongo.log", "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                tail = (self.workdir / "mongo.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Mongo wire server exited with {self.proc.returncode}: {tail}")
            return port_open(self.port)

        try:
            wait_for(up, START_TIMEOUT, interval=0.1, what=f"the Mongo wire server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10.0)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class TcpRelay:
    """Forwards 127.0.0.1:port to a target; ``stop`` drops every connection, ``start`` listens again."""

    def __init__(self, target: tuple[str, int], port: int | None = None):
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "TcpRelay":
        if self._listener is not None:
            return self
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), name="mongo-relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), name="mongo-relay-pipe", daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._conns -= {src, dst}


@dataclass(frozen=True)
class MongoDbNames:
    bots_db: str
    schedules_db: str


class RelayedMongo:
    """A real MongoDB behind a ``TcpRelay`` (``.uri``, ``.stop()``, ``.start()``)."""

    def __init__(self, uri: str):
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "mongodb" or "," in parts.netloc:
            raise RuntimeError(f"outage tests need a single-host mongodb:// MONGO_URI, got {parts.scheme}://...")
        userinfo, _, hostport = parts.netloc.rpartition("@")
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "27017")
        self.relay = TcpRelay((host.strip("[]"), int(port)))
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.relay.port}"
        query = urllib.parse.parse_qsl(parts.query)
        query = [(k, v) for k, v in query if k.lower() not in ("directconnection", "replicaset")]
        query.append(("directConnection", "true"))
        self.uri = urllib.parse.urlunsplit(("mongodb", netloc, parts.path or "/", urllib.parse.urlencode(query), ""))

    def start(self) -> "RelayedMongo":
        self.relay.start()
        return self

    def stop(self) -> None:
        self.relay.stop()


_run_token = secrets.token_hex(3)
_db_counter = itertools.count(1)


def fresh_db_names() -> MongoDbNames:
    n = next(_db_counter)
    return MongoDbNames(f"t{_run_token}_{n}_bot_runner", f"t{_run_token}_{n}_bot_scheduler")


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    if os.environ.get("MONGO_URI"):
        yield os.environ["MONGO_URI"]
        return
    try:
        srv = MongoWireServer(tmp_path_factory.mktemp("mongo"), persistent=False).start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield srv.uri
    srv.stop()


@pytest.fixture
def mongo_db_names(mongo_uri):
    names = fresh_db_names()
    yield names
    import pymongo

    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    try:
        for db in (names.bots_db, names.schedules_db):
            client.drop_database(db)
    except pymongo.errors.PyMongoError:
        pass  # best effort: the server may have been stopped by the test
    finally:
        client.close()


@pytest.fixture
def mongo_restartable(tmp_path):
    if os.environ.get("MONGO_URI"):
        srv = RelayedMongo(os.environ["MONGO_URI"]).start()
    else:
        try:
            srv = MongoWireServer(tmp_path / "mongo-restartable").start()
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
    yield srv
    srv.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    p = argparse.ArgumentParser(description="Run the Mongo wire server (mongoeco[wire]) until Ctrl-C.")
    p.add_argument("--port", type=int, default=27017)
    p.add_argument("--data", default=None, help="directory for its SQLite data (default: a temp dir)")
    args = p.parse_args(argv)
    import tempfile

    workdir = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="the0-mongo-"))
    srv = MongoWireServer(workdir, port=args.port).start()
    print(f"MONGO_URI={srv.uri}  (data and log in {workdir}; Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
