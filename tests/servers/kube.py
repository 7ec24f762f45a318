"""A real Kubernetes control plane (etcd + kube-apiserver 1.20 + controller-manager + scheduler) for tests.

Built from Debian's ``kubernetes`` source package by tests/servers/kube.sh (cached in ~/.cache/the0-kube,
about 5 minutes cold, instant when cached) and started on free loopback ports. There is no kubelet, so
Pods stay Pending; tests act as the kubelet by writing the Pod's status subresource.

If the control plane cannot be built or started the fixture FAILS with the reason; it never skips.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.servers._util import wait_for

KUBE_SH = Path(__file__).resolve().parent / "kube.sh"
BUILD_TIMEOUT = float(os.environ.get("THE0_KUBE_BUILD_TIMEOUT", "1800"))


class KubeCluster:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.env: dict[str, str] = {}

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def _sh(self, *args: str, timeout: float = 180) -> str:
        env = {**os.environ, "THE0_KUBE_OWNER_PID": str(os.getpid())}  # its watchdog stops it if we die
        r = subprocess.run([str(KUBE_SH), *args], capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"kube.sh {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}")
        return r.stdout

    def build(self) -> None:
        self._sh("build", timeout=BUILD_TIMEOUT)

    def start(self) -> "KubeCluster":
        self._sh("start", str(self.dir))
        self._read_env()
        client = self.api_client()
        try:
            from kubernetes import client as k8s

            # The controller-manager creates each namespace's default service account; wait for it
            # to be up so namespaces behave normally.
            core = k8s.CoreV1Api(client)
            wait_for(lambda: core.read_namespaced_service_account("default", "default"), 60,
                     interval=0.2, what="controller-manager to create the default service account")
        finally:
            client.close()
        return self

    def _read_env(self) -> None:
        self.env = dict(
            line.split("=", 1) for line in (self.dir / "env").read_text().splitlines() if "=" in line
        )

    def stop(self) -> None:
        if (self.dir / "env").exists():
            self._sh("stop", str(self.dir), timeout=120)

    def stop_apiserver(self) -> None:
        self._sh("stop-apiserver", str(self.dir), timeout=120)

    def start_apiserver(self) -> None:
        self._sh("start-apiserver", str(self.dir), timeout=180)
        self._read_env()

    def runtime_kubeconfig(self) -> str:
        """A kubeconfig for user ``the0-runtime``, who has no rights until a RoleBinding grants some."""
        path = self.dir / "runtime.kubeconfig"
        text = Path(self.kubeconfig).read_text().replace(self.env["TOKEN"], self.env["RUNTIME_TOKEN"])
        path.write_text(text.replace("name: admin", "name: the0-runtime").replace("user: admin", "user: the0-runtime"))
        return str(path)

    def api_client(self):
        from kubernetes import client as k8s
        from kubernetes import config as kconfig

        conf = k8s.Configuration()
        kconfig.load_kube_config(config_file=self.kubeconfig, client_configuration=conf)
        conf.connection_pool_maxsize = 16
        return k8s.ApiClient(conf)

    def create_namespace(self, prefix: str = "t") -> str:
        from kubernetes import client as k8s

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        with self.api_client() as c:
            k8s.CoreV1Api(c).create_namespace({"metadata": {"name": name}})
        return name

    def delete_namespace(self, name: str) -> None:
        from kubernetes import client as k8s

        with self.api_client() as c:
            try:
                k8s.CoreV1Api(c).delete_namespace(name)
            except k8s.ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        cluster.build()
    except Exception as e:  # noqa: BLE001 - report why, never skip
        pytest.fail(f"cannot build the Kubernetes control plane with {KUBE_SH} build: {e}", pytrace=False)
    try:
        cluster.start()
    except Exception as e:  # noqa: BLE001
        cluster.stop()
        pytest.fail(f"cannot start the Kubernetes control plane: {e} (logs in {cluster.dir})", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def kube_namespace(kube_cluster):
    ns = kube_cluster.create_namespace()
    yield ns
    kube_cluster.delete_namespace(ns)
