"""BotActor: one realtime bot's container lifecycle and restart policy.

States (supervisord-style, transitions checked)::

    pending -> starting -> running -> exited -> backoff -> starting ...
    running/backoff/exited -> stopping -> stopped        (deleted, or runtime shutdown)
    exited/backoff -> failed                              (restart limit reached or policy says no)

The actor owns restarts (backoff 1 s doubling to 300 s, +-10 % jitter, reset after 600 s of clean
running, optional max_restarts) unless the backend's platform restarts bots itself (Kubernetes), in which
case the actor keeps the Pod in the desired shape and reports the cluster's status.

An actor's crash is not a container's crash: the actor never stops its container from ``on_failure``;
its replacement calls ``backend.start``, which is idempotent and returns the running container.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

from actors.backends.base import Backend, BackendError, Handle, RunSpec, TaskNotFound
from actors.config import RestartDefaults
from actors.directory import Directory
from actors.messages import (
    BotDefinition,
    ClusterStatus,
    Exited,
    GetStatus,
    Reconfigure,
    RestartNow,
    Timer,
)
from actors.status import StatusBoard
from daemon.clock import Clock, TimerHandle
from daemon.jsonlog import event
from daemon.supervisor import Link, Supervised

log = logging.getLogger(__name__)

KIND = "realtime"

PENDING, STARTING, RUNNING, EXITED, BACKOFF = "pending", "starting", "running", "exited", "backoff"
STOPPING, STOPPED, FAILED = "stopping", "stopped", "failed"

TRANSITIONS: dict[str, set[str]] = {
    PENDING: {STARTING, RUNNING, STOPPING, STOPPED},
    STARTING: {RUNNING, EXITED, BACKOFF, FAILED, STOPPING},
    RUNNING: {EXITED, STOPPING, STARTING, RUNNING},
    EXITED: {BACKOFF, STARTING, FAILED, STOPPED, STOPPING},
    BACKOFF: {STARTING, STOPPING, FAILED},
    STOPPING: {STOPPED, STARTING},
    STOPPED: {STARTING},
    FAILED: {STARTING, STOPPING, STOPPED},
}


class InvalidTransition(RuntimeError):
    pass


def backoff_delay(failures: int, defaults: RestartDefaults, rng: random.Random) -> float:
    """Delay before restart number ``failures`` (1-based): initial * 2**(n-1), capped, with jitter."""
    base = min(defaults.backoff_initial * (2 ** max(0, failures - 1)), defaults.backoff_max)
    j = defaults.backoff_jitter
    return max(0.0, base * (1 + rng.uniform(-j, j)))


class BotActor(Supervised):
    def __init__(
        self,
        link: Link | None,
        definition: BotDefinition,
        backend: Backend,
        clock: Clock,
        defaults: RestartDefaults,
        board: StatusBoard,
        directory: Directory,
        adopt: Callable[[str], Handle | None] | None = None,
        leave_running: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(link)
        self.defn = definition
        self.backend = backend
        self.clock = clock
        self.defaults = defaults
        self.board = board
        self.directory = directory
        self._adopt = adopt
        self._leave_running = leave_running
        self.rng = rng or random.Random()
        self.state = PENDING
        self.handle: Handle | None = None
        self.restarts = 0  # restarts done by this runtime for this bot
        self.failures = 0  # consecutive unclean exits, drives the backoff; reset after stable running
        self.last_exit_code: int | None = None
        self.last_exit_reason = ""
        self.started_at: float | None = None
        self.next_restart_at: float | None = None
        self.cluster: dict[str, Any] = {}
        self.error = ""
        self._token = 0
        self._timers: list[TimerHandle] = []

    # --- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        """Runs in the actor's thread. Registers for events and queues the boot: the supervisor waits for
        ``on_start``, so the slow part (adopting or starting the task) runs as the first message instead."""
        super().on_start()
        self.directory.register(KIND, self.defn.id, self.actor_ref)
        self.actor_ref.tell(Timer("boot"))

    def _boot(self) -> None:
        """Adopt the bot's running task when there is one, else start it."""
        adopted = self._adopt(self.defn.id) if self._adopt else None
        if adopted is not None:
            self.handle = adopted
            self.started_at = adopted.started_at or self.clock.time()
            self._to(RUNNING)
            event(log, "bot.adopted", bot_id=self.defn.id, ref=adopted.ref)
            self._arm_stable_timer()
            if adopted.config_hash and adopted.config_hash != self.defn.config_hash:
                self._replace("config changed while the runtime was away")
            return
        self._start()

    def on_stop(self) -> None:
        """Runs in the actor's thread on a graceful stop: stops the bot unless the operator leaves bots running."""
        self._cancel_timers()
        self.directory.unregister(KIND, self.defn.id, self.actor_ref)
        if self.handle is not None and not self._leave_running():
            self._to(STOPPING)
            self._stop_task()
            self._to(STOPPED)
        super().on_stop()

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """The actor crashed: leave the bot running (the replacement adopts it), report upward."""
        self._cancel_timers()
        self.directory.unregister(KIND, self.defn.id, self.actor_ref)
        super().on_failure(exc_type, exc, tb)

    # --- messages ----------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Exited):
            return self._on_exited(message)
        if isinstance(message, Timer):
            return self._on_timer(message)
        if isinstance(message, Reconfigure):
            return self._on_reconfigure(message.definition)
        if isinstance(message, RestartNow):
            return self._restart_now()
        if isinstance(message, ClusterStatus):
            self.cluster = dict(message.status)
            self._publish()
            return None
        if isinstance(message, GetStatus):
            return self.status()
        return super().on_receive(message)

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "id": self.defn.id,
            "kind": KIND,
            "state": self.state,
            "restarts": self.restarts + int(self.cluster.get("restarts") or 0),
            "last_exit_code": self.last_exit_code,
            "last_exit_reason": self.last_exit_reason,
            "started_at": self.started_at,
            "next_restart_at": self.next_restart_at,
            "config_hash": self.defn.config_hash,
            "restart_policy": self.defn.restart,
        }
        if self.cluster:
            s["cluster"] = dict(self.cluster)
            if self.cluster.get("last_exit_code") is not None:
                s["last_exit_code"] = self.cluster["last_exit_code"]
        if self.error:
            s["error"] = self.error
        return s

    # --- internals ---------------------------------------------------------------------------------
    def _to(self, state: str) -> None:
        if state != self.state and state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"bot {self.defn.id}: {self.state} -> {state} is not allowed")
        if state != self.state:
            event(log, "bot.state", bot_id=self.defn.id, state=state, previous=self.state)
        self.state = state
        self._publish()

    def _publish(self) -> None:
        self.board.publish(KIND, self.defn.id, self.status())

    def _timer(self, delay: float, name: str) -> None:
        self._timers.append(self.clock.call_later(delay, self.actor_ref, Timer(name, self._token)))

    def _cancel_timers(self) -> None:
        self._token += 1
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    def _arm_stable_timer(self) -> None:
        self._timer(self.defaults.reset_after, "stable")

    def _start(self) -> None:
        self._cancel_timers()
        self.next_restart_at = None
        self._to(STARTING)
        try:
            self.handle = self.backend.start(RunSpec(self.defn))
        except BackendError as e:
            self.error = f"start failed: {e}"
            event(log, "bot.start_failed", logging.ERROR, bot_id=self.defn.id, error=str(e), retryable=e.retryable)
            self.handle = None
            self.last_exit_code = None
            self.last_exit_reason = self.error
            self._to(EXITED)
            self._after_exit(failed=True, start_failure=True)
            return
        self.error = ""
        self.started_at = self.clock.time()
        self._to(RUNNING)
        event(log, "bot.started", bot_id=self.defn.id, ref=self.handle.ref, config_hash=self.defn.config_hash[:12])
        self._arm_stable_timer()

    def _stop_task(self) -> None:
        handle, self.handle = self.handle, None
        if handle is None:
            return
        try:
            res = self.backend.stop(handle, self.defaults.stop_grace)
            if res is not None:
                self.last_exit_code = res.code
            self.backend.remove(handle)
        except TaskNotFound:
            pass
        except BackendError as e:
            self.error = f"stop failed: {e}"
            event(log, "bot.stop_failed", logging.ERROR, bot_id=self.defn.id, error=str(e))

    def _on_exited(self, msg: Exited) -> None:
        if self.handle is None or msg.run_id is not None:
            return None  # not ours (a scheduled run's, or of a task we already stopped)
        if msg.ref and msg.ref != self.handle.ref:
            # The exit of a task this actor replaced (its stop's event arrives after the new start).
            event(log, "bot.stale_exit_ignored", bot_id=self.defn.id, ref=msg.ref, current=self.handle.ref)
            return None
        self.last_exit_code = msg.code
        self.last_exit_reason = msg.reason or ("oom killed" if msg.oom_killed else "")
        if self.backend.capabilities.restarts_bots:
            # The platform restarts it; record what happened and keep reporting.
            self._publish()
            return None
        handle, self.handle = self.handle, None
        self._cancel_timers()
        self._to(EXITED)
        event(log, "bot.exited", logging.WARNING if msg.code else logging.INFO, bot_id=self.defn.id,
              code=msg.code, reason=msg.reason, oom_killed=msg.oom_killed)
        try:
            self.backend.remove(handle)
        except BackendError as e:
            event(log, "bot.remove_failed", logging.WARNING, bot_id=self.defn.id, error=str(e))
        self._after_exit(failed=msg.code != 0)
        return None

    def _after_exit(self, failed: bool, start_failure: bool = False) -> None:
        policy = self.defn.restart
        if policy == "never" or (policy == "on-failure" and not failed):
            self._to(STOPPED if not failed else FAILED)
            return
        limit = self.defn.max_restarts if self.defn.max_restarts is not None else self.defaults.max_restarts
        if limit is not None and self.restarts >= limit:
            self.error = f"restart limit {limit} reached"
            event(log, "bot.failed", logging.ERROR, bot_id=self.defn.id, restarts=self.restarts, limit=limit)
            self._to(FAILED)
            return
        # A clean exit under "always" restarts too, without growing the backoff.
        if failed or start_failure:
            self.failures += 1
        delay = backoff_delay(max(1, self.failures), self.defaults, self.rng)
        self.next_restart_at = self.clock.time() + delay
        self._to(BACKOFF)
        event(log, "bot.backoff", bot_id=self.defn.id, delay=round(delay, 3), failures=self.failures)
        self._timer(delay, "restart")

    def _on_timer(self, msg: Timer) -> None:
        if msg.name == "boot":
            return self._boot() if self.state == PENDING else None
        if msg.token != self._token:
            return None
        if msg.name == "restart" and self.state == BACKOFF:
            self.restarts += 1
            self._start()
        elif msg.name == "stable" and self.state == RUNNING:
            if self.failures:
                event(log, "bot.backoff_reset", bot_id=self.defn.id, failures=self.failures)
            self.failures = 0
            self._publish()
        return None

    def _on_reconfigure(self, defn: BotDefinition) -> None:
        old = self.defn
        self.defn = defn
        if defn.config_hash == old.config_hash:
            self._publish()
            return None
        if self.state in (RUNNING, STARTING):
            self._replace("config changed")
        elif self.state in (BACKOFF, EXITED, FAILED, STOPPED):
            self.failures = 0
            self._start()
        return None

    def _replace(self, why: str) -> None:
        event(log, "bot.replacing", bot_id=self.defn.id, reason=why, config_hash=self.defn.config_hash[:12])
        if self.backend.capabilities.restarts_bots:
            # The backend replaces the Pod when its config-hash annotation differs.
            self._start()
            return
        self._cancel_timers()
        self._to(STOPPING)
        self._stop_task()
        self.failures = 0
        self._start()

    def _restart_now(self) -> dict[str, Any]:
        event(log, "bot.restart_requested", bot_id=self.defn.id)
        self.failures = 0
        if self.handle is not None and not self.backend.capabilities.restarts_bots:
            self._cancel_timers()
            self._to(STOPPING)
            self._stop_task()
        elif self.handle is not None:
            try:
                self.backend.stop(self.handle, self.defaults.stop_grace)
            except BackendError as e:
                return {"ok": False, "error": f"restart failed: {e}"}
        self._start()
        return self.status()
