"""Message and data types shared by the actors: bot definitions parsed from the0's documents, actor messages.

Everything here is a frozen dataclass. ``BotDefinition.from_document`` is the one place where a the0
document (``bot_runner.bots`` or ``bot_scheduler.bot_schedules``) is validated and turned into what the
actors use; a bad document raises ``InvalidDefinition`` with a message fit for an operator.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from daemon.layout import check_bot_id

REALTIME = "realtime"
SCHEDULED = "scheduled"

RUNTIMES = ("python3.11", "nodejs20", "rust", "cpp", "dotnet8", "scala3", "haskell")
RESTART_POLICIES = ("always", "on-failure", "never")
CONCURRENCY_POLICIES = ("forbid", "allow", "replace")

_ENTRYPOINT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./:-]{0,254}$")
MAX_DOCUMENT_BYTES = 256 * 1024


class InvalidDefinition(ValueError):
    """A bot or schedule document cannot be run as it is; the message says which field and why."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class BotDefinition:
    """What the runtime needs to run one bot, realtime or scheduled."""

    id: str
    kind: str  # REALTIME | SCHEDULED
    enabled: bool
    runtime: str
    entrypoint: str
    code_file: str
    version: str
    config: Mapping[str, Any]  # the user's config (what the bot receives as BOT_CONFIG)
    query_entrypoint: str | None = None
    restart: str = "always"
    max_restarts: int | None = None
    schedule: str | None = None
    timezone: str = "UTC"
    concurrency: str = "forbid"
    starting_deadline: float = 300.0
    run_timeout: float | None = None
    limits: Limits = field(default_factory=Limits)
    config_hash: str = ""
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_document(cls, doc: Any, kind: str) -> "BotDefinition":
        """Validate a the0 document and build the definition. Raises InvalidDefinition."""
        if kind not in (REALTIME, SCHEDULED):
            raise InvalidDefinition(f"unknown kind {kind!r}")
        if not isinstance(doc, Mapping):
            raise InvalidDefinition("document must be a JSON object")
        try:
            size = len(json.dumps(doc, default=str))
        except (TypeError, ValueError) as e:
            raise InvalidDefinition(f"document is not JSON-serialisable: {e}") from None
        if size > MAX_DOCUMENT_BYTES:
            raise InvalidDefinition(f"document is {size} bytes, over the {MAX_DOCUMENT_BYTES} byte limit")
        bot_id = doc.get("id")
        try:
            check_bot_id(bot_id)
        except ValueError as e:
            raise InvalidDefinition(str(e)) from None
        config = doc.get("config") or {}
        custom = doc.get("custom") or {}
        if not isinstance(config, Mapping):
            raise InvalidDefinition(f"bot {bot_id}: 'config' must be an object")
        if not isinstance(custom, Mapping):
            raise InvalidDefinition(f"bot {bot_id}: 'custom' must be an object")
        cconf = custom.get("config") or {}
        if not isinstance(cconf, Mapping):
            raise InvalidDefinition(f"bot {bot_id}: 'custom.config' must be an object")

        enabled = _bool(doc.get("enabled", True), "enabled", bot_id) and _bool(
            config.get("enabled", True), "config.enabled", bot_id
        )
        runtime = cconf.get("runtime")
        if runtime not in RUNTIMES:
            raise InvalidDefinition(
                f"bot {bot_id}: unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}"
            )
        entrypoints = cconf.get("entrypoints") or {}
        if not isinstance(entrypoints, Mapping):
            raise InvalidDefinition(f"bot {bot_id}: 'custom.config.entrypoints' must be an object")
        entrypoint = _entrypoint(entrypoints.get("bot"), "custom.config.entrypoints.bot", bot_id)
        query = entrypoints.get("query")
        query = _entrypoint(query, "custom.config.entrypoints.query", bot_id) if query else None
        code_file = custom.get("filePath")
        if not isinstance(code_file, str) or not code_file.strip("/") or ".." in code_file.split("/"):
            raise InvalidDefinition(f"bot {bot_id}: 'custom.filePath' must be the code zip's key, got {code_file!r}")
        version = custom.get("version", "")
        if not isinstance(version, (str, int, float)):
            raise InvalidDefinition(f"bot {bot_id}: 'custom.version' must be a string")

        restart = config.get("restart", "always")
        if restart not in RESTART_POLICIES:
            raise InvalidDefinition(f"bot {bot_id}: restart must be one of {', '.join(RESTART_POLICIES)}")
        max_restarts = _opt_int(config.get("max_restarts"), "config.max_restarts", bot_id, minimum=0)

        schedule = None
        timezone = "UTC"
        concurrency = "forbid"
        deadline = 300.0
        timeout = None
        if kind == SCHEDULED:
            schedule = config.get("schedule")
            if not isinstance(schedule, str) or not schedule.strip():
                raise InvalidDefinition(f"bot {bot_id}: scheduled bots need 'config.schedule' (a cron expression)")
            from actors.cron import CronError, parse_cron  # local: cron is only needed for schedules

            timezone = config.get("timezone") or "UTC"
            try:
                parse_cron(schedule, timezone)
            except CronError as e:
                raise InvalidDefinition(f"bot {bot_id}: {e}") from None
            concurrency = config.get("concurrency", "forbid")
            if concurrency not in CONCURRENCY_POLICIES:
                raise InvalidDefinition(
                    f"bot {bot_id}: concurrency must be one of {', '.join(CONCURRENCY_POLICIES)}"
                )
            deadline = float(_opt_int(config.get("starting_deadline"), "config.starting_deadline", bot_id, 0) or 300)
            t = _opt_int(config.get("timeout"), "config.timeout", bot_id, minimum=1)
            timeout = float(t) if t else None

        lim = config.get("limits") or {}
        if not isinstance(lim, Mapping):
            raise InvalidDefinition(f"bot {bot_id}: 'config.limits' must be an object")
        limits = Limits(
            memory_mb=_opt_int(lim.get("memory_mb"), "config.limits.memory_mb", bot_id, minimum=4),
            cpus=_opt_float(lim.get("cpus"), "config.limits.cpus", bot_id),
            pids=_opt_int(lim.get("pids"), "config.limits.pids", bot_id, minimum=8),
        )
        user_config = dict(config)
        defn = cls(
            id=bot_id,
            kind=kind,
            enabled=enabled,
            runtime=runtime,
            entrypoint=entrypoint,
            code_file=code_file.lstrip("/"),
            version=str(version),
            config=user_config,
            query_entrypoint=query,
            restart=restart,
            max_restarts=max_restarts,
            schedule=schedule,
            timezone=timezone,
            concurrency=concurrency,
            starting_deadline=deadline,
            run_timeout=timeout,
            limits=limits,
            config_hash=config_hash(user_config, str(version), entrypoint, runtime),
            document=dict(doc),
        )
        return defn


