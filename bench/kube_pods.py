"""Benchmark: 500 bots -> 500 Pods through KubernetesBackend against a real kube-apiserver.

The backend's overhead per Pod is its time beyond the API server's own: the same 500 manifests are
first created with the raw client (``create_namespaced_pod``) and as plain JSON POSTs (no client model
layer, so the fairest floor), then 500 bots are started through
``KubernetesBackend.start`` in a fresh namespace; overhead = (backend - raw) / 500. The watch's time to
report all 500 Pods is printed too. Everything is deleted at the end.

Run: .venv/bin/python -m bench.kube_pods [--bots 500]   (builds/starts the cluster via tests/servers/kube.sh)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python bench/kube_pods.py` works too

from kubernetes import client as k8s  # noqa: E402

from actors.backends.base import RunSpec  # noqa: E402
from actors.backends.kubernetes import LABEL_MANAGED, KubernetesBackend, api_request  # noqa: E402
from actors.config import Config, KubernetesConfig  # noqa: E402
from actors.messages import REALTIME, BotDefinition  # noqa: E402
from tests.servers._util import wait_for  # noqa: E402
from tests.servers.kube import KubeCluster  # noqa: E402


def make_bot(i: int) -> BotDefinition:
    return BotDefinition.from_document(
        {"id": f"bench-{i:04d}", "config": {"symbol": "BTC", "n": i},
         "custom": {"version": "1", "filePath": f"bots/b{i}.zip",
                    "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}},
        REALTIME,
    )


def clear(core: k8s.CoreV1Api, ns: str) -> None:
    core.delete_collection_namespaced_pod(ns, label_selector=f"{LABEL_MANAGED}=true", grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(ns, label_selector=f"{LABEL_MANAGED}=true").items, 120,
             interval=0.2, what="pods to be deleted")


def row(name: str, value: str, target: str, ok: bool) -> None:
    print(f"| {name} | {value} | {target} | {'ok' if ok else 'MISS'} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bots", type=int, default=500)
    args = ap.parse_args()
    n = args.bots
    work = Path(tempfile.mkdtemp(prefix="the0-kube-bench-"))
    cluster = KubeCluster(work)
    cluster.build()
    cluster.start()
    try:
        ns_raw = cluster.create_namespace("bench-raw")
        ns_be = cluster.create_namespace("bench-be")
        api = cluster.api_client()
        core = k8s.CoreV1Api(api)
        bots = [make_bot(i) for i in range(n)]

        def backend_for(ns: str) -> KubernetesBackend:
            return KubernetesBackend(Config(kubernetes=KubernetesConfig(namespace=ns, kubeconfig=cluster.kubeconfig)))

        # Raw: the API server's own time for the same manifests.
        manifests = [backend_for(ns_raw).pod_manifest(b) for b in bots]
        core.create_namespaced_pod(ns_raw, {**manifests[0], "metadata": {**manifests[0]["metadata"], "name": "warm"}})
        t0 = time.perf_counter()
        for m in manifests:
            core.create_namespaced_pod(ns_raw, m)
        raw = time.perf_counter() - t0

        # Raw POST of the same JSON without the typed client's model layer: the API server's own time.
        ns_post = cluster.create_namespace("bench-post")
        post = [backend_for(ns_post).pod_manifest(b) for b in bots]
        t0 = time.perf_counter()
        for m in post:
            api_request(api, "POST", f"/api/v1/namespaces/{ns_post}/pods", m)
        raw_post = time.perf_counter() - t0
        mb = backend_for(ns_post)
        mb.server_info()
        t0 = time.perf_counter()
        for b in bots:
            mb.pod_manifest(b)
        build = (time.perf_counter() - t0) / n

        # Through the backend, with its watch running as in production.
        be = backend_for(ns_be)
        seen: set[str] = set()
        lock = threading.Lock()

        def on_status(bot_id: str, status: dict) -> None:
            with lock:
                seen.add(bot_id)

        be.watch_status(on_status)
        wait_for(be.watchers_synced, 30, what="watchers")
        be.start(RunSpec(make_bot(99999)))  # warm-up (server facts, connections)
        t0 = time.perf_counter()
        for b in bots:
            be.start(RunSpec(b))
        backend = time.perf_counter() - t0
        wait_for(lambda: len(seen) >= n + 1, 120, what="watch to report every pod")
        watched = time.perf_counter() - t0
        count = len(core.list_namespaced_pod(ns_be, label_selector=f"{LABEL_MANAGED}=true").items)

        t0 = time.perf_counter()
        for b in bots[:50]:
            be.start(RunSpec(b))  # already there, same hash: read back, no change
        idempotent = (time.perf_counter() - t0) / 50

        overhead_ms = (backend - raw) / n * 1000
        overhead_post_ms = (backend - raw_post) / n * 1000
        print("| name | value | target | ok/MISS |")
        print("|---|---|---|---|")
        row(f"pods created via backend ({n} bots)", str(count - 1), str(n), count - 1 == n)
        row("raw create_namespaced_pod per pod", f"{raw / n * 1000:.1f} ms", "(reference)", True)
        row("backend start per pod", f"{backend / n * 1000:.1f} ms", "(reference)", True)
        row("raw POST (plain JSON) per pod", f"{raw_post / n * 1000:.1f} ms", "(reference)", True)
        row("manifest build per pod", f"{build * 1000:.2f} ms", "(reference)", True)
        row("backend overhead per pod vs create_namespaced_pod", f"{overhead_ms:.1f} ms", "< 20 ms", overhead_ms < 20)
        row("backend overhead per pod vs plain POST", f"{overhead_post_ms:.1f} ms", "< 20 ms", overhead_post_ms < 20)
        row(f"watch reported all {n} pods after", f"{watched:.1f} s", "< 30 s", watched < 30)
        row("start of an existing pod (409 + read)", f"{idempotent * 1000:.1f} ms", "< 50 ms", idempotent < 0.05)
        be.close()
        clear(core, ns_raw)
        clear(core, ns_be)
        clear(core, ns_post)
        cluster.delete_namespace(ns_post)
        cluster.delete_namespace(ns_raw)
        cluster.delete_namespace(ns_be)
        api.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
