"""Docker backend: one hardened container per bot, found again by name and labels, exits from one events stream.

Containers are named deterministically (``the0-bot-<id>`` for a realtime bot, ``the0-run-<run_id>`` for a
scheduled run), so a create retried after a timeout gets 409 Conflict and adopts the container that
exists instead of starting a second one. Every container carries the ``the0.runtime.*`` labels, which is
how ``list_managed`` finds them again after the runtime restarts.

The container runs ``bootstrap.sh`` of the runtime image (images/): ``daemon init`` restores code and
state, ``daemon sync`` mirrors state and logs, then the bot runs with the store's credentials scrubbed
from its environment. The root file system is read-only; /bot, /state, /tmp and /var/the0 are tmpfs owned
by uid 1000; all capabilities are dropped, no-new-privileges is set, and memory/CPU/pids are limited.
There is no Docker restart policy: BotActor owns restarts.

Exits come from one watcher thread reading ``docker events`` (``die`` of managed containers). When
dockerd goes away the watcher reconnects with backoff and relists the managed containers, reporting
every exit that happened during the gap; an exit (container id + FinishedAt) is reported once only.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import datetime
from typing import Any, Iterable

import docker
import requests
from docker import errors as derrors
from docker.types import LogConfig

from actors.backends.base import (
    KIND_REALTIME,
    KIND_SCHEDULED,
    Backend,
    BackendError,
    Capabilities,
    ExitCallback,
    ExitResult,
    Handle,
    RunSpec,
    TaskNotFound,
    TaskState,
)
from actors.config import Config
from daemon import layout
from daemon.jsonlog import event

log = logging.getLogger("the0.backend.docker")

LABEL_MANAGED = "the0.runtime.managed"
LABEL_BOT_ID = "the0.runtime.bot-id"
LABEL_KIND = "the0.runtime.kind"
LABEL_CONFIG_HASH = "the0.runtime.config-hash"
LABEL_RUN_ID = "the0.runtime.run-id"
LABEL_SCHEDULED_AT = "the0.runtime.scheduled-at"

BOOTSTRAP = "/opt/the0/bootstrap.sh"  # installed by images/Dockerfile.base
BOT_UID = 1000
# tmpfs owned by the bot's uid. exec where something runs from: /bot (compiled bots), /var/the0 (the
# entrypoint script daemon init writes), /tmp (JITs and runtimes unpack there); /state holds data only.
_TMPFS_OPTS = f"uid={BOT_UID},gid={BOT_UID},mode=0755,nosuid,nodev"
TMPFS = {
    layout.CODE_PATH: f"{_TMPFS_OPTS},exec",
    layout.STATE_PATH: f"{_TMPFS_OPTS},noexec",
    "/tmp": f"{_TMPFS_OPTS},exec",
    "/var/the0": f"{_TMPFS_OPTS},exec",
}
# States in which a container is (or is about to be) alive: start() adopts these instead of recreating.
_ALIVE = ("created", "running", "restarting", "paused")

_RECONNECT_INITIAL = 0.2
_RECONNECT_MAX = 5.0


def container_name(spec_or_kind: RunSpec | str, bot_id: str = "", run_id: str | None = None) -> str:
    """``the0-bot-<id>`` for a realtime bot, ``the0-run-<run_id>`` for a scheduled run."""
    if isinstance(spec_or_kind, RunSpec):
        bot_id, run_id = spec_or_kind.bot.id, spec_or_kind.run_id
    if run_id:
        return f"the0-run-{run_id}"
    return f"the0-bot-{layout.check_bot_id(bot_id)}"


def _parse_time(s: str | None) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds, 'Z') -> unix seconds; 0.0 for the zero time."""
    if not s or s.startswith("0001-"):
        return 0.0
    s = s.replace("Z", "+00:00")
    if "." in s:  # trim nanoseconds to microseconds for fromisoformat
        head, rest = s.split(".", 1)
        frac, tz = rest[: next((i for i, c in enumerate(rest) if not c.isdigit()), len(rest))], ""
        tz = rest[len(frac):]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return 0.0