def config_hash(config: Mapping[str, Any], version: str, entrypoint: str, runtime: str) -> str:
    """sha256 over what, when changed, needs a new container (DESIGN.md)."""
    blob = json.dumps(
        {"config": config, "version": version, "entrypoint": entrypoint, "runtime": runtime},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _bool(v: Any, name: str, bot_id: str) -> bool:
    if isinstance(v, bool):
        return v
    raise InvalidDefinition(f"bot {bot_id}: '{name}' must be true or false, got {v!r}")


def _entrypoint(v: Any, name: str, bot_id: str) -> str:
    if not isinstance(v, str) or not _ENTRYPOINT.match(v) or ".." in v.split("/") or v.startswith("/"):
        raise InvalidDefinition(
            f"bot {bot_id}: '{name}' must be a relative path of letters, digits, '_', '.', '/', ':' or '-', got {v!r}"
        )
    return v


def _opt_int(v: Any, name: str, bot_id: str, minimum: int = 0) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
        raise InvalidDefinition(f"bot {bot_id}: '{name}' must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _opt_float(v: Any, name: str, bot_id: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 256):
        raise InvalidDefinition(f"bot {bot_id}: '{name}' must be a number in (0, 256], got {v!r}")
    return float(v)


# --- actor messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """A bot's container/process ended (from the backend's event source)."""

    bot_id: str
    run_id: str | None
    code: int | None
    reason: str = ""
    oom_killed: bool = False
    ref: str = ""  # the task that ended (Handle.ref); an exit of a task already replaced is stale


@dataclass(frozen=True)
class Timer:
    """A timer fired (``clock.call_later``). ``name`` tells the actor which one; ``token`` detects stale ones."""

    name: str
    token: int = 0


@dataclass(frozen=True)
class Reconfigure:
    """The desired definition of a running actor's bot changed."""

    definition: BotDefinition


@dataclass(frozen=True)
class RestartNow:
    """Operator asked for a restart (``the0.runtime.ctl.restart``)."""


@dataclass(frozen=True)
class RunNow:
    """Operator asked to fire a schedule now (``the0.runtime.ctl.run``)."""


@dataclass(frozen=True)
class GetStatus:
    """Ask: the actor's status as a JSON-able dict."""


@dataclass(frozen=True)
class ClusterStatus:
    """Status reported by a platform that restarts bots itself (Kubernetes): phase, restarts, last exit."""

    status: Mapping[str, Any]
