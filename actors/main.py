"""Wiring: config -> dependencies -> root supervisor -> block until SIGTERM/SIGINT.

``python -m actors.main`` with nothing set runs fully embedded: a nats-server child, the sqlite store and
the local object store under THE0_DATA_DIR (default ./.the0), and the process backend. ``Runtime`` is the
same wiring as an object, so tests embed the whole service in-process.

Tree (DESIGN.md)::

    root (one_for_one, 5 restarts / 30 s, then exit non-zero)
    ├── bots        dynamic one_for_one -> BotActor per enabled realtime bot
    ├── schedules   dynamic one_for_one -> ScheduleActor per enabled schedule
    ├── reconciler  store vs children, on events and every interval
    └── control     NATS bridge
    backend events: the backend's single watcher -> Directory.route_exit -> owning actor
    http: /healthz /readyz /metrics (plain threads, never blocks an actor)
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

import pykka

from actors import config as config_mod
from actors.backends.base import Backend
from actors.bot import BotActor
from actors.config import Config, ConfigError
from actors.control import Control, Handlers, NatsHub, nats_connect_options
from actors.directory import Directory
from actors.messages import REALTIME, SCHEDULED, BotDefinition
from actors.reconciler import Readiness, Reconciler
from actors.status import StatusBoard, StatusWriter
from actors.stores.base import Store
from daemon import storage
from daemon.clock import Clock, RealClock
from daemon.jsonlog import event, setup as setup_logging
from daemon.supervisor import ChildSpec, Supervisor

log = logging.getLogger("actors.main")


def make_backend(cfg: Config, objects: storage.ObjectStore, hub: NatsHub, clock: Clock, nats_url: str) -> Backend:
    if cfg.backend == "process":
        from actors.backends.process import ProcessBackend

        return ProcessBackend(cfg.data_dir, objects, publish=hub.publish, clock=clock, stop_grace=cfg.restart.stop_grace)
    if cfg.backend == "docker":
        from actors.backends.docker import DockerBackend

        return DockerBackend(cfg, clock=clock, nats_url=nats_url)
    from actors.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(cfg, nats_url=nats_url)


class Runtime:
    """The whole service as an object: ``start()``, ``stop()``, and handles for tests."""

    def __init__(self, cfg: Config, clock: Clock | None = None, store: Store | None = None,
                 objects: storage.ObjectStore | None = None, backend: Backend | None = None,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or RealClock()
        self._own_clock = clock is None
        self.store = store
        self.objects = objects
        self.backend = backend
        self.on_give_up = on_give_up or (lambda reason: None)
        self.board = StatusBoard()
        self.directory = Directory()
        self.hub = NatsHub()
        self.refs: dict[str, pykka.ActorRef] = {}
        self.root: pykka.ActorRef | None = None
        self.http: Any = None
        self.nats: Any = None
        self.nats_url = cfg.nats_url or ""
        self.status_writer: StatusWriter | None = None
        self.shutting_down = False
        self.standing_down = False  # lost the leader Lease: stop actors, leave bots to the next leader
        self.elector: Any = None
        self.gave_up = threading.Event()

    # --- start / stop ------------------------------------------------------------------------------
    def start(self) -> "Runtime":
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.nats_url:
            from actors.nats_embed import EmbeddedNats

            self.nats = EmbeddedNats(cfg.nats_port, cfg.data_dir)
            self.nats_url = self.nats.start()
            event(log, "nats.embedded", url=self.nats_url)
        if self.store is None:
            from actors.stores import open_store

            self.store = open_store(cfg)
        if self.objects is None:
            self.objects = storage.from_env(cfg.storage_env())
        if self.backend is None:
            self.backend = make_backend(cfg, self.objects, self.hub, self.clock, self.nats_url)
        self.status_writer = StatusWriter(self.board, self.store).start()
        self.backend.watch(self.directory.route_exit)
        if hasattr(self.backend, "watch_status"):
            self.backend.watch_status(self.directory.route_status)

        self._start_http()
        if cfg.backend == "kubernetes":
            self._start_leader_election()
        else:
            self._start_tree()
        event(log, "runtime.started", backend=cfg.backend, nats=self.nats_url, data_dir=str(cfg.data_dir))
        return self

    def _start_tree(self) -> None:
        cfg = self.cfg
        handlers = Handlers(self.store, self.board, lambda: self.refs.get("reconciler"),
                            self.directory.tell, self._read_logs)
        children = [
            ChildSpec("bots", lambda link: self._keep("bots", Supervisor.start(
                link, [], strategy="one_for_one", intensity=50, period=30.0, clock=self.clock, name="bots")),
                type="supervisor", shutdown=cfg.restart.stop_grace + 10),
            ChildSpec("schedules", lambda link: self._keep("schedules", Supervisor.start(
                link, [], strategy="one_for_one", intensity=50, period=30.0, clock=self.clock, name="schedules")),
                type="supervisor", shutdown=cfg.restart.stop_grace + 10),
            ChildSpec("reconciler", lambda link: self._keep("reconciler", Reconciler.start(
                link, self.store, self.backend, self.clock, cfg.reconcile_interval,
                self._supervisor_of, self._child_spec, self.board.remove))),
            ChildSpec("control", lambda link: self._keep("control", Control.start(
                link, self.nats_url, nats_connect_options(cfg, self.nats_url), handlers, self.hub))),
        ]
        self.standing_down = False
        self.root = Supervisor.start(None, children, strategy="one_for_one", intensity=5, period=30.0,
                                     clock=self.clock, name="root", on_give_up=self._give_up)

    def _stop_tree(self) -> None:
        root, self.root = self.root, None
        if root is not None:
            try:
                root.stop(timeout=self.cfg.restart.stop_grace + 30)
            except pykka.Timeout:
                event(log, "runtime.stop_timeout", logging.ERROR)
        self.refs.clear()

    def _start_leader_election(self) -> None:
        """Kubernetes: several replicas may run; only the Lease holder runs the tree (and subscribes to
        NATS). Losing the Lease stops the tree and leaves the Pods alone; the next leader adopts them."""
        from actors.leader import LeaderElector

        k = self.cfg.kubernetes
        lock = threading.Lock()

        def lead() -> None:
            with lock:
                if self.root is None and not self.shutting_down:
                    event(log, "leader.acquired", identity=self.cfg.instance_id)
                    self._start_tree()

        def follow() -> None:
            with lock:
                if self.root is not None:
                    event(log, "leader.lost", logging.WARNING, identity=self.cfg.instance_id)
                    self.standing_down = True
                    self._stop_tree()

        self.elector = LeaderElector(
            self.backend.api, k.namespace, k.lease_name, self.cfg.instance_id, k.lease_duration,
            k.renew_deadline, k.retry_period,
            on_started_leading=lambda: threading.Thread(target=lead, name="leader-start", daemon=True).start(),
            on_stopped_leading=lambda: threading.Thread(target=follow, name="leader-stop", daemon=True).start(),
        ).start()

    def stop(self) -> None:
        """Stop the tree in reverse order. Bots are stopped unless the operator leaves them running."""
        self.shutting_down = True
        event(log, "runtime.stopping", leave_bots_running=self._leave_running())
        self._stop_tree()
        if self.elector is not None:
            self.elector.stop()
        if self.http is not None:
            self.http.stop()
        if self.status_writer is not None:
            self.status_writer.stop()
        if self.backend is not None:
            self.backend.close()
        if self.nats is not None:
            self.nats.stop()
        if self.store is not None:
            self.store.close()
        if self._own_clock:
            self.clock.stop()
        alive = [a for a in pykka.ActorRegistry.get_all() if a.is_alive()]
        if alive:
            event(log, "runtime.actors_left", logging.ERROR, actors=[str(a) for a in alive])
        event(log, "runtime.stopped")

    # --- wiring helpers ----------------------------------------------------------------------------
    def _keep(self, name: str, ref: pykka.ActorRef) -> pykka.ActorRef:
        self.refs[name] = ref
        return ref

    def _supervisor_of(self, kind: str) -> pykka.ActorRef | None:
        ref = self.refs.get("bots" if kind == REALTIME else "schedules")
        return ref if ref is not None and ref.is_alive() else None

    def _leave_running(self) -> bool:
        return (self.shutting_down or self.standing_down) and (
            self.cfg.leave_bots_running or bool(self.backend and self.backend.capabilities.restarts_bots)
        )

    def _child_spec(self, kind: str, defn: BotDefinition, adopt: Callable[[str], Any]) -> ChildSpec:
        if kind == REALTIME:
            return ChildSpec(defn.id, lambda link: BotActor.start(
                link, defn, self.backend, self.clock, self.cfg.restart, self.board, self.directory,
                adopt=adopt, leave_running=self._leave_running), shutdown=self.cfg.restart.stop_grace + 5)
        from actors.schedule import ScheduleActor

        return ChildSpec(defn.id, lambda link: ScheduleActor.start(
            link, defn, self.backend, self.store, self.clock, self.cfg.instance_id, self._schedule_status,
            stop_grace=self.cfg.restart.stop_grace, directory=self.directory, adopt=adopt),
            shutdown=self.cfg.restart.stop_grace + 5)

    def _schedule_status(self, schedule_id: str, status: dict) -> None:
        self.board.publish(SCHEDULED, schedule_id, status)

    def _read_logs(self, bot_id: str, tail: int) -> list[Any]:
        from daemon.logread import read_logs

        return read_logs(self.objects, bot_id, tail=tail)

    def _give_up(self, reason: str) -> None:
        event(log, "runtime.gave_up", logging.CRITICAL, reason=reason)
        self.gave_up.set()
        self.on_give_up(reason)

    def _start_http(self) -> None:
        try:
            from actors.http import HttpServer
            from actors.metrics import Registry
        except ImportError:
            return
        self.metrics = Registry()
        self._register_metrics(self.metrics)
        checks = {
            "store": self.store.ping,
            "object_store": self.objects.ping,
            "nats": self._nats_ready,
            "reconciler": self._reconciler_ready,
        }
        self.http = HttpServer(self.cfg.http_addr, self.healthy, checks, self.metrics)
        self.http.start()

    def _register_metrics(self, reg: Any) -> None:
        board = self.board

        def by_state() -> dict[tuple[str, str], float]:
            out: dict[tuple[str, str], float] = {}
            for s in board.all():
                key = (str(s.get("kind")), str(s.get("state")))
                out[key] = out.get(key, 0) + 1
            return out

        def restarts() -> dict[tuple[str], float]:
            return {(s["id"],): float(s.get("restarts") or 0) for s in board.all() if s.get("kind") == REALTIME}

        reg.gauge("the0_bots", "Managed bots and schedules by kind and state", ["kind", "state"]).set_function(by_state)
        reg.gauge("the0_bot_restarts", "Restarts of each realtime bot", ["bot_id"]).set_function(restarts)
        reg.gauge("the0_nats_connected", "1 when the control connection to NATS is up").set_function(
            lambda: 1.0 if self.hub.is_connected() else 0.0)
        reg.gauge("the0_nats_publish_dropped", "Publishes dropped while NATS was disconnected").set_function(
            lambda: float(self.hub.dropped))
        reg.gauge("the0_ready", "1 when every readiness check passes").set_function(
            lambda: 1.0 if self.refs.get("reconciler") is not None and self._safe_ready() else 0.0)

    def _standby(self) -> bool:
        return self.elector is not None and not self.elector.is_leader

    def _nats_ready(self) -> None:
        if not self._standby():  # a standby replica connects when it becomes leader
            self.hub.check()

    def _safe_ready(self) -> bool:
        try:
            self._reconciler_ready()
            return True
        except Exception:  # noqa: BLE001
            return False

    def healthy(self) -> bool:
        if self.gave_up.is_set():
            return False
        if self._standby():
            return True  # a follower is healthy while it waits for the Lease
        return bool(self.root is not None and self.root.is_alive())

    def _reconciler_ready(self) -> None:
        ref = self.refs.get("reconciler")
        if ref is None and self._standby():
            return  # a standby replica: ready to take over
        if ref is None:
            raise RuntimeError("reconciler not started")
        ready, reason = ref.ask(Readiness(), timeout=2)
        if not ready:
            raise RuntimeError(reason)

    def reconciler(self) -> pykka.ActorRef | None:
        return self.refs.get("reconciler")


def main(argv: list[str] | None = None) -> int:
    setup_logging(os.environ.get("THE0_LOG_LEVEL", "INFO"))
    try:
        cfg = config_mod.load()
    except ConfigError as e:
        print(f"the0 runtime: bad configuration: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    exit_code = [0]

    def give_up(reason: str) -> None:
        exit_code[0] = 1
        done.set()

    def on_signal(signum: int, _frame: Any) -> None:
        event(log, "runtime.signal", signal=signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rt = Runtime(cfg, on_give_up=give_up)
    try:
        rt.start()
    except Exception as e:  # noqa: BLE001 - one clear line, then exit
        event(log, "runtime.start_failed", logging.CRITICAL, error=str(e), exc_info=True)
        print(f"the0 runtime: cannot start: {e}", file=sys.stderr)
        try:
            rt.stop()
        except Exception:  # noqa: BLE001
            pass
        return 1
    while not done.wait(1.0):
        pass
    rt.stop()
    logging.shutdown()
    # An actor abandoned after its shutdown timeout keeps a non-daemon thread; it is logged by stop().
    # Exit now rather than wait for it.
    os._exit(exit_code[0])


if __name__ == "__main__":
    sys.exit(main())
