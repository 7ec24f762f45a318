"""Helpers for the server fixtures: free ports, waiting for a condition with a deadline, stopping by pid."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``cond`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the condition may fail until the server is up
            last_exc = e
        time.sleep(interval)  # wait-ok: polling interval of a deadline wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM) if _own_group(proc) else proc.terminate()
        proc.wait(grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(grace)


def _own_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def hold_for(cond: Callable[[], object], seconds: float, interval: float = 0.2, what: str = "condition"):
    """Assert ``cond`` stays truthy during a whole window of ``seconds`` (checked every ``interval``).

    For properties over time ("no bot restarted during the outage"); not a way to wait for something.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not cond():
            raise AssertionError(f"{what} stopped holding after {seconds - (deadline - time.monotonic()):.1f}s")
        time.sleep(interval)  # wait-ok: sampling interval of a property held over a window