def exit_from_state(state: dict) -> ExitResult:
    """ExitResult from a container's ``State``: exit code, signal for codes above 128, OOM kill."""
    code = state.get("ExitCode")
    oom = bool(state.get("OOMKilled"))
    signal = code - 128 if isinstance(code, int) and 128 < code < 160 else None
    if oom:
        reason = "oom-killed"
    elif state.get("Error"):
        reason = f"error: {state['Error']}"
    elif signal:
        reason = f"killed by signal {signal}"
    else:
        reason = "exited"
    return ExitResult(code=code, signal=signal, oom_killed=oom, reason=reason)


class DockerBackend(Backend):
    """Bots as Docker containers. Thread-safe; ``watch`` starts the single events thread."""

    name = "docker"
    capabilities = Capabilities(restarts_bots=False, fires_schedules=False)

    def __init__(self, config: Config, client: Any = None, clock: Any = None, nats_url: str | None = None):
        if not config.minio_endpoint:
            raise BackendError(
                "THE0_BACKEND=docker needs an S3/MinIO object store reachable from the containers (a bot "
                "container cannot see the host's local object directory): set MINIO_ENDPOINT, "
                "MINIO_ACCESS_KEY and MINIO_SECRET_KEY",
                retryable=False,
            )
        self.config = config
        self.nats_url = nats_url if nats_url is not None else config.nats_url
        if config.docker.network != "host":
            for what, addr in (("MINIO_ENDPOINT", config.minio_endpoint), ("NATS_URL", self.nats_url or "")):
                if any(h in addr for h in ("127.0.0.1", "localhost", "[::1]")):
                    event(log, "docker.loopback_address", logging.WARNING, setting=what, value=addr,
                          network=config.docker.network,
                          hint="bot containers cannot reach the host's loopback; use an address reachable "
                               "on THE0_DOCKER_NETWORK, or THE0_DOCKER_NETWORK=host")
        self._clock = clock
        try:
            self._client = client or docker.from_env()
            self._client.ping()
        except (derrors.DockerException, requests.RequestException) as e:
            raise BackendError(
                f"cannot reach dockerd ({e}); start dockerd or set DOCKER_HOST to its socket"
            ) from None
        self._lock = threading.Lock()
        self._ncpu: float | None = None
        # Watcher state: containers known to be running (id -> Handle), exits already reported.
        self._running: dict[str, Handle] = {}
        self._reported: set[tuple[str, str]] = set()
        self._stopped_by_us: set[str] = set()  # ids stop() was called for: their exit is stop()'s result
        self._on_exit: ExitCallback | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self.connected = threading.Event()  # set while the events stream is open (tests, readiness)
        self.reconnects = 0

    # --- what a container looks like --------------------------------------------------------------

    def image_for(self, runtime: str) -> str:
        d = self.config.docker
        return f"{d.image_prefix}/{runtime}:{d.image_tag}"

    def _limits(self, spec: RunSpec) -> tuple[int, float, int]:
        lim, own = self.config.limits, spec.bot.limits
        memory = min(own.memory_mb or lim.memory_mb, lim.max_memory_mb)
        cpus = min(own.cpus or lim.cpus, lim.max_cpus, self._host_cpus())
        pids = min(own.pids or lim.pids, lim.max_pids)
        return memory, cpus, pids

    def _host_cpus(self) -> float:
        if self._ncpu is None:
            try:
                self._ncpu = float(self._client.info().get("NCPU") or os.cpu_count() or 1)
            except (derrors.DockerException, requests.RequestException):
                return float(os.cpu_count() or 1)
        return self._ncpu

    def environment(self, spec: RunSpec) -> dict[str, str]:
        """The daemon's environment (DESIGN.md names); bootstrap.sh scrubs the credentials from the bot's."""
        bot = spec.bot
        env = {
            "BOT_ID": bot.id,
            "RUNTIME": bot.runtime,
            "ENTRYPOINT": bot.entrypoint,
            "CODE_FILE": bot.code_file,
            "BOT_CONFIG": bot.config_json,
            "IS_SCHEDULED": "true" if spec.kind == KIND_SCHEDULED else "false",
            "CODE_PATH": layout.CODE_PATH,
            "STATE_PATH": layout.STATE_PATH,
            "LOGS_PATH": layout.LOGS_PATH,
        }
        if spec.run_id:
            env["RUN_ID"] = spec.run_id
        env.update(self.config.storage_env())
        if self.nats_url:
            env["NATS_URL"] = self.nats_url
        return env

    def labels(self, spec: RunSpec) -> dict[str, str]:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_BOT_ID: spec.bot.id,
            LABEL_KIND: spec.kind,
            LABEL_CONFIG_HASH: spec.bot.config_hash,
        }
        if spec.run_id:
            labels[LABEL_RUN_ID] = spec.run_id
        if spec.scheduled_at is not None:
            labels[LABEL_SCHEDULED_AT] = str(int(spec.scheduled_at))
        return labels

    def create_kwargs(self, spec: RunSpec) -> dict[str, Any]:
        """Everything the container is created with (docker SDK ``containers.create`` names): image, env,
        labels and the hardening settings."""
        memory, cpus, pids = self._limits(spec)
        return dict(
            image=self.image_for(spec.bot.runtime),
            command=[BOOTSTRAP],
            name=container_name(spec),
            labels=self.labels(spec),
            environment=self.environment(spec),
            user=f"{BOT_UID}:{BOT_UID}",
            read_only=True,
            tmpfs=dict(TMPFS),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=f"{memory}m",
            memswap_limit=f"{memory}m",  # no swap beyond the memory limit
            nano_cpus=int(cpus * 1e9),
            pids_limit=pids,
            network_mode=self.config.docker.network,
            log_config={"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
            stop_signal="SIGTERM",
        )

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, spec: RunSpec) -> Handle:
        if spec.kind != KIND_REALTIME:
            raise BackendError(f"bot {spec.bot.id}: start() is for realtime bots; use run_once()", retryable=False)
        return self._launch(spec, replace_exited=True)

    def run_once(self, spec: RunSpec) -> Handle:
        if spec.kind != KIND_SCHEDULED:
            raise BackendError(f"bot {spec.bot.id}: run_once() needs a run id", retryable=False)
        # A run that already exists (even finished) is never run again: its exit is, or was, reported.
        return self._launch(spec, replace_exited=False)

    def _launch(self, spec: RunSpec, replace_exited: bool) -> Handle:
        kwargs = self.create_kwargs(spec)
        name = kwargs["name"]
        for _attempt in range(3):
            try:
                cid = self._create(kwargs)
            except derrors.ImageNotFound:
                raise BackendError(
                    f"bot {spec.bot.id}: image {kwargs['image']} not found; build the runtime images "
                    "with images/build.sh (make images)",
                    retryable=False,
                ) from None
            except derrors.APIError as e:
                if e.status_code != 409:
                    raise self._error(f"bot {spec.bot.id}: create {name}", e) from None
                # The name exists: a retried create, or a container left from before. Never a second one.
                attrs = self._existing(name)
                if attrs is None:
                    continue  # removed between our create and our look: create again
                status = attrs.get("State", {}).get("Status", "")
                if status in _ALIVE or not replace_exited:
                    if status == "created":
                        self._start_container(attrs["Id"], spec)
                        attrs = self._existing(name) or attrs
                    event(log, "docker.adopted", bot_id=spec.bot.id, container=name, status=status)
                    return self._remember(self._handle(attrs), running=status in _ALIVE)
                event(log, "docker.replace_exited", bot_id=spec.bot.id, container=name, status=status)
                self._remove_quietly(attrs["Id"])
                continue
            except (derrors.DockerException, requests.RequestException) as e:
                raise self._error(f"bot {spec.bot.id}: create {name}", e) from None
            try:
                self._start_container(cid, spec)
            except BackendError:
                self._remove_quietly(cid)  # leave nothing half-made behind; a retry creates it again
                raise
            event(log, "docker.started", bot_id=spec.bot.id, run_id=spec.run_id, container=name, id=cid[:12])
            # No inspect on the hot path: the handle is built from what we asked for.
            return self._remember(Handle(
                bot_id=spec.bot.id, kind=spec.kind, ref=cid, config_hash=spec.bot.config_hash,
                run_id=spec.run_id, started_at=self._now(),
                meta={"name": name, "image": kwargs["image"], "status": "running"},
            ), running=True)
        raise BackendError(f"bot {spec.bot.id}: container {name} kept conflicting on create; try again")

    def _create(self, kw: dict[str, Any]) -> str:
        """One low-level create call (the SDK's high-level create inspects afterwards: a round trip more)."""
        api = self._client.api
        host_config = api.create_host_config(
            read_only=kw["read_only"], tmpfs=kw["tmpfs"], cap_drop=kw["cap_drop"],
            security_opt=kw["security_opt"], mem_limit=kw["mem_limit"], memswap_limit=kw["memswap_limit"],
            nano_cpus=kw["nano_cpus"], pids_limit=kw["pids_limit"], network_mode=kw["network_mode"],
            log_config=LogConfig(type=kw["log_config"]["type"], config=kw["log_config"]["config"]),
        )
        resp = api.create_container(
            image=kw["image"], command=kw["command"], name=kw["name"], labels=kw["labels"],
            environment=kw["environment"], user=kw["user"], stop_signal=kw["stop_signal"],
            host_config=host_config,
        )
        return resp["Id"]

    def _start_container(self, cid: str, spec: RunSpec) -> None:
        try:
            self._client.api.start(cid)
        except derrors.NotFound as e:
            net = self.config.docker.network
            if "network" in str(e) and net in str(e):
                raise BackendError(
                    f"bot {spec.bot.id}: docker network {net!r} does not exist; create it (docker network "
                    f"create {net}) or set THE0_DOCKER_NETWORK", retryable=False) from None
            raise self._error(f"bot {spec.bot.id}: start {cid[:12]}", e) from None
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error(f"bot {spec.bot.id}: start {cid[:12]}", e) from None

    def _existing(self, name: str) -> dict | None:
        try:
            return self._client.api.inspect_container(name)
        except derrors.NotFound:
            return None
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error(f"inspect {name}", e) from None

    def _remember(self, handle: Handle, running: bool) -> Handle:
        """Track a container we started or adopted; a finished one is reported by the watcher only."""
        if running:
            with self._lock:
                self._running[handle.ref] = handle
        return handle

    def _now(self) -> float:
        return self._clock.time() if self._clock is not None else time.time()

    def stop(self, handle: Handle, grace: float) -> ExitResult | None:
        """Stop and return the exit; like the process backend, a stopped task's exit is not also sent to
        the watch callback (the caller has it from here)."""
        with self._lock:
            self._stopped_by_us.add(handle.ref)
        try:
            c = self._client.containers.get(handle.ref)
            # SIGTERM -> bootstrap forwards it, the daemon does its final sync -> SIGKILL after grace.
            c.stop(timeout=max(0, int(math.ceil(grace))))
            c.reload()
        except derrors.NotFound:
            return None
        except (derrors.DockerException, requests.RequestException) as e:
            with self._lock:
                self._stopped_by_us.discard(handle.ref)  # its exit, whenever it comes, must be reported
            raise self._error(f"bot {handle.bot_id}: stop", e) from None
        event(log, "docker.stopped", bot_id=handle.bot_id, container=c.name, code=c.attrs["State"].get("ExitCode"))
        return exit_from_state(c.attrs["State"])

    def remove(self, handle: Handle) -> None:
        try:
            self._client.api.remove_container(handle.ref, force=True)
        except derrors.NotFound:
            pass
        except derrors.APIError as e:
            if e.status_code == 409 and "already in progress" in str(e):
                return
            raise self._error(f"bot {handle.bot_id}: remove", e) from None
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error(f"bot {handle.bot_id}: remove", e) from None
        with self._lock:
            self._running.pop(handle.ref, None)
            self._reported = {k for k in self._reported if k[0] != handle.ref}
            self._stopped_by_us.discard(handle.ref)

    def _remove_quietly(self, cid: str) -> None:
        try:
            self._client.api.remove_container(cid, force=True)
        except derrors.NotFound:
            pass
        except derrors.APIError as e:
            if e.status_code != 409:  # 409: removal already in progress
                raise self._error(f"remove {cid[:12]}", e) from None

    def inspect(self, handle: Handle) -> TaskState:
        try:
            attrs = self._client.api.inspect_container(handle.ref)
        except derrors.NotFound:
            raise TaskNotFound(f"bot {handle.bot_id}: container {handle.ref[:12]} does not exist") from None
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error(f"bot {handle.bot_id}: inspect", e) from None
        state = attrs.get("State", {})
        running = bool(state.get("Running")) or state.get("Status") in ("created", "restarting", "paused")
        return TaskState(
            running=running,
            exit=None if running else exit_from_state(state),
            restarts=int(attrs.get("RestartCount") or 0),
            phase=state.get("Status", ""),
        )

    def list_managed(self) -> list[Handle]:
        return [self._handle(a) for a in self._list_attrs()]

    def _list_attrs(self) -> list[dict]:
        """Inspect data of every managed container, running or exited."""
        try:
            found = self._client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
            out = []
            for c in found:
                try:
                    out.append(self._client.api.inspect_container(c["Id"]))
                except derrors.NotFound:
                    continue  # removed between list and inspect
            return out
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error("list managed containers", e) from None

    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        """The container's own output: bootstrap's and the daemon's JSON lines (init failures show here).
        The bot's output is in /var/the0/logs/bot.log inside it and shipped to the object store."""
        try:
            raw = self._client.api.logs(handle.ref, stdout=True, stderr=True, tail=max(0, int(tail)))
        except derrors.NotFound:
            raise TaskNotFound(f"bot {handle.bot_id}: container {handle.ref[:12]} does not exist") from None
        except (derrors.DockerException, requests.RequestException) as e:
            raise self._error(f"bot {handle.bot_id}: logs", e) from None
        return raw.decode("utf-8", "replace").splitlines()

    def _handle(self, attrs: dict) -> Handle:
        labels = attrs.get("Config", {}).get("Labels") or {}
        return Handle(
            bot_id=labels.get(LABEL_BOT_ID, ""),
            kind=labels.get(LABEL_KIND, KIND_REALTIME),
            ref=attrs["Id"],
            config_hash=labels.get(LABEL_CONFIG_HASH, ""),
            run_id=labels.get(LABEL_RUN_ID) or None,
            started_at=_parse_time(attrs.get("State", {}).get("StartedAt")),
            meta={
                "name": attrs.get("Name", "").lstrip("/"),
                "image": attrs.get("Config", {}).get("Image", ""),
                "status": attrs.get("State", {}).get("Status", ""),
            },
        )

    @staticmethod
    def _error(what: str, e: Exception) -> BackendError:
        status = getattr(e, "status_code", None)
        retryable = status is None or status >= 500 or status in (408, 409, 429)
        return BackendError(f"{what} failed: {e}", retryable=retryable)

    # --- exits: one events watcher ---------------------------------------------------------------------

    def watch(self, on_exit: ExitCallback) -> None:
        if self._thread is not None:
            raise BackendError("watch() was already called; the docker backend has one event source", retryable=False)
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._watch_loop, name="docker-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a dead stream may raise anything from urllib3
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.connected.clear()

    def _watch_loop(self) -> None:
        delay = _RECONNECT_INITIAL
        first = True
        while not self._stopping.is_set():
            try:
                # Open the stream before relisting so no die falls between the two; duplicates are dropped.
                self._stream = self._client.events(
                    decode=True,
                    filters={"type": "container", "label": f"{LABEL_MANAGED}=true", "event": ["die"]},
                )
                self._relist()
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    event(log, "docker.events_reconnected", reconnects=self.reconnects)
                first = False
                delay = _RECONNECT_INITIAL
                for ev in self._stream:
                    if self._stopping.is_set():
                        break
                    self._on_event(ev)
                if not self._stopping.is_set():
                    event(log, "docker.events_closed", level=logging.WARNING)
            except Exception as e:  # noqa: BLE001 - dockerd gone/restarting: reconnect with backoff
                if self._stopping.is_set():
                    break
                event(log, "docker.events_error", level=logging.WARNING, error=str(e), retry_in=delay)
            finally:
                self.connected.clear()
                stream, self._stream = self._stream, None
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:  # noqa: BLE001
                        pass
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, _RECONNECT_MAX)

    def _on_event(self, ev: dict) -> None:
        cid = ev.get("id") or ev.get("Actor", {}).get("ID")
        if not cid:
            return
        try:
            attrs = self._client.api.inspect_container(cid)
        except derrors.NotFound:
            # Removed before we could look (e.g. --rm): report what the event says.
            with self._lock:
                known = self._running.pop(cid, None)
                if cid in self._stopped_by_us:
                    known = None
            if known is not None:
                code = ev.get("Actor", {}).get("Attributes", {}).get("exitCode")
                self._deliver(known, ExitResult(code=int(code) if code is not None else None, reason="removed"))
            return
        self._report_exit(attrs)

    def _relist(self) -> None:
        """Compare what exists now with what we knew was running; report exits that happened meanwhile."""
        attrs = self._list_attrs()
        seen = set()
        for a in attrs:
            seen.add(a["Id"])
            state = a.get("State", {})
            if state.get("Running") or state.get("Status") in _ALIVE:
                with self._lock:
                    self._running.setdefault(a["Id"], self._handle(a))
            else:
                self._report_exit(a)
        with self._lock:
            vanished = [(cid, h) for cid, h in self._running.items() if cid not in seen]
            for cid, _ in vanished:
                self._running.pop(cid, None)
        for cid, h in vanished:
            with self._lock:
                if cid in self._stopped_by_us:
                    continue
            self._deliver(h, ExitResult(code=None, reason="container vanished while the events stream was down"))

    def _report_exit(self, attrs: dict) -> None:
        """Report a finished container once (key: id + FinishedAt)."""
        state = attrs.get("State", {})
        if state.get("Running") or state.get("Status") in _ALIVE:
            return  # restarted since the event (cannot happen without a restart policy, but be exact)
        key = (attrs["Id"], state.get("FinishedAt", ""))
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
            self._running.pop(attrs["Id"], None)
            if attrs["Id"] in self._stopped_by_us:
                return  # stop() returned this exit to its caller
        self._deliver(self._handle(attrs), exit_from_state(state))

    def _deliver(self, handle: Handle, result: ExitResult) -> None:
        event(log, "docker.exited", bot_id=handle.bot_id, run_id=handle.run_id, code=result.code,
              oom_killed=result.oom_killed, reason=result.reason)
        cb = self._on_exit
        if cb is None:
            return
        try:
            cb(handle, result)
        except Exception:  # noqa: BLE001 - a listener's error never kills the event source
            log.exception("docker.on_exit_failed")


def managed_filters() -> dict[str, Iterable[str] | str]:
    """Filters selecting this runtime's containers (for operators' scripts and the benchmark)."""
    return {"label": f"{LABEL_MANAGED}=true"}
