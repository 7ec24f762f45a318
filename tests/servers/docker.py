"""A real dockerd for the tests, and the runtime images built from images/ with the local base.

Fixtures:
- ``docker_daemon`` (session): makes sure dockerd answers. When ``docker info`` fails it starts
  ``dockerd`` itself (log in the session's tmp dir) and stops it, by pid, at session end; a dockerd that
  was already running is left alone. ``.client()`` gives a docker SDK client; ``.restart()`` stops and
  starts dockerd (containers die with it: no live-restore) for the reconnect tests.
- ``docker_images`` (session): runs ``images/build.sh --base local --only python3.11,cpp`` so the images
  hold the daemon code of this checkout (docker's layer cache makes a rebuild take seconds; the first
  run debootstraps the local base, about two minutes). ``THE0_TEST_IMAGES=keep`` skips the rebuild when
  the images exist already.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers._util import wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PREFIX = "the0-runtime"
TEST_RUNTIMES = ("python3.11", "cpp")
PIDFILE = Path("/var/run/docker.pid")


def _docker_info_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class DockerDaemon:
    """dockerd, started here only when none answers; stopped at the end only if started here."""

    def __init__(self, log_dir: Path):
        self.log_path = log_dir / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.started_here = False

    def ensure(self) -> "DockerDaemon":
        if _docker_info_ok():
            return self
        if not shutil.which("dockerd"):
            raise RuntimeError("dockerd not found: apt-get install -y docker.io (make test does)")
        self._spawn()
        self.started_here = True
        return self

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            ["dockerd"], stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(lambda: self.proc.poll() is None and _docker_info_ok(), 60, interval=0.2,
                 what=f"dockerd to answer (log: {self.log_path})")

    def pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            return int(PIDFILE.read_text().strip())
        except (OSError, ValueError):
            return None

    def client(self):
        import docker

        return docker.from_env(timeout=120)

    def restart(self) -> None:
        """SIGTERM dockerd, wait for it to exit, start it again (owned by this fixture from then on)."""
        pid = self.pid()
        if pid is None:
            raise RuntimeError("cannot restart dockerd: its pid is unknown (no /var/run/docker.pid)")
        os.kill(pid, signal.SIGTERM)
        if self.proc is not None and self.proc.pid == pid:
            self.proc.wait(60)
        else:
            wait_for(lambda: not _pid_alive(pid), 60, interval=0.1, what="dockerd to exit")
        self._spawn()

    def stop(self) -> None:
        if not self.started_here or self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def build_test_images(runtimes=TEST_RUNTIMES, tag: str = "0.1.0") -> None:
    names = [f"{IMAGE_PREFIX}/{r}:{tag}" for r in ("base", *runtimes)]
    present = all(
        subprocess.run(["docker", "image", "inspect", n], capture_output=True).returncode == 0 for n in names
    )
    if present and os.environ.get("THE0_TEST_IMAGES") == "keep":
        return
    started = time.monotonic()
    res = subprocess.run(
        ["sh", str(ROOT / "images" / "build.sh"), "--base", "local", "--only", ",".join(runtimes), "--tag", tag],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if res.returncode != 0:
        raise RuntimeError(f"images/build.sh --base local failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    print(f"\n[docker] test images ready in {time.monotonic() - started:.0f}s")


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory):
    d = DockerDaemon(tmp_path_factory.mktemp("dockerd")).ensure()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def docker_images(docker_daemon):
    build_test_images()
    return {r: f"{IMAGE_PREFIX}/{r}:0.1.0" for r in TEST_RUNTIMES}
