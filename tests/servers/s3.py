"""A real S3 server for the tests: ``moto_server`` (moto[server]) from the venv on a free 127.0.0.1 port.

Fixtures:
- ``s3_server`` (session): an S3 server accepting any credentials; ``.endpoint``, ``.access_key``,
  ``.secret_key``, ``.env`` (the MINIO_* variables the runtime and the daemon read).
- ``s3_auth_server`` (session): a second moto server with request authentication switched on
  (``INITIAL_NO_AUTH_ACTION_COUNT=0``): it rejects unknown access keys with a real 403
  InvalidAccessKeyId, like MinIO does for bad credentials.
- ``object_store``: parametrized over ``local`` and ``s3``, so contract tests run on both stores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers._util import free_port, port_open, stop_process, wait_for


def moto_server_binary() -> str:
    # moto pins python-dateutil < 3 while the kubernetes client wants >= 3, so make test keeps moto in
    # its own venv (THE0_MOTO_VENV); the project's venv is the fallback for development.
    venv = os.environ.get("THE0_MOTO_VENV")
    if venv and (Path(venv) / "bin" / "moto_server").exists():
        return str(Path(venv) / "bin" / "moto_server")
    cand = Path(sys.executable).parent / "moto_server"
    if cand.exists():
        return str(cand)
    found = shutil.which("moto_server")
    if not found:
        raise RuntimeError('moto_server not found: install it with .venv/bin/pip install "moto[server]"')
    return found


@dataclass
class S3Server:
    dir: Path
    auth: bool = False
    port: int = field(default_factory=free_port)
    access_key: str = "the0-test-key"
    secret_key: str = "the0-test-secret"
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
            "MINIO_USE_SSL": "false",
        }

    def start(self) -> "S3Server":
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("AWS_", "MOTO_")):
                del env[k]
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen(
            [moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "moto.log", "ab"), start_new_session=True, env=env,
        )
        wait_for(lambda: self.proc.poll() is None and port_open(self.port), 30, what="moto_server to listen")
        return self

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API), so a test starts from an empty server."""
        req = urllib.request.Request(f"http://{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    srv = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory):
    srv = S3Server(tmp_path_factory.mktemp("s3auth"), auth=True).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["local", "s3"])
def object_store(request, tmp_path):
    """An empty ObjectStore of each kind (the shared S3 server is reset first)."""
    if request.param == "local":
        from daemon.storage_local import LocalObjectStore

        return LocalObjectStore(tmp_path / "objects")
    from daemon.storage_s3 import S3ObjectStore

    srv = request.getfixturevalue("s3_server")
    srv.reset()
    return S3ObjectStore.from_env(srv.env, base_delay=0.05)
