"""The backend interface, shaped like a task driver: start, stop, inspect, recover, run once, logs, exits.

A backend runs a bot's code somewhere (a local process group, a Docker container, a Kubernetes Pod). It
never decides about restarts: BotActor and ScheduleActor do, reading ``capabilities`` to learn what the
platform already does by itself. Exits are delivered to one callback (``watch``) from one event source per
backend, never from a thread blocked per bot.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Mapping

from actors.messages import BotDefinition

KIND_REALTIME = "realtime"
KIND_SCHEDULED = "scheduled"


class BackendError(Exception):
    """A backend operation failed. ``retryable``: trying again later may help (daemon down, API timeout)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class TaskNotFound(BackendError):
    """The handle's container/process/pod does not exist (any more)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Capabilities:
    restarts_bots: bool = False  # the platform restarts dead bots itself (Kubernetes Pods)
    fires_schedules: bool = False  # the platform fires cron itself (Kubernetes CronJobs)


@dataclass(frozen=True)
class RunSpec:
    """What to start: the bot, and for a scheduled run its deterministic run id and fire time."""

    bot: BotDefinition
    run_id: str | None = None
    scheduled_at: float | None = None

    @property
    def kind(self) -> str:
        return KIND_SCHEDULED if self.run_id else KIND_REALTIME


@dataclass(frozen=True)
class Handle:
    """Names one started task; opaque ``ref`` is the backend's (container id, "pid:starttime", pod name)."""

    bot_id: str
    kind: str
    ref: str
    config_hash: str = ""
    run_id: str | None = None
    started_at: float = 0.0
    meta: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ExitResult:
    code: int | None  # None: unknown (vanished while the runtime was away)
    signal: int | None = None
    oom_killed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class TaskState:
    running: bool
    exit: ExitResult | None = None
    restarts: int = 0  # restarts done by the platform itself (Kubernetes)
    phase: str = ""


ExitCallback = Callable[[Handle, ExitResult], None]


class Backend(abc.ABC):
    name: str = "abstract"
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def start(self, spec: RunSpec) -> Handle:
        """Start a realtime bot. Idempotent by name: starting a bot that already runs returns its handle."""

    @abc.abstractmethod
    def run_once(self, spec: RunSpec) -> Handle:
        """Start one scheduled run (``spec.run_id`` set); idempotent by run id."""

    @abc.abstractmethod
    def stop(self, handle: Handle, grace: float) -> ExitResult | None:
        """Ask the task to stop (SIGTERM), wait ``grace`` seconds, then kill. Returns the exit when known."""

    @abc.abstractmethod
    def remove(self, handle: Handle) -> None:
        """Forget a finished task (remove its container / record). No error when already gone."""

    @abc.abstractmethod
    def inspect(self, handle: Handle) -> TaskState:
        """Current state; raises TaskNotFound when the task is gone."""

    @abc.abstractmethod
    def list_managed(self) -> list[Handle]:
        """Every task this runtime manages that exists now (running or exited, not yet removed)."""

    @abc.abstractmethod
    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the task's output that the backend can see."""

    @abc.abstractmethod
    def watch(self, on_exit: ExitCallback) -> None:
        """Start the single event source; ``on_exit`` is called (from one thread) for each task that ends."""

    def close(self) -> None:
        """Stop the event source and release clients. Bots keep running."""

    # Only for backends with capabilities.fires_schedules (Kubernetes CronJobs).
    def ensure_schedule(self, bot: BotDefinition) -> None:
        raise NotImplementedError

    def remove_schedule(self, bot_id: str) -> None:
        raise NotImplementedError
