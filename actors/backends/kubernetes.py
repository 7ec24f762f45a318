"""Kubernetes backend: one Pod per realtime bot, one CronJob per schedule, one watch per resource kind.

A realtime bot runs as Pod ``bot-<id>``: an init container ``daemon init`` (code + state into emptyDirs,
entrypoint script written), the ``daemon sync`` sidecar (a native sidecar on servers >= 1.29, else a
plain second container that exits once the bot's done-file appears) and the ``bot`` container, which
gets the bot's own variables only. Daemon containers take the object store's credentials from the Secret
``config.kubernetes.storage_secret`` through ``envFrom``; no credential is ever written into a manifest.

Kubernetes restarts Pods (``restartPolicy: Always``) and fires CronJobs itself, so ``capabilities`` says
so and the actors only create, replace and delete. Exits and status come from two list+watch loops for
all bots (Pods with the managed label; Jobs of scheduled runs), each in its own thread: list, then watch
from the list's resourceVersion, relist on 410 Gone, reconnect with backoff after connection errors.
Callbacks run from one dispatcher thread.

Server differences are found once: the version (native sidecars 1.29+, CronJob ``timeZone`` 1.27+) and
which batch group version serves CronJobs (batch/v1, or batch/v1beta1 on old servers such as 1.20).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

from actors.backends.base import (
    KIND_REALTIME,
    KIND_SCHEDULED,
    Backend,
    BackendError,
    Capabilities,
    ExitResult,
    Handle,
    RunSpec,
    TaskNotFound,
    TaskState,
)
from actors.config import Config
from actors.messages import BotDefinition
from daemon import layout
from daemon.jsonlog import event

log = logging.getLogger("the0.backend.kubernetes")

LABEL_MANAGED = "the0.runtime/managed"
LABEL_BOT_ID = "the0.runtime/bot-id"
LABEL_KIND = "the0.runtime/kind"
LABEL_RUN_ID = "the0.runtime/run-id"
ANN_CONFIG_HASH = "the0.runtime/config-hash"
ANN_BOT_ID = "the0.runtime/bot-id"  # the exact id; the label may be a DNS-safe mapping of it
ANN_RUN_ID = "the0.runtime/run-id"
MANAGED_SELECTOR = f"{LABEL_MANAGED}=true"

BOT_CONTAINER = "bot"
INIT_CONTAINER = "daemon-init"
SYNC_CONTAINER = "daemon-sync"
THE0_DIR = "/var/the0"
ENTRYPOINT_SCRIPT = f"{THE0_DIR}/entrypoint.sh"
RUN_AS = 1000

POD_PREFIX = "bot-"
CRONJOB_PREFIX = "schedule-"
JOB_PREFIX = "run-"
MAX_NAME = 63
MAX_CRONJOB_NAME = 52  # the CronJob controller appends "-<11 digits>" to name its Jobs

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

StatusCallback = Callable[[str, dict], None]
ExitCb = Callable[[Handle, ExitResult], None]


# --- names -----------------------------------------------------------------------------------------


def dns_name(prefix: str, bot_id: str, max_len: int = MAX_NAME) -> str:
    """``prefix + id`` as a DNS-1123 label of at most ``max_len`` characters, deterministic and injective.

    An id that is already lowercase DNS-safe and fits is used as is. Any other id is lowercased, bad
    characters become '-', and a short hash of the *original* id is appended, so ``Bot_1`` and ``bot-1``
    never share a name.
    """
    name = prefix + bot_id
    if _DNS_LABEL.match(name) and len(name) <= max_len:
        return name
    digest = hashlib.sha256(bot_id.encode()).hexdigest()[:8]
    body = re.sub(r"[^a-z0-9-]", "-", bot_id.lower())
    body = re.sub(r"-{2,}", "-", body).strip("-")
    room = max_len - len(prefix) - len(digest) - 1
    body = body[:room].rstrip("-")
    return f"{prefix}{body}-{digest}" if body else f"{prefix}{digest}"


def label_value(bot_id: str) -> str:
    """The bot id as a label value (<= 63 chars, alnum at both ends); mapped like ``dns_name`` when needed."""
    if len(bot_id) <= 63 and _LABEL_VALUE.match(bot_id):
        return bot_id
    return dns_name("", bot_id)


def pod_name(bot_id: str) -> str:
    return dns_name(POD_PREFIX, bot_id)


def cronjob_name(bot_id: str) -> str:
    return dns_name(CRONJOB_PREFIX, bot_id, MAX_CRONJOB_NAME)


def job_name(run_id: str) -> str:
    return dns_name(JOB_PREFIX, run_id)


# --- server facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """What this API server supports, read once."""

    major: int
    minor: int
    cronjob_version: str  # "batch/v1" or "batch/v1beta1"

    @property
    def native_sidecars(self) -> bool:
        return (self.major, self.minor) >= (1, 29)

    @property
    def cronjob_time_zone(self) -> bool:
        return (self.major, self.minor) >= (1, 27)

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


def _minor(s: str) -> int:
    m = re.match(r"\d+", s or "")
    return int(m.group(0)) if m else 0


# --- the backend -------------------------------------------------------------------------------------


class KubernetesBackend(Backend):
    name = "kubernetes"
    capabilities = Capabilities(restarts_bots=True, fires_schedules=True)

    def __init__(self, config: Config, api_client: Any = None, nats_url: str | None = None):
        from kubernetes import client as k8s

        self._k8s = k8s
        self.config = config
        self.kcfg = config.kubernetes
        self.namespace = self.kcfg.namespace
        self.api = api_client or _load_api_client(self.kcfg.kubeconfig)
        self.core = k8s.CoreV1Api(self.api)
        self.nats_url = nats_url if nats_url is not None else config.nats_url
        self._info: ServerInfo | None = None
        self._info_lock = threading.Lock()
        self._exit_cbs: list[ExitCb] = []
        self._status_cbs: list[StatusCallback] = []
        self._watchers: list[_Watcher] = []
        self._events: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._deleting: set[str] = set()  # pod uids this backend deleted: their DELETED is no crash
        self._pod_state: dict[str, _PodTrack] = {}  # pod uid -> what the watch has seen
        self._job_exit_codes: dict[str, int] = {}  # job name -> bot container exit code seen on its pod
        self._jobs_reported: set[str] = set()

    # -- server facts ---------------------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """The server's version and CronJob group version, discovered on first use."""
        with self._info_lock:
            if self._info is None:
                try:
                    v = self._k8s.VersionApi(self.api).get_code()
                    major, minor = _minor(v.major), _minor(v.minor)
                    batch = self._raw("GET", "/apis/batch/v1")
                    served = {r.get("name") for r in (batch or {}).get("resources", [])}
                    cron = "batch/v1" if "cronjobs" in served else "batch/v1beta1"
                except Exception as e:  # noqa: BLE001 - any failure here is the API being unreachable
                    raise BackendError(f"cannot read the Kubernetes API server's version: {_err(e)}") from e
                self._info = ServerInfo(major, minor, cron)
                event(log, "kube.server", version=self._info.version, cronjob_api=cron,
                      native_sidecars=self._info.native_sidecars)
            return self._info

    # -- manifests ------------------------------------------------------------------------------------

    def image(self, bot: BotDefinition) -> str:
        return f"{self.kcfg.image_prefix}/{bot.runtime}:{self.kcfg.image_tag}"

    def _resources(self, bot: BotDefinition) -> dict:
        d = self.config.limits
        mem = min(bot.limits.memory_mb or d.memory_mb, d.max_memory_mb)
        cpu = min(bot.limits.cpus or d.cpus, d.max_cpus)
        return {
            "limits": {"memory": f"{mem}Mi", "cpu": _cpu(cpu)},
            "requests": {"memory": f"{mem}Mi", "cpu": _cpu(max(cpu / 4, 0.01))},
        }

    def _daemon_env(self, bot: BotDefinition, scheduled: bool) -> list[dict]:
        env = {
            "BOT_ID": bot.id,
            "RUNTIME": bot.runtime,
            "ENTRYPOINT": bot.entrypoint,
            "CODE_FILE": layout.code_key(bot.code_file),
            "BOT_CONFIG": bot.config_json,
            "IS_SCHEDULED": "true" if scheduled else "false",
            "CODE_PATH": layout.CODE_PATH,
            "STATE_PATH": layout.STATE_PATH,
            "LOGS_PATH": layout.LOGS_PATH,
            "HOME": "/tmp",
        }
        # A NATS URL without credentials may go inline; one with credentials belongs in the Secret.
        if self.nats_url and not urlparse(self.nats_url).password and not urlparse(self.nats_url).username:
            env["NATS_URL"] = self.nats_url
        return [{"name": k, "value": v} for k, v in env.items()]

    def _pod_spec(self, bot: BotDefinition, kind: str) -> dict:
        """The pod spec shared by realtime Pods and scheduled Jobs."""
        info = self.server_info()
        scheduled = kind == KIND_SCHEDULED
        image = self.image(bot)
        hardened = {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = [
            {"name": "bot", "mountPath": layout.CODE_PATH},
            {"name": "state", "mountPath": layout.STATE_PATH},
            {"name": "the0", "mountPath": THE0_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        secret = {"secretRef": {"name": self.kcfg.storage_secret}}
        daemon_res = {"limits": {"memory": "128Mi", "cpu": "200m"}, "requests": {"memory": "64Mi", "cpu": "20m"}}
        init = {
            "name": INIT_CONTAINER,
            "image": image,
            "command": ["python3", "-m", "daemon", "init"],
            "env": self._daemon_env(bot, scheduled),
            "envFrom": [secret],
            "volumeMounts": mounts,
            "securityContext": hardened,
            "resources": daemon_res,
        }
        sync = {
            "name": SYNC_CONTAINER,
            "image": image,
            "command": ["python3", "-m", "daemon", "sync"],
            "env": self._daemon_env(bot, scheduled),
            "envFrom": [secret],
            "volumeMounts": mounts,
            "securityContext": hardened,
            "resources": daemon_res,
        }
        bot_env = {
            "BOT_ID": bot.id,
            "BOT_CONFIG": bot.config_json,
            "STATE_DIR": layout.STATE_PATH,
            "CODE_MOUNT_DIR": layout.CODE_PATH,
            "BOT_TYPE": kind,
        }
        bot_c = {
            "name": BOT_CONTAINER,
            "image": image,
            "command": ["/bin/sh", ENTRYPOINT_SCRIPT],
            "env": [{"name": k, "value": v} for k, v in bot_env.items()],
            "volumeMounts": mounts,
            "securityContext": hardened,
            "resources": self._resources(bot),
        }
        init_containers = [init]
        containers = [bot_c]
        if info.native_sidecars:
            sync["restartPolicy"] = "Always"  # native sidecar: starts before the bot, stops after it
            init_containers.append(sync)
        else:
            # No native sidecars: a plain container. ``daemon sync`` exits after its final sync once the
            # bot's done-file ($LOGS_PATH/.done, written by the entrypoint script) appears, so a
            # scheduled run's Pod completes.
            containers.append(sync)
        pod_sc: dict = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS}
        if (info.major, info.minor) >= (1, 19):
            pod_sc["seccompProfile"] = {"type": "RuntimeDefault"}
        return {
            "restartPolicy": "Never" if scheduled else "Always",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": int(self.config.restart.stop_grace),
            "securityContext": pod_sc,
            "initContainers": init_containers,
            "containers": containers,
            "volumes": [{"name": n, "emptyDir": {}} for n in ("bot", "state", "the0", "tmp")],
        }

    def _meta(self, bot: BotDefinition, name: str, kind: str, config_hash: str, run_id: str | None = None) -> dict:
        labels = {LABEL_MANAGED: "true", LABEL_BOT_ID: label_value(bot.id), LABEL_KIND: kind}
        ann = {ANN_CONFIG_HASH: config_hash, ANN_BOT_ID: bot.id}
        if run_id:
            labels[LABEL_RUN_ID] = label_value(run_id)
            ann[ANN_RUN_ID] = run_id
        return {"name": name, "namespace": self.namespace, "labels": labels, "annotations": ann}

    def pod_manifest(self, bot: BotDefinition) -> dict:
        """The Pod of a realtime bot, as sent to the API server."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._meta(bot, pod_name(bot.id), KIND_REALTIME, bot.config_hash),
            "spec": self._pod_spec(bot, KIND_REALTIME),
        }

    def _job_spec(self, bot: BotDefinition, run_id: str | None) -> dict:
        tmpl_meta = self._meta(bot, "", KIND_SCHEDULED, bot.config_hash, run_id)
        tmpl_meta.pop("name")
        tmpl_meta.pop("namespace")
        spec: dict = {
            "backoffLimit": 0,
            "template": {"metadata": tmpl_meta, "spec": self._pod_spec(bot, KIND_SCHEDULED)},
        }
        if bot.run_timeout:
            spec["activeDeadlineSeconds"] = int(bot.run_timeout)
        return spec

    def schedule_hash(self, bot: BotDefinition) -> str:
        """Hash of everything a CronJob is made from: a change of it patches the CronJob."""
        blob = json.dumps(
            [bot.config_hash, bot.schedule, bot.timezone, bot.concurrency, bot.starting_deadline,
             bot.run_timeout, self.image(bot), self._resources(bot)],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def cronjob_manifest(self, bot: BotDefinition) -> dict:
        if bot.schedule is None:
            raise BackendError(f"bot {bot.id} has no schedule; only scheduled bots get a CronJob", retryable=False)
        info = self.server_info()
        schedule = _kube_cron(bot)
        job_meta = self._meta(bot, "", KIND_SCHEDULED, bot.config_hash)  # Jobs it fires carry the bot id
        spec: dict = {
            "schedule": schedule,
            "concurrencyPolicy": {"forbid": "Forbid", "allow": "Allow", "replace": "Replace"}[bot.concurrency],
            "startingDeadlineSeconds": int(bot.starting_deadline),
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "suspend": False,
            "jobTemplate": {"metadata": {k: v for k, v in job_meta.items() if k in ("labels", "annotations")},
                            "spec": self._job_spec(bot, None)},
        }
        if bot.timezone and bot.timezone != "UTC":
            if info.cronjob_time_zone:
                spec["timeZone"] = bot.timezone
            else:
                event(log, "schedule.timezone_ignored", logging.WARNING, bot_id=bot.id, timezone=bot.timezone,
                      server=info.version, detail="CronJob timeZone needs Kubernetes 1.27+; the cron runs in UTC")
        meta = self._meta(bot, cronjob_name(bot.id), KIND_SCHEDULED, self.schedule_hash(bot))
        return {"apiVersion": info.cronjob_version, "kind": "CronJob", "metadata": meta, "spec": spec}

    def job_manifest(self, spec: RunSpec) -> dict:
        bot = spec.bot
        run_id = spec.run_id or ""
        meta = self._meta(bot, job_name(run_id), KIND_SCHEDULED, bot.config_hash, run_id)
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": self._job_spec(bot, run_id)}

    # -- realtime pods --------------------------------------------------------------------------------

    def start(self, spec: RunSpec) -> Handle:
        bot = spec.bot
        if spec.kind == KIND_SCHEDULED:
            return self.run_once(spec)
        manifest = self.pod_manifest(bot)
        name = manifest["metadata"]["name"]
        for _ in range(3):
            try:
                pod = self._raw("POST", f"/api/v1/namespaces/{self.namespace}/pods", manifest)
                event(log, "kube.pod_created", bot_id=bot.id, pod=name, config_hash=bot.config_hash[:12])
                return self._pod_handle(pod)
            except self._k8s.ApiException as e:
                if e.status != 409:
                    raise _api_error(f"create Pod {name}", e) from e
            existing = self._read_pod(name)
            if existing is None:
                continue  # deleted between our create and read: try again
            if existing["metadata"].get("deletionTimestamp"):
                self._wait_gone(existing, self.config.restart.stop_grace)  # terminating: make a new one
                continue
            if _ann(existing, ANN_CONFIG_HASH) == bot.config_hash:
                return self._pod_handle(existing)
            event(log, "kube.pod_replace", bot_id=bot.id, pod=name,
                  old_hash=(_ann(existing, ANN_CONFIG_HASH) or "")[:12], new_hash=bot.config_hash[:12])
            self._delete_pod_and_wait(existing, self.config.restart.stop_grace)
        raise BackendError(f"Pod {name} kept conflicting on create; another writer is changing it")

    def _delete_pod_and_wait(self, pod: dict, grace: float) -> None:
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid")
        if uid:
            with self._lock:
                self._deleting.add(uid)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": max(0, int(grace))}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._raw("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}", body)
        except self._k8s.ApiException as e:
            if e.status == 409:  # precondition failed: it is a newer pod, not the one we meant
                return
            if e.status != 404:
                raise _api_error(f"delete Pod {name}", e) from e
        self._wait_gone(pod, grace)

    def _wait_gone(self, pod: dict, grace: float) -> None:
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid")
        deadline = time.monotonic() + grace + 30
        while time.monotonic() < deadline:
            cur = self._read_pod(name)
            if cur is None or cur["metadata"].get("uid") != uid:
                return
            time.sleep(0.1)  # wait-ok: polling the API for a deletion, bounded by the deadline
        raise BackendError(f"Pod {name} still exists {grace + 30:.0f}s after deletion; is its node gone?")

    def stop(self, handle: Handle, grace: float) -> ExitResult | None:
        if handle.kind == KIND_SCHEDULED and handle.run_id:
            self._delete_job(handle.ref, grace)
            return None
        pod = self._read_pod(handle.ref)
        if pod is None:
            return None
        result = _bot_exit(pod)
        self._delete_pod_and_wait(pod, grace)
        event(log, "kube.pod_deleted", bot_id=handle.bot_id, pod=handle.ref, grace=grace)
        return result

    def remove(self, handle: Handle) -> None:
        if handle.kind == KIND_SCHEDULED and handle.run_id:
            self._delete_job(handle.ref, 0)
            return
        pod = self._read_pod(handle.ref)
        if pod is not None:
            self._delete_pod_and_wait(pod, 0)

    def inspect(self, handle: Handle) -> TaskState:
        if handle.kind == KIND_SCHEDULED and handle.run_id:
            job = self._read(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{handle.ref}")
            if job is None:
                raise TaskNotFound(f"Job {handle.ref} of bot {handle.bot_id} does not exist")
            phase, code = _job_phase(job)
            running = phase in ("Pending", "Running")
            ex = None if running else ExitResult(code=self._job_exit_codes.get(handle.ref, code), reason=phase)
            return TaskState(running=running, exit=ex, phase=phase)
        pod = self._read_pod(handle.ref)
        if pod is None:
            raise TaskNotFound(f"Pod {handle.ref} of bot {handle.bot_id} does not exist")
        status = pod.get("status") or {}
        phase = status.get("phase") or "Pending"
        running = phase in ("Pending", "Running") and not pod["metadata"].get("deletionTimestamp")
        return TaskState(running=running, exit=_bot_exit(pod), restarts=_restarts(pod), phase=phase)

    def list_managed(self) -> list[Handle]:
        pods = self._raw("GET", f"/api/v1/namespaces/{self.namespace}/pods",
                         query={"labelSelector": f"{MANAGED_SELECTOR},{LABEL_KIND}={KIND_REALTIME}"})
        jobs = self._raw("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
                         query={"labelSelector": MANAGED_SELECTOR})
        out = [self._pod_handle(p) for p in pods.get("items", [])]
        out += [self._job_handle(j) for j in jobs.get("items", []) if _ann(j, ANN_BOT_ID)]
        return out

    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        name = handle.ref
        if handle.kind == KIND_SCHEDULED and handle.run_id:
            pods = self._raw("GET", f"/api/v1/namespaces/{self.namespace}/pods",
                             query={"labelSelector": f"job-name={handle.ref}"})
            items = pods.get("items", [])
            if not items:
                raise TaskNotFound(f"no Pod of Job {handle.ref} (bot {handle.bot_id})")
            name = items[-1]["metadata"]["name"]
        try:
            resp = self._raw("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}/log",
                             query={"container": BOT_CONTAINER, "tailLines": max(1, int(tail))}, stream=True)
            try:
                text = resp.data.decode("utf-8", "replace")
            finally:
                resp.release_conn()
        except self._k8s.ApiException as e:
            if e.status == 404:
                raise TaskNotFound(f"Pod {name} of bot {handle.bot_id} does not exist") from e
            raise _api_error(f"read the log of Pod {name}", e) from e
        return text.splitlines()

    # -- scheduled: CronJobs and one-off Jobs ---------------------------------------------------------

    def ensure_schedule(self, bot: BotDefinition) -> None:
        manifest = self.cronjob_manifest(bot)
        base = f"/apis/{manifest['apiVersion']}/namespaces/{self.namespace}/cronjobs"
        name = manifest["metadata"]["name"]
        want = manifest["metadata"]["annotations"][ANN_CONFIG_HASH]
        for _ in range(3):
            try:
                self._raw("POST", base, manifest)
                event(log, "kube.cronjob_created", bot_id=bot.id, cronjob=name, schedule=manifest["spec"]["schedule"])
                return
            except self._k8s.ApiException as e:
                if e.status != 409:
                    raise _api_error(f"create CronJob {name}", e) from e
            cur = self._read(f"{base}/{name}")
            if cur is None:
                continue
            if _ann(cur, ANN_CONFIG_HASH) == want:
                return
            manifest["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            try:
                self._raw("PUT", f"{base}/{name}", manifest)
                event(log, "kube.cronjob_updated", bot_id=bot.id, cronjob=name, schedule=manifest["spec"]["schedule"])
                return
            except self._k8s.ApiException as e:
                if e.status not in (404, 409):
                    raise _api_error(f"replace CronJob {name}", e) from e
            manifest["metadata"].pop("resourceVersion", None)
        raise BackendError(f"CronJob {name} kept changing under us; will retry")

    def remove_schedule(self, bot_id: str) -> None:
        info = self.server_info()
        name = cronjob_name(bot_id)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._raw("DELETE", f"/apis/{info.cronjob_version}/namespaces/{self.namespace}/cronjobs/{name}", body)
            event(log, "kube.cronjob_deleted", bot_id=bot_id, cronjob=name)
        except self._k8s.ApiException as e:
            if e.status != 404:
                raise _api_error(f"delete CronJob {name}", e) from e

    def list_schedules(self) -> dict[str, str]:
        """bot id -> config hash annotation of every managed CronJob (for the reconciler)."""
        info = self.server_info()
        items = self._raw("GET", f"/apis/{info.cronjob_version}/namespaces/{self.namespace}/cronjobs",
                          query={"labelSelector": MANAGED_SELECTOR}).get("items", [])
        return {_ann(c, ANN_BOT_ID): _ann(c, ANN_CONFIG_HASH) or "" for c in items if _ann(c, ANN_BOT_ID)}

    def run_once(self, spec: RunSpec) -> Handle:
        """One scheduled run now, as a Job named after the run id (a retry gets the same Job)."""
        if not spec.run_id:
            raise BackendError("run_once needs a run id", retryable=False)
        manifest = self.job_manifest(spec)
        name = manifest["metadata"]["name"]
        try:
            job = self._raw("POST", f"/apis/batch/v1/namespaces/{self.namespace}/jobs", manifest)
            event(log, "kube.job_created", bot_id=spec.bot.id, job=name, run_id=spec.run_id)
        except self._k8s.ApiException as e:
            if e.status != 409:
                raise _api_error(f"create Job {name}", e) from e
            job = self._read(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}")
            if job is None:
                raise BackendError(f"Job {name} conflicted on create but is gone; retry") from e
        return self._job_handle(job)

    def _delete_job(self, name: str, grace: float) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                "gracePeriodSeconds": max(0, int(grace))}
        try:
            self._raw("DELETE", f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}", body)
        except self._k8s.ApiException as e:
            if e.status != 404:
                raise _api_error(f"delete Job {name}", e) from e

    # -- watching -------------------------------------------------------------------------------------

    def watch(self, on_exit: ExitCb) -> None:
        self._exit_cbs.append(on_exit)
        self._start_watchers()

    def watch_status(self, on_status: StatusCallback) -> None:
        """``on_status(bot_id, {phase, restarts, last_exit_code, ready, kind, name})`` on every Pod/Job change."""
        self._status_cbs.append(on_status)
        self._start_watchers()

    def _start_watchers(self) -> None:
        with self._lock:
            if self._watchers:
                return
            self._closed.clear()
            self._dispatcher = threading.Thread(target=self._dispatch, name="kube-dispatch", daemon=True)
            self._dispatcher.start()
            ns = self.namespace
            self._watchers = [
                _Watcher(self, "pods", f"/api/v1/namespaces/{ns}/pods", MANAGED_SELECTOR, self._on_pod),
                _Watcher(self, "jobs", f"/apis/batch/v1/namespaces/{ns}/jobs", MANAGED_SELECTOR, self._on_job),
            ]
            for w in self._watchers:
                w.start()

    def watchers_synced(self) -> bool:
        """True when every watch has listed and is watching (tests and readiness)."""
        return bool(self._watchers) and all(w.synced.is_set() for w in self._watchers)

    def relists(self) -> int:
        return sum(w.lists for w in self._watchers)

    def close(self) -> None:
        self._closed.set()
        for w in self._watchers:
            w.stop()
        for w in self._watchers:
            w.join(5)
        self._events.put(None)
        if self._dispatcher:
            self._dispatcher.join(5)
        self._watchers = []
        self._dispatcher = None

    def _dispatch(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            what, args = item
            cbs = self._exit_cbs if what == "exit" else self._status_cbs
            for cb in list(cbs):
                try:
                    cb(*args)
                except Exception:  # noqa: BLE001 - a listener's error is logged, never fatal
                    log.exception("kube.callback_failed")

    def _on_pod(self, kind: str, pod: dict, initial: bool) -> None:
        """One Pod event (ADDED/MODIFIED/DELETED, or a synthetic one from a relist)."""
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        bot_id = _ann(pod, ANN_BOT_ID)
        if not bot_id:
            return
        pod_kind = (meta.get("labels") or {}).get(LABEL_KIND, KIND_REALTIME)
        job = (meta.get("labels") or {}).get("job-name")
        exit_ = _bot_exit(pod)
        if job and exit_ is not None and exit_.code is not None:
            self._job_exit_codes[job] = exit_.code
        if kind == "DELETED":
            with self._lock:
                ours = uid in self._deleting
                self._deleting.discard(uid)
                self._pod_state.pop(uid, None)
            self._emit_status(bot_id, pod, deleted=True)
            if pod_kind == KIND_REALTIME and not ours:
                self._emit_exit(self._pod_handle(pod), ExitResult(code=exit_.code if exit_ else None,
                                                                  reason="pod deleted"))
            return
        self._emit_status(bot_id, pod)
        if pod_kind != KIND_REALTIME:
            return  # scheduled runs end through their Job
        with self._lock:
            track = self._pod_state.get(uid)
            first = track is None
            if first:
                track = self._pod_state[uid] = _PodTrack()
        for key, term, current in _terminations(pod):
            if key in track.reported:
                continue
            track.reported.add(key)
            if first and not current:
                continue  # history from before we watched: not a new exit
            self._emit_exit(self._pod_handle(pod), _exit_from(term))

    def _on_job(self, kind: str, job: dict, initial: bool) -> None:
        bot_id = _ann(job, ANN_BOT_ID)
        if not bot_id:
            return
        name = job["metadata"]["name"]
        phase, code = _job_phase(job)
        status = {"phase": phase, "restarts": int((job.get("status") or {}).get("failed") or 0),
                  "last_exit_code": self._job_exit_codes.get(name, code), "ready": phase == "Running",
                  "kind": KIND_SCHEDULED, "name": name, "deleted": kind == "DELETED"}
        self._events.put(("status", (bot_id, status)))
        if kind == "DELETED":
            self._jobs_reported.discard(name)
            self._job_exit_codes.pop(name, None)
            return
        if phase in ("Succeeded", "Failed") and name not in self._jobs_reported:
            self._jobs_reported.add(name)
            reason = phase if phase == "Succeeded" else _job_failure_reason(job)
            self._emit_exit(self._job_handle(job), ExitResult(code=self._job_exit_codes.get(name, code), reason=reason))

    def _emit_status(self, bot_id: str, pod: dict, deleted: bool = False) -> None:
        status = pod.get("status") or {}
        ex = _bot_exit(pod)
        bot = _container_status(pod, BOT_CONTAINER) or {}
        out = {
            "phase": status.get("phase") or "Pending",
            "restarts": _restarts(pod),
            "last_exit_code": ex.code if ex else None,
            "ready": bool(bot.get("ready")),
            "kind": (pod["metadata"].get("labels") or {}).get(LABEL_KIND, KIND_REALTIME),
            "name": pod["metadata"]["name"],
            "deleted": deleted,
        }
        self._events.put(("status", (bot_id, out)))

    def _emit_exit(self, handle: Handle, result: ExitResult) -> None:
        event(log, "kube.exit", bot_id=handle.bot_id, task=handle.ref, code=result.code, reason=result.reason)
        self._events.put(("exit", (handle, result)))

    # -- handles and API plumbing ---------------------------------------------------------------------

    def _pod_handle(self, pod: dict) -> Handle:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        return Handle(
            bot_id=_ann(pod, ANN_BOT_ID) or labels.get(LABEL_BOT_ID, ""),
            kind=labels.get(LABEL_KIND, KIND_REALTIME),
            ref=meta["name"],
            config_hash=_ann(pod, ANN_CONFIG_HASH) or "",
            run_id=_ann(pod, ANN_RUN_ID),
            started_at=_ts(meta.get("creationTimestamp")),
            meta={"uid": meta.get("uid", ""), "namespace": meta.get("namespace", self.namespace)},
        )

    def _job_handle(self, job: dict) -> Handle:
        meta = job["metadata"]
        return Handle(
            bot_id=_ann(job, ANN_BOT_ID) or "",
            kind=KIND_SCHEDULED,
            ref=meta["name"],
            config_hash=_ann(job, ANN_CONFIG_HASH) or "",
            run_id=_ann(job, ANN_RUN_ID) or meta["name"],
            started_at=_ts(meta.get("creationTimestamp")),
            meta={"uid": meta.get("uid", ""), "namespace": meta.get("namespace", self.namespace)},
        )

    def _read_pod(self, name: str) -> dict | None:
        return self._read(f"/api/v1/namespaces/{self.namespace}/pods/{name}")

    def _read(self, path: str) -> dict | None:
        try:
            return self._raw("GET", path)
        except self._k8s.ApiException as e:
            if e.status == 404:
                return None
            raise _api_error(f"read {path}", e) from e

    def _raw(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
             timeout: float | tuple = 30, stream: bool = False) -> Any:
        return api_request(self.api, method, path, body, query, timeout, stream)


def api_request(api: Any, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                timeout: float | tuple = 30, stream: bool = False) -> Any:
    """One API call with a JSON body; returns the decoded JSON, or the raw urllib3 response when ``stream``.

    Non-2xx answers raise the client's ``ApiException`` (``.status``); transport failures raise a
    retryable ``BackendError``. Plain dicts in and out: the same code serves batch/v1 and batch/v1beta1
    and keeps exact field formats (MicroTime) under our control.
    """
    from kubernetes.client import ApiException

    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        req = api.param_serialize(
            method, path, query_params=[(k, v) for k, v in (query or {}).items()], header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        resp = api.call_api(*req, _request_timeout=timeout)
    except ApiException:
        raise
    except Exception as e:  # noqa: BLE001 - urllib3/socket errors: the API server is unreachable
        raise BackendError(f"Kubernetes API {method} {path} failed: {_err(e)}") from e
    if not 200 <= resp.status <= 299:
        resp.read()
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    if stream:
        return resp.response
    data = resp.read()
    return json.loads(data) if data else {}


# --- the list+watch loop ---------------------------------------------------------------------------------


class _Watcher(threading.Thread):
    """list -> resourceVersion -> watch, for one resource kind; relist on 410, backoff on errors."""

    def __init__(self, backend: KubernetesBackend, what: str, path: str, selector: str,
                 handler: Callable[[str, dict, bool], None]):
        super().__init__(name=f"kube-watch-{what}", daemon=True)
        self.b = backend
        self.what = what
        self.path = path
        self.selector = selector
        self.handler = handler
        self.synced = threading.Event()
        self.lists = 0
        self._stop_evt = threading.Event()
        self._resp: Any = None
        self._known: dict[str, dict] = {}  # uid -> last object, to see deletions missed while away

    def stop(self) -> None:
        self._stop_evt.set()
        resp = self._resp
        conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            # Unblock the watcher's read: shutting the socket down is safe from another thread, where
            # closing the response would wait for the reader's lock.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        backoff = 0.5
        while not self._stop_evt.is_set():
            try:
                rv = self._list()
                backoff = 0.5
                while not self._stop_evt.is_set():
                    rv = self._watch(rv)
                    if rv is None:
                        break  # 410 Gone: relist
            except Exception as e:  # noqa: BLE001 - any failure: reconnect with backoff and relist
                if self._stop_evt.is_set():
                    return
                self.synced.clear()
                event(log, "kube.watch_error", logging.WARNING, resource=self.what, error=_err(e), retry_in=backoff)
                self._stop_evt.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 10.0)

    def _list(self) -> str:
        data = self.b._raw("GET", self.path, query={"labelSelector": self.selector}, timeout=(5, 60))
        self.lists += 1
        items = data.get("items", [])
        seen = {}
        for obj in items:
            seen[obj["metadata"]["uid"]] = obj
        for uid, old in list(self._known.items()):
            if uid not in seen:
                self._deliver("DELETED", old, initial=True)
        self._known = {}
        for obj in items:
            self._deliver("ADDED", obj, initial=True)
        rv = data.get("metadata", {}).get("resourceVersion", "")
        self.synced.set()
        event(log, "kube.listed", resource=self.what, count=len(items), resource_version=rv)
        return rv

    def _watch(self, rv: str) -> str | None:
        timeout = random.randint(240, 360)
        query = {"labelSelector": self.selector, "watch": "true", "resourceVersion": rv,
                 "allowWatchBookmarks": "true", "timeoutSeconds": timeout}
        try:
            resp = self.b._raw("GET", self.path, query=query, timeout=(5, timeout + 15), stream=True)
        except self.b._k8s.ApiException as e:
            if e.status == 410:
                event(log, "kube.watch_expired", resource=self.what, resource_version=rv)
                return None
            raise
        self._resp = resp
        try:
            for line in _lines(resp):
                if self._stop_evt.is_set():
                    return rv
                ev = json.loads(line)
                typ = ev.get("type")
                obj = ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        event(log, "kube.watch_expired", resource=self.what, resource_version=rv)
                        return None
                    raise BackendError(f"watch {self.what}: {obj.get('code')} {obj.get('message')}")
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = new_rv
                if typ == "BOOKMARK":
                    continue
                self._deliver(typ, obj, initial=False)
        finally:
            self._resp = None
            try:
                resp.close()  # a watch connection is not reused: the next watch opens its own
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        return rv

    def _deliver(self, typ: str, obj: dict, initial: bool) -> None:
        uid = (obj.get("metadata") or {}).get("uid", "")
        if typ == "DELETED":
            self._known.pop(uid, None)
        else:
            self._known[uid] = obj
        try:
            self.handler(typ, obj, initial)
        except Exception:  # noqa: BLE001 - one bad object must not stop the watch
            log.exception("kube.watch_handler_failed")


def _lines(resp: Any) -> Iterator[str]:
    buf = b""
    for chunk in resp.stream(amt=65536, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line.decode()
    if buf.strip():
        yield buf.decode()


# --- pod/job status helpers ----------------------------------------------------------------------------


class _PodTrack:
    __slots__ = ("reported",)

    def __init__(self) -> None:
        self.reported: set[str] = set()


def _ann(obj: Mapping, key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


def _container_status(pod: dict, name: str) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return cs
    return None


def _restarts(pod: dict) -> int:
    st = pod.get("status") or {}
    return sum(int(cs.get("restartCount") or 0) for cs in (st.get("containerStatuses") or []))


def _terminations(pod: dict) -> list[tuple[str, dict, bool]]:
    """The bot container's terminations visible in the pod: (dedup key, terminated state, is current)."""
    cs = _container_status(pod, BOT_CONTAINER)
    if not cs:
        return []
    out = []
    count = int(cs.get("restartCount") or 0)
    last = (cs.get("lastState") or {}).get("terminated")
    if last:
        out.append((_term_key(last, count - 1), last, False))
    cur = (cs.get("state") or {}).get("terminated")
    if cur:
        out.append((_term_key(cur, count), cur, True))
    return out


def _term_key(term: dict, n: int) -> str:
    return term.get("containerID") or f"{n}:{term.get('finishedAt') or term.get('startedAt') or ''}"


def _exit_from(term: dict) -> ExitResult:
    code = term.get("exitCode")
    reason = term.get("reason") or ""
    sig = term.get("signal")
    return ExitResult(code=int(code) if code is not None else None, signal=int(sig) if sig else None,
                      oom_killed=reason == "OOMKilled", reason=reason)


def _bot_exit(pod: dict) -> ExitResult | None:
    cs = _container_status(pod, BOT_CONTAINER)
    if not cs:
        return None
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return _exit_from(term) if term else None


def _job_phase(job: dict) -> tuple[str, int | None]:
    st = job.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return "Succeeded", 0
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "Failed", None
    if st.get("active"):
        return "Running", None
    return "Pending", None


def _job_failure_reason(job: dict) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return c.get("reason") or "Failed"
    return "Failed"


def _ts(s: str | None) -> float:
    if not s:
        return 0.0
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _cpu(cpus: float) -> str:
    return f"{max(1, int(round(cpus * 1000)))}m"


def _kube_cron(bot: BotDefinition) -> str:
    """The schedule as Kubernetes understands it (5 fields or a descriptor); seconds only when zero."""
    expr = (bot.schedule or "").strip()
    fields = expr.split()
    if len(fields) == 6:
        if fields[0] not in ("0", "00"):
            raise BackendError(
                f"bot {bot.id}: schedule {expr!r} fires on seconds, but Kubernetes CronJobs have minute "
                "resolution; use 5 fields (or a seconds field of 0) in Kubernetes mode", retryable=False)
        return " ".join(fields[1:])
    return expr


def _err(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status is not None and getattr(e, "reason", None) is not None:
        body = getattr(e, "body", None)
        msg = ""
        if body:
            try:
                msg = json.loads(body).get("message", "")
            except (ValueError, AttributeError):
                msg = str(body)[:200]
        return f"{status} {e.reason}" + (f": {msg}" if msg else "")
    return f"{type(e).__name__}: {e}"


def _api_error(what: str, e: BaseException) -> BackendError:
    status = getattr(e, "status", 0) or 0
    retry = status >= 500 or status in (0, 409, 429)
    hint = ""
    if status == 403:
        hint = "; check the runtime's Role (config/kubernetes/role.yaml)"
    elif status == 422 or status == 400:
        hint = "; the manifest was rejected"
    return BackendError(f"cannot {what}: {_err(e)}{hint}", retryable=retry)


def _load_api_client(kubeconfig: str | None) -> Any:
    """In-cluster config when running in a Pod, else the kubeconfig file (config or KUBECONFIG)."""
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    conf = k8s.Configuration()
    try:
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config(client_configuration=conf)
        else:
            kconfig.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                     client_configuration=conf)
    except Exception as e:  # noqa: BLE001 - ConfigException, missing file, bad YAML
        raise BackendError(
            f"cannot load Kubernetes credentials ({_err(e)}): run in a Pod with a service account, or set "
            "KUBECONFIG / [kubernetes] kubeconfig", retryable=False) from e
    conf.connection_pool_maxsize = max(conf.connection_pool_maxsize or 4, 8)
    return k8s.ApiClient(conf)
