"""Kubernetes mode against a real kube-apiserver (1.20, built from Debian's source; tests/servers/kube.py).

There is no kubelet here, so Pods never run: where a kubelet would report container states, the test
writes the Pod's status subresource itself, exactly as a kubelet does (that is the only stand-in).
"""
from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from kubernetes import client as k8s

from actors.backends.base import KIND_REALTIME, KIND_SCHEDULED, BackendError, RunSpec, TaskNotFound
from actors.backends.kubernetes import (
    ANN_CONFIG_HASH,
    BOT_CONTAINER,
    LABEL_BOT_ID,
    LABEL_KIND,
    LABEL_MANAGED,
    KubernetesBackend,
    ServerInfo,
    api_request,
    cronjob_name,
    pod_name,
)
from actors.config import Config, KubernetesConfig
from actors.leader import LeaderElector
from actors.messages import REALTIME, SCHEDULED, BotDefinition, config_hash
from tests.servers._util import wait_for


def bot(bot_id: str, **config) -> BotDefinition:
    return BotDefinition.from_document(
        {"id": bot_id, "config": dict(config),
         "custom": {"version": "1.0.0", "filePath": f"bots/{bot_id}.zip",
                    "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}},
        REALTIME,
    )


def scheduled(bot_id: str, schedule: str = "*/5 * * * *", timezone: str = "UTC", **config) -> BotDefinition:
    # Built directly (not from a document) so this test does not depend on the cron parser's module.
    cfg = {"schedule": schedule, "timezone": timezone, **config}
    return BotDefinition(
        id=bot_id, kind=SCHEDULED, enabled=True, runtime="python3.11", entrypoint="main.py",
        code_file=f"bots/{bot_id}.zip", version="1", config=cfg, schedule=schedule, timezone=timezone,
        concurrency=config.get("concurrency", "forbid"), starting_deadline=120.0, run_timeout=600.0,
        config_hash=config_hash(cfg, "1", "main.py", "python3.11"),
    )


@pytest.fixture
def backend(kube_cluster, kube_namespace):
    cfg = Config(
        minio_endpoint="127.0.0.1:9000", minio_access_key="AKIASECRETVALUE", minio_secret_key="s3cr3t-value",
        kubernetes=KubernetesConfig(namespace=kube_namespace, kubeconfig=kube_cluster.kubeconfig),
    )
    b = KubernetesBackend(cfg, nats_url="nats://127.0.0.1:4333")
    yield b
    b.close()


@pytest.fixture
def core(kube_cluster):
    with kube_cluster.api_client() as c:
        yield k8s.CoreV1Api(c)


def managed_pods(core, ns):
    return core.list_namespaced_pod(ns, label_selector=f"{LABEL_MANAGED}=true").items


def kubelet_status(core, ns, name, *, restarts=0, running=True, last_exit=None, exit_code=None, reason="Error"):
    """Write the bot container's status as a kubelet would (the only fake: no kubelet runs here)."""
    cs = {"name": BOT_CONTAINER, "ready": running and exit_code is None, "restartCount": restarts,
          "image": "the0-runtime/python3.11:0.1.0", "imageID": "", "containerID": f"docker://{name}-{restarts}",
          "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    if exit_code is not None:
        cs["state"] = {"terminated": {"exitCode": exit_code, "reason": reason, "containerID": f"docker://{name}-{restarts}",
                                      "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z"}}
    if last_exit is not None:
        cs["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error",
                                          "containerID": f"docker://{name}-{restarts - 1}",
                                          "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:30Z"}}
    phase = "Running" if running else "Failed"
    core.patch_namespaced_pod_status(name, ns, {"status": {"phase": phase, "containerStatuses": [cs]}})


def test_pods_created_replaced_deleted(backend, core, kube_namespace):
    ns = kube_namespace
    a, b2 = bot("alpha", symbol="BTC"), bot("Beta_Bot", symbol="ETH")
    ha = backend.start(RunSpec(a))
    hb = backend.start(RunSpec(b2))
    pods = {p.metadata.name: p for p in managed_pods(core, ns)}
    assert set(pods) == {"bot-alpha", pod_name("Beta_Bot")}
    assert pod_name("Beta_Bot").startswith("bot-beta-bot-") and len(pod_name("Beta_Bot")) <= 63
    assert (ha.bot_id, ha.kind, ha.ref) == ("alpha", KIND_REALTIME, "bot-alpha")
    assert hb.bot_id == "Beta_Bot"

    p = pods["bot-alpha"]
    assert p.metadata.labels == {LABEL_MANAGED: "true", LABEL_BOT_ID: "alpha", LABEL_KIND: "realtime"}
    assert p.metadata.annotations[ANN_CONFIG_HASH] == a.config_hash
    assert p.spec.restart_policy == "Always"
    assert [c.name for c in p.spec.init_containers] == ["daemon-init"]  # 1.20: no native sidecars
    assert [c.name for c in p.spec.containers] == ["bot", "daemon-sync"]
    init = p.spec.init_containers[0]
    assert init.command == ["python3", "-m", "daemon", "init"]
    assert init.image == "the0-runtime/python3.11:0.1.0"
    assert init.env_from[0].secret_ref.name == "the0-storage"
    assert {v.name for v in p.spec.volumes} == {"bot", "state", "the0", "tmp"}
    assert all(v.empty_dir is not None for v in p.spec.volumes)
    botc = p.spec.containers[0]
    assert botc.command == ["/bin/sh", "/var/the0/entrypoint.sh"]
    env = {e.name: e.value for e in botc.env}
    assert set(env) == {"BOT_ID", "BOT_CONFIG", "STATE_DIR", "CODE_MOUNT_DIR", "BOT_TYPE"}
    assert env["BOT_ID"] == "alpha" and '"symbol":"BTC"' in env["BOT_CONFIG"]
    assert not botc.env_from
    # No credential anywhere in the manifest: the daemons read them from the Secret.
    raw = core.api_client.sanitize_for_serialization(p)
    assert "AKIASECRETVALUE" not in str(raw) and "s3cr3t-value" not in str(raw)
    for c in p.spec.containers + p.spec.init_containers:
        assert not any(e.name.startswith(("MINIO_", "NATS_USER", "NATS_PASS")) for e in c.env or [])
        if c.name == "bot":
            assert not any(e.name.startswith(("MINIO_", "NATS_")) for e in c.env)
        sc = c.security_context
        assert sc.read_only_root_filesystem and sc.run_as_non_root and sc.run_as_user == 1000
        assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
    assert p.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert botc.resources.limits == {"memory": "512Mi", "cpu": "1"}

    # Starting again with the same config keeps the Pod.
    uid = p.metadata.uid
    assert backend.start(RunSpec(a)).ref == "bot-alpha"
    assert core.read_namespaced_pod("bot-alpha", ns).metadata.uid == uid

    # A config change replaces the Pod exactly once.
    a2 = bot("alpha", symbol="SOL", limits={"memory_mb": 99999, "cpus": 2})
    h2 = backend.start(RunSpec(a2))
    assert h2.config_hash == a2.config_hash
    now = [p for p in managed_pods(core, ns) if p.metadata.name == "bot-alpha"]
    assert len(now) == 1 and now[0].metadata.uid != uid
    assert now[0].metadata.annotations[ANN_CONFIG_HASH] == a2.config_hash
    assert now[0].spec.containers[0].resources.limits == {"memory": "8Gi", "cpu": "2"}  # bounded by max
    uid2 = now[0].metadata.uid
    assert backend.start(RunSpec(a2)).ref == "bot-alpha"
    assert core.read_namespaced_pod("bot-alpha", ns).metadata.uid == uid2

    st = backend.inspect(h2)
    assert st.running and st.phase == "Pending" and st.restarts == 0
    assert sorted(h.bot_id for h in backend.list_managed()) == ["Beta_Bot", "alpha"]

    # No kubelet here: the container never started, so the API server has no log lines for it.
    assert backend.logs(h2, tail=10) == []

    backend.stop(h2, grace=0)
    with pytest.raises(TaskNotFound):
        backend.inspect(h2)
    backend.remove(hb)
    assert managed_pods(core, ns) == []
    assert backend.list_managed() == []


def test_cronjobs_created_updated_removed(backend, kube_cluster, kube_namespace):
    ns = kube_namespace
    info = backend.server_info()
    assert info.cronjob_version == "batch/v1beta1" and not info.cronjob_time_zone  # what 1.20 serves
    s = scheduled("nightly", "0 3 * * *", timezone="Europe/London", concurrency="replace")
    backend.ensure_schedule(s)
    with kube_cluster.api_client() as c:
        path = f"/apis/batch/v1beta1/namespaces/{ns}/cronjobs"

        def get_all():
            return backend._raw("GET", path)["items"]

        items = get_all()
        assert [i["metadata"]["name"] for i in items] == [cronjob_name("nightly")] == ["schedule-nightly"]
        cj = items[0]
        spec = cj["spec"]
        assert spec["schedule"] == "0 3 * * *"
        assert "timeZone" not in spec  # 1.20 has none: the cron runs in UTC (logged)
        assert spec["concurrencyPolicy"] == "Replace"
        assert spec["startingDeadlineSeconds"] == 120
        assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] == 600 and job["backoffLimit"] == 0
        tmpl = job["template"]
        assert tmpl["spec"]["restartPolicy"] == "Never"
        assert tmpl["metadata"]["labels"][LABEL_KIND] == "scheduled"
        assert [x["name"] for x in tmpl["spec"]["containers"]] == ["bot", "daemon-sync"]
        bot_env = {e["name"] for e in tmpl["spec"]["containers"][0]["env"]}
        assert bot_env == {"BOT_ID", "BOT_CONFIG", "STATE_DIR", "CODE_MOUNT_DIR", "BOT_TYPE"}
        assert "envFrom" not in tmpl["spec"]["containers"][0]
        rv = cj["metadata"]["resourceVersion"]

        backend.ensure_schedule(s)  # same: untouched
        assert get_all()[0]["metadata"]["resourceVersion"] == rv

        s2 = scheduled("nightly", "30 4 * * 1", concurrency="allow")
        backend.ensure_schedule(s2)
        items = get_all()
        assert len(items) == 1 and items[0]["metadata"]["uid"] == cj["metadata"]["uid"]
        assert items[0]["spec"]["schedule"] == "30 4 * * 1"
        assert items[0]["spec"]["concurrencyPolicy"] == "Allow"

        backend.ensure_schedule(scheduled("other", "@hourly"))
        assert backend.list_schedules().keys() == {"nightly", "other"}
        backend.remove_schedule("nightly")
        backend.remove_schedule("nightly")  # already gone: no error
        assert [i["metadata"]["name"] for i in get_all()] == ["schedule-other"]


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.exits = []
        self.statuses = []

    def on_exit(self, handle, result):
        with self.lock:
            self.exits.append((handle, result))

    def on_status(self, bot_id, status):
        with self.lock:
            self.statuses.append((bot_id, status))

    def status_of(self, bot_id, **want):
        with self.lock:
            for b, s in reversed(self.statuses):
                if b == bot_id:
                    return all(s.get(k) == v for k, v in want.items())
        return False

    def exits_of(self, bot_id):
        with self.lock:
            return [r for h, r in self.exits if h.bot_id == bot_id]


def test_pod_status_reaches_callbacks(backend, core, kube_namespace):
    rec = Recorder()
    backend.watch(rec.on_exit)
    backend.watch_status(rec.on_status)
    wait_for(backend.watchers_synced, 20, what="watchers to list")
    h = backend.start(RunSpec(bot("gamma")))
    wait_for(lambda: rec.status_of("gamma", phase="Pending", restarts=0), 20, what="Pending status")

    # The kubelet restarted the bot once after it exited with 3.
    kubelet_status(core, kube_namespace, h.ref, restarts=1, last_exit=3)
    wait_for(lambda: rec.status_of("gamma", phase="Running", restarts=1, last_exit_code=3, ready=True), 20,
             what="restart reported")
    wait_for(lambda: len(rec.exits_of("gamma")) == 1, 20, what="the exit with code 3")
    assert rec.exits_of("gamma")[0].code == 3

    # Now it is OOM-killed and stays terminated; the same status again reports nothing new.
    kubelet_status(core, kube_namespace, h.ref, restarts=1, last_exit=3, exit_code=137, reason="OOMKilled",
                   running=False)
    wait_for(lambda: len(rec.exits_of("gamma")) == 2, 20, what="the OOM exit")
    oom = rec.exits_of("gamma")[1]
    assert oom.code == 137 and oom.oom_killed
    wait_for(lambda: rec.status_of("gamma", phase="Failed", last_exit_code=137, ready=False), 20, what="Failed")
    st = backend.inspect(h)
    assert not st.running and st.restarts == 1 and st.exit.code == 137

    # Deleting a Pod ourselves is no exit; a Pod deleted behind our back is one.
    other = backend.start(RunSpec(bot("delta")))
    wait_for(lambda: rec.status_of("delta", phase="Pending"), 20, what="delta seen")
    core.delete_namespaced_pod(other.ref, kube_namespace, grace_period_seconds=0)
    wait_for(lambda: [r.reason for r in rec.exits_of("delta")] == ["pod deleted"], 20, what="deletion as exit")
    backend.stop(h, grace=0)
    wait_for(lambda: rec.status_of("gamma", deleted=True), 20, what="gamma deletion seen")
    assert len(rec.exits_of("gamma")) == 2


def test_scheduled_run_job_exit(backend, kube_cluster, kube_namespace):
    rec = Recorder()
    backend.watch(rec.on_exit)
    wait_for(backend.watchers_synced, 20, what="watchers to list")
    s = scheduled("sched1", "*/10 * * * *")
    h = backend.run_once(RunSpec(s, run_id="sched1-1700000000", scheduled_at=1700000000))
    assert h.kind == KIND_SCHEDULED and h.run_id == "sched1-1700000000"
    assert backend.run_once(RunSpec(s, run_id="sched1-1700000000")).ref == h.ref  # idempotent by run id
    with kube_cluster.api_client() as c:
        batch = k8s.BatchV1Api(c)
        job = batch.read_namespaced_job(h.ref, kube_namespace)
        assert job.spec.template.spec.restart_policy == "Never"
        # Report the Job finished, as the Job controller would once its Pod succeeded.
        batch.patch_namespaced_job_status(h.ref, kube_namespace, {"status": {
            "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "succeeded": 1, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:10Z"}})
    wait_for(lambda: [r.code for r in rec.exits_of("sched1")] == [0], 20, what="the run's exit")
    assert [h2.run_id for h2 in backend.list_managed() if h2.kind == KIND_SCHEDULED] == ["sched1-1700000000"]
    backend.remove(h)


def test_watch_relists_after_apiserver_restart(backend, kube_cluster, core, kube_namespace):
    ns = kube_namespace
    rec = Recorder()
    backend.watch_status(rec.on_status)
    backend.watch(rec.on_exit)
    wait_for(backend.watchers_synced, 20, what="watchers to list")
    keep = backend.start(RunSpec(bot("keep")))
    gone = backend.start(RunSpec(bot("gone")))
    wait_for(lambda: rec.status_of("gone", phase="Pending"), 20, what="gone seen")
    lists = backend.relists()

    kube_cluster.stop_apiserver()  # etcd keeps the data; the watches break
    wait_for(lambda: not backend.watchers_synced(), 30, what="watchers to notice the cut")
    kube_cluster.start_apiserver()
    # Changes the watcher was not connected for: one Pod appears, one disappears.
    fresh = backend.pod_manifest(bot("fresh"))
    wait_for(lambda: _create_pod(core, ns, fresh), 30, what="create after restart")
    wait_for(lambda: _delete_pod(core, ns, gone.ref), 30, what="delete after restart")

    wait_for(backend.watchers_synced, 60, what="watchers to relist")
    assert backend.relists() > lists
    wait_for(lambda: rec.status_of("fresh", phase="Pending"), 30, what="the Pod created while cut off")
    wait_for(lambda: rec.status_of("gone", deleted=True), 30, what="the Pod deleted while cut off")
    wait_for(lambda: any(r.reason == "pod deleted" for r in rec.exits_of("gone")), 30, what="gone's exit")
    assert {h.bot_id for h in backend.list_managed()} == {"keep", "fresh"}
    assert backend.inspect(keep).running


def _create_pod(core, ns, manifest):
    try:
        core.create_namespaced_pod(ns, manifest)
    except k8s.ApiException as e:
        if e.status != 409:
            raise
    return True


def _delete_pod(core, ns, name):
    try:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    except k8s.ApiException as e:
        if e.status != 404:
            raise
    return True


def _elector(kube_cluster, ns, identity, events):
    return LeaderElector(
        kube_cluster.api_client(), ns, "the0-test-leader", identity,
        lease_duration=3.0, renew_deadline=2.0, retry_period=0.5,
        on_started_leading=lambda: events.append((identity, "start")),
        on_stopped_leading=lambda: events.append((identity, "stop")),
    )


def test_leader_election_one_leads_then_hands_over(kube_cluster, kube_namespace):
    events: list = []
    a = _elector(kube_cluster, kube_namespace, "replica-a", events).start()
    wait_for(lambda: a.is_leader, 15, what="a to lead")
    b = _elector(kube_cluster, kube_namespace, "replica-b", events).start()
    try:
        coord = k8s.CoordinationV1Api(kube_cluster.api_client())
        # b keeps trying for several rounds while a renews; b never leads.
        wait_for(lambda: coord.read_namespaced_lease("the0-test-leader", kube_namespace).spec.renew_time
                 and len([e for e in events]) == 1, 5, what="steady state")
        renewed_before = coord.read_namespaced_lease("the0-test-leader", kube_namespace).spec.renew_time
        wait_for(lambda: coord.read_namespaced_lease("the0-test-leader", kube_namespace).spec.renew_time
                 != renewed_before, 10, what="a to renew")
        assert a.is_leader and not b.is_leader
        assert events == [("replica-a", "start")]

        # a crashes: its renewals stop and the Lease is not released. b takes over after expiry.
        a.stop(release=False)
        wait_for(lambda: b.is_leader, 3.0 + 3 * 0.5 + 2, what="b to take over within the lease duration")
        lease = coord.read_namespaced_lease("the0-test-leader", kube_namespace)
        assert lease.spec.holder_identity == "replica-b" and lease.spec.lease_transitions == 1

        # A clean stop releases at once: c gets it without waiting for expiry.
        c = _elector(kube_cluster, kube_namespace, "replica-c", events).start()
        b.stop()
        assert coord.read_namespaced_lease("the0-test-leader", kube_namespace).spec.holder_identity in ("", None, "replica-c")
        wait_for(lambda: c.is_leader, 5, what="c to lead after b released")
        c.stop()
        assert [e for e in events if e[0] == "replica-b"] == [("replica-b", "start"), ("replica-b", "stop")]
    finally:
        for e in (a, b):
            e.stop()


def test_leader_steps_down_when_lease_taken(kube_cluster, kube_namespace):
    events: list = []
    a = _elector(kube_cluster, kube_namespace, "replica-a", events).start()
    try:
        wait_for(lambda: a.is_leader, 15, what="a to lead")
        api = kube_cluster.api_client()
        import datetime as dt

        def steal():
            path = f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases/the0-test-leader"
            lease = api_request(api, "GET", path)
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            lease["spec"].update(holderIdentity="intruder", leaseDurationSeconds=60, renewTime=now)
            return api_request(api, "PUT", path, lease)

        wait_for(steal, 5, what="steal the lease (409 while a renews: retried)")
        wait_for(lambda: not a.is_leader, 10, what="a to step down")
        assert events == [("replica-a", "start"), ("replica-a", "stop")]
    finally:
        a.stop()


def test_bad_schedule_and_unreachable_api_fail_clearly(kube_cluster, kube_namespace):
    cfg = Config(kubernetes=KubernetesConfig(namespace=kube_namespace, kubeconfig=kube_cluster.kubeconfig))
    b = KubernetesBackend(cfg)
    with pytest.raises(BackendError, match="minute resolution"):
        b.ensure_schedule(scheduled("secs", "*/5 * * * * *"))
    bad = Config(kubernetes=replace(cfg.kubernetes, kubeconfig="/nonexistent/kubeconfig"))
    with pytest.raises(BackendError, match="KUBECONFIG"):
        KubernetesBackend(bad)


def test_rbac_role_is_enough(kube_cluster, kube_namespace, core):
    """Everything the backend and the elector do works as a user bound only to config/kubernetes/role.yaml."""
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[2] / "config" / "kubernetes"
    role = yaml.safe_load((root / "role.yaml").read_text())
    role["metadata"]["namespace"] = kube_namespace
    binding = yaml.safe_load((root / "rolebinding.yaml").read_text())
    binding["metadata"]["namespace"] = kube_namespace
    binding["subjects"] = [{"kind": "User", "name": "the0-runtime", "apiGroup": "rbac.authorization.k8s.io"}]
    with kube_cluster.api_client() as c:
        rbac = k8s.RbacAuthorizationV1Api(c)
        rbac.create_namespaced_role(kube_namespace, role)
        rbac.create_namespaced_role_binding(kube_namespace, binding)

    cfg = Config(kubernetes=KubernetesConfig(namespace=kube_namespace, kubeconfig=kube_cluster.runtime_kubeconfig()))
    b = KubernetesBackend(cfg)
    rec = Recorder()
    try:
        # RBAC is evaluated from an informer cache: wait until the binding is in effect.
        wait_for(lambda: b.list_managed() == [], 20, what="the RoleBinding to take effect")
        b.watch_status(rec.on_status)
        h = b.start(RunSpec(bot("rbac1")))
        wait_for(lambda: rec.status_of("rbac1", phase="Pending"), 20, what="watch as the runtime user")
        b.start(RunSpec(bot("rbac1", changed=True)))  # replace: read, delete, create
        s = scheduled("rbac2")
        b.ensure_schedule(s)
        b.ensure_schedule(scheduled("rbac2", "1 * * * *"))  # update
        run = b.run_once(RunSpec(s, run_id="rbac2-1"))
        b.inspect(run)
        b.remove(run)
        b.remove_schedule("rbac2")
        b.stop(h, 0)
        events: list = []
        e = LeaderElector(b.api, kube_namespace, "rbac-lease", "me", 3.0, 2.0, 0.5,
                          lambda: events.append("start"), lambda: events.append("stop")).start()
        wait_for(lambda: e.is_leader, 10, what="leadership as the runtime user")
        e.stop()
        assert events == ["start", "stop"]
        # And nothing beyond: no Secrets, nothing in another namespace.
        forbidden = KubernetesBackend(Config(kubernetes=replace(cfg.kubernetes, namespace="default")))
        with pytest.raises(Exception, match="403"):
            forbidden.list_managed()
        with pytest.raises(k8s.ApiException) as ei:
            k8s.CoreV1Api(b.api).list_namespaced_secret(kube_namespace)
        assert ei.value.status == 403
    finally:
        b.close()


def test_manifests_for_newer_servers(backend):
    """Native sidecars (1.29+), CronJob timeZone (1.27+) and batch/v1 cannot run here (the server is 1.20):
    the manifests for them are checked as data, with the server facts set to a newer version."""
    backend._info = ServerInfo(1, 30, "batch/v1")
    pod = backend.pod_manifest(bot("newer"))
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["daemon-init", "daemon-sync"]
    assert "restartPolicy" not in inits[0] and inits[1]["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["bot"]
    cj = backend.cronjob_manifest(scheduled("newer", "0 0 3 * * *", timezone="America/New_York"))
    assert cj["apiVersion"] == "batch/v1"
    assert cj["spec"]["timeZone"] == "America/New_York" and cj["spec"]["schedule"] == "0 3 * * *"
    tmpl = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert tmpl["restartPolicy"] == "Never" and tmpl["initContainers"][1]["restartPolicy"] == "Always"


def test_leader_race_exactly_one(kube_cluster, kube_namespace):
    events: list = []
    electors = [_elector(kube_cluster, kube_namespace, f"racer-{i}", events) for i in range(3)]
    for e in electors:
        e.start()  # all race to create the same Lease
    try:
        wait_for(lambda: any(e.is_leader for e in electors), 15, what="someone to lead")
        api = kube_cluster.api_client()
        path = f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases/the0-test-leader"
        first = api_request(api, "GET", path)["spec"]["renewTime"]
        # Over several renew rounds, exactly one leads and it is the Lease's holder.
        wait_for(lambda: api_request(api, "GET", path)["spec"]["renewTime"] != first, 10, what="a renewal")
        leaders = [e for e in electors if e.is_leader]
        assert len(leaders) == 1
        assert api_request(api, "GET", path)["spec"]["holderIdentity"] == leaders[0].identity
        assert [x for x in events if x[1] == "start"] == [(leaders[0].identity, "start")]
    finally:
        for e in electors:
            e.stop()


def test_watch_from_an_expired_resource_version_gets_410_and_relists(backend, kube_cluster, core, kube_namespace):
    """A resourceVersion older than the API server's watch cache (rebuilt from the current revision when
    the server restarts) is answered with 410 Gone; the watcher then lists again instead of failing."""
    from actors.backends.kubernetes import MANAGED_SELECTOR, _Watcher

    ns = kube_namespace
    path = f"/api/v1/namespaces/{ns}/pods"
    probe = _Watcher(backend, "pods", path, MANAGED_SELECTOR, lambda *a: None)
    stale_rv = probe._list()
    for i in range(5):  # move the revision on past stale_rv
        _create_pod(core, ns, backend.pod_manifest(bot(f"filler-{i}")))
        _delete_pod(core, ns, pod_name(f"filler-{i}"))
    kube_cluster.stop_apiserver()
    kube_cluster.start_apiserver()
    wait_for(lambda: core.list_namespaced_pod(ns) is not None, 60, what="API server back")

    got: list = []
    t = threading.Thread(target=lambda: got.append(probe._watch(stale_rv)), daemon=True)
    t.start()
    wait_for(lambda: got, 30, what="the API server's answer to a stale resourceVersion")
    assert got == [None]  # None: 410 Gone seen, relist

    class StaleFirst(_Watcher):
        """Its first list hands the stale resourceVersion to the watch, as after a long disconnection."""

        def _list(self):
            rv = super()._list()
            return stale_rv if self.lists == 1 else rv

    seen: list = []
    w = StaleFirst(backend, "pods", path, MANAGED_SELECTOR, lambda typ, obj, initial: seen.append(obj))
    w.start()
    try:
        wait_for(lambda: w.lists >= 2, 30, what="a relist after 410")
        _create_pod(core, ns, backend.pod_manifest(bot("after-410")))
        wait_for(lambda: any(o["metadata"]["name"] == pod_name("after-410") for o in seen), 30,
                 what="the watch working again after the relist")
    finally:
        w.stop()
