"""Kubernetes mode, the whole service: two runtime replicas against a real kube-apiserver + etcd, one
Mongo store and one NATS.

Checked: only the Lease holder acts (a created bot gets exactly one Pod); Pod status set through the API
as a kubelet would reaches the BotActor and `ctl status`; the leader killed -9 -> the other replica takes
over within the lease duration, adopts the Pod (same uid, no duplicate) and acts on new events.
"""
from __future__ import annotations

import secrets
import time

import pytest

from actors.backends.kubernetes import pod_name
from tests.integration.test_runtime_process import RuntimeProcess, counter_doc, nats_request
from tests.servers._util import wait_for
from tests.servers.mongo import fresh_db_names

LEASE = "the0-runtime-leader"
LEASE_SECONDS = 4


@pytest.fixture
def replicas(tmp_path, nats_server, mongo_uri, kube_cluster, kube_namespace):
    names = fresh_db_names()
    cfg = tmp_path / "runtime.toml"
    cfg.write_text(
        "[kubernetes]\n"
        f'namespace = "{kube_namespace}"\n'
        f"lease_duration = {LEASE_SECONDS}.0\nrenew_deadline = 3.0\nretry_period = 1.0\n"
    )
    env = {
        "THE0_BACKEND": "kubernetes", "KUBECONFIG": kube_cluster.kubeconfig, "THE0_K8S_NAMESPACE": kube_namespace,
        "THE0_CONFIG": str(cfg), "MONGO_URI": mongo_uri, "THE0_MONGO_BOTS_DB": names.bots_db,
        "THE0_MONGO_SCHEDULES_DB": names.schedules_db,
    }
    rts = {n: RuntimeProcess(tmp_path / n, nats_server.url, dict(env, THE0_INSTANCE_ID=n)) for n in ("rt-a", "rt-b")}
    yield rts, kube_cluster.api_client(), kube_namespace
    for rt in rts.values():
        rt.stop()


def holder(api, ns) -> str | None:
    from kubernetes import client as k8s

    try:
        lease = k8s.CoordinationV1Api(api).read_namespaced_lease(LEASE, ns)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return lease.spec.holder_identity


def bot_pods(api, ns, bot_id):
    from kubernetes import client as k8s

    return [p for p in k8s.CoreV1Api(api).list_namespaced_pod(ns).items if p.metadata.name == pod_name(bot_id)]


def kubelet_reports(api, ns, name, restarts, exit_code):
    from kubernetes import client as k8s

    cs = {"name": "bot", "image": "x", "imageID": "", "ready": True, "restartCount": restarts,
          "state": {"running": {"startedAt": "2026-12-04T10:00:00Z"}},
          "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                       "startedAt": "2026-12-04T09:59:00Z", "finishedAt": "2026-12-04T09:59:59Z"}}}
    k8s.CoreV1Api(api).patch_namespaced_pod_status(name, ns, {"status": {"phase": "Running", "containerStatuses": [cs]}})


def test_two_replicas_one_leader_status_and_failover(replicas):
    rts, api, ns = replicas
    for rt in rts.values():
        rt.start()
    leader_name = wait_for(lambda: holder(api, ns) in rts and holder(api, ns), 30, what="a leader")
    leader = rts[leader_name]
    other = rts["rt-b" if leader_name == "rt-a" else "rt-a"]
    wait_for(leader.ready, 30, what="leader ready")

    bot = f"k-{secrets.token_hex(3)}"
    r = nats_request(leader.nats_url, "the0.bot.created", counter_doc(bot, "counter/code.zip"))
    assert r["ok"], r
    wait_for(lambda: len(bot_pods(api, ns, bot)) == 1, 30, what="one Pod")
    uid = bot_pods(api, ns, bot)[0].metadata.uid

    # a kubelet's status report reaches the BotActor and ctl status
    kubelet_reports(api, ns, pod_name(bot), restarts=2, exit_code=3)
    wait_for(lambda: (leader.status(bot) or {}).get("restarts") == 2
             and leader.status(bot).get("last_exit_code") == 3, 30, what="cluster status in ctl status")

    # the leader dies: the other takes over within the lease duration, adopts the Pod, acts on events
    killed_at = time.monotonic()
    leader.kill9()
    wait_for(lambda: holder(api, ns) == other.env["THE0_INSTANCE_ID"], LEASE_SECONDS * 3, what="takeover")
    took = time.monotonic() - killed_at
    wait_for(lambda: (other.status(bot) or {}).get("state") == "running", 30, what="adopted by the new leader")
    pods = bot_pods(api, ns, bot)
    assert len(pods) == 1 and pods[0].metadata.uid == uid  # neither duplicated nor replaced
    bot2 = f"k2-{secrets.token_hex(3)}"
    assert nats_request(other.nats_url, "the0.bot.created", counter_doc(bot2, "counter/code.zip"))["ok"]
    wait_for(lambda: len(bot_pods(api, ns, bot2)) == 1, 30, what="new leader acts on events")
    print(f"takeover observed {took:.1f}s after kill -9 (lease {LEASE_SECONDS}s)")
