"""Control: the NATS bridge. the0's events and operator requests in, replies out.

Subjects (queue group ``runtime``):
- ``the0.bot.created|updated|deleted``, ``the0.bot-schedule.created|updated|deleted``: payload flat
  ``{id, config, custom}`` or wrapped ``{type, entity_id, data, timestamp}``. Each is validated, written to
  the store (created: skip an existing id; updated: upsert; deleted: remove), then told to the reconciler
  so it is acted on at once.
- ``the0.runtime.ctl.list|status|restart|run|logs``: operator request/reply, JSON.

Every message with a reply subject gets ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Bad
input never raises out of a handler and changes nothing. ``Handlers`` holds the logic (plain, testable);
``Control`` runs nats-py's asyncio loop in one thread and hands each message to a small thread pool, so a
slow store never stalls the NATS connection.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import ssl
import threading
import time
from typing import Any, Callable

import pykka

from actors.config import Config
from actors.messages import REALTIME, SCHEDULED, BotDefinition, InvalidDefinition, RestartNow, RunNow
from actors.reconciler import SyncOne
from actors.status import StatusBoard
from actors.stores.base import BOTS, SCHEDULES, Store, StoreError
from daemon.jsonlog import event
from daemon.layout import check_bot_id
from daemon.supervisor import Link, Supervised

log = logging.getLogger(__name__)

QUEUE = "runtime"
EVENT_SUBJECTS = {
    "the0.bot.created": (REALTIME, "created"),
    "the0.bot.updated": (REALTIME, "updated"),
    "the0.bot.deleted": (REALTIME, "deleted"),
    "the0.bot-schedule.created": (SCHEDULED, "created"),
    "the0.bot-schedule.updated": (SCHEDULED, "updated"),
    "the0.bot-schedule.deleted": (SCHEDULED, "deleted"),
}
CTL_PREFIX = "the0.runtime.ctl."
MAX_PAYLOAD = 512 * 1024
MAX_TAIL = 5000
MAX_REPLY_BYTES = 900 * 1024  # under NATS's default 1 MB max payload


class BadRequest(ValueError):
    pass


def _parse_json(data: bytes) -> Any:
    if len(data) > MAX_PAYLOAD:
        raise BadRequest(f"payload is {len(data)} bytes, over the {MAX_PAYLOAD} byte limit")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"payload is not valid JSON: {str(e)[:120]}") from None


def unwrap_event(payload: Any) -> tuple[str, dict[str, Any]]:
    """Return (id, document) from a flat or wrapped the0 event."""
    if not isinstance(payload, dict):
        raise BadRequest("payload must be a JSON object")
    doc: Any = payload
    if "data" in payload and ("type" in payload or "entity_id" in payload):
        doc = payload.get("data")
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise BadRequest("'data' must be a JSON object")
        doc = dict(doc)
        if "id" not in doc and payload.get("entity_id") is not None:
            doc["id"] = payload["entity_id"]
    bot_id = doc.get("id")
    try:
        check_bot_id(bot_id)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return bot_id, doc


def _request_id(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise BadRequest("request must be a JSON object with an 'id'")
    try:
        return check_bot_id(payload.get("id"))
    except ValueError as e:
        raise BadRequest(str(e)) from None


class Handlers:
    """The logic behind every subject; each method returns the reply dict and never raises."""

    def __init__(
        self,
        store: Store,
        board: StatusBoard,
        reconciler: Callable[[], pykka.ActorRef | None],
        tell_owner: Callable[[str, str, Any], bool],
        read_logs: Callable[[str, int], list[Any]],
    ) -> None:
        self.store = store
        self.board = board
        self.reconciler = reconciler
        self.tell_owner = tell_owner
        self.read_logs = read_logs

    def handle(self, subject: str, data: bytes) -> dict[str, Any]:
        try:
            if subject in EVENT_SUBJECTS:
                kind, action = EVENT_SUBJECTS[subject]
                return self.on_event(kind, action, data)
            if subject.startswith(CTL_PREFIX):
                verb = subject[len(CTL_PREFIX):]
                fn = getattr(self, f"ctl_{verb}", None)
                if fn is None:
                    raise BadRequest(f"unknown request {verb!r}; use list, status, restart, run or logs")
                payload = _parse_json(data) if data.strip() else {}
                return fn(payload)
            raise BadRequest(f"unknown subject {subject!r}")
        except BadRequest as e:
            event(log, "control.bad_request", logging.WARNING, subject=subject, error=str(e))
            return {"ok": False, "error": str(e)}
        except StoreError as e:
            event(log, "control.store_error", logging.ERROR, subject=subject, error=str(e))
            return {"ok": False, "error": f"store unavailable, nothing changed; retry later ({e})"}
        except Exception as e:  # noqa: BLE001 - a bug must not take down the bridge
            event(log, "control.handler_crashed", logging.ERROR, subject=subject, exc_info=True)
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}

    # --- the0 events -------------------------------------------------------------------------------
    def on_event(self, kind: str, action: str, data: bytes) -> dict[str, Any]:
        bot_id, doc = unwrap_event(_parse_json(data))
        coll = BOTS if kind == REALTIME else SCHEDULES
        if action == "deleted":
            removed = self.store.delete_doc(coll, bot_id)
            self._sync(kind, bot_id)
            event(log, "control.deleted", bot_id=bot_id, kind=kind, existed=removed)
            return {"ok": True, "id": bot_id, "deleted": removed}
        try:
            defn = BotDefinition.from_document(doc, kind)
        except InvalidDefinition as e:
            raise BadRequest(str(e)) from None
        if kind == SCHEDULED and action == "created" and doc.get("next_execution_time") is None:
            # A new schedule's first run is its next fire time, never a "missed" one from before it existed.
            from actors.cron import parse_cron

            doc = dict(doc, next_execution_time=int(parse_cron(defn.schedule or "", defn.timezone).next_after(time.time())))
        if action == "created":
            inserted = self.store.create_doc(coll, doc)
            reply = {"ok": True, "id": bot_id, "created": inserted}
            if not inserted:
                reply["note"] = "a bot with this id exists; kept it (send an updated event to change it)"
        else:
            self.store.upsert_doc(coll, doc)
            reply = {"ok": True, "id": bot_id, "updated": True}
        self._sync(kind, bot_id)
        event(log, f"control.{action}", bot_id=bot_id, kind=kind)
        return reply

    def _sync(self, kind: str, bot_id: str) -> None:
        ref = self.reconciler()
        if ref is not None:
            try:
                ref.tell(SyncOne(kind, bot_id))
            except pykka.ActorDeadError:
                pass  # the next full pass applies it

    # --- operator requests -------------------------------------------------------------------------
    def ctl_list(self, payload: Any) -> dict[str, Any]:
        bots = []
        for s in self.board.all():
            row = {k: s.get(k) for k in ("id", "kind", "state", "restarts", "last_exit_code")}
            if s.get("kind") == SCHEDULED:
                row["next_run"] = s.get("next_run")
            bots.append(row)
        return {"ok": True, "bots": bots}

    def ctl_status(self, payload: Any) -> dict[str, Any]:
        bot_id = _request_id(payload)
        status = self.board.get(bot_id)
        if status is None:
            raise BadRequest(f"no bot or schedule with id {bot_id!r} is managed by this runtime")
        reply: dict[str, Any] = {"ok": True, "status": status}
        if status.get("kind") == SCHEDULED:
            reply["runs"] = self.store.list_runs(bot_id, limit=20)
        return reply

    def ctl_restart(self, payload: Any) -> dict[str, Any]:
        bot_id = _request_id(payload)
        if not self.tell_owner(REALTIME, bot_id, RestartNow()):
            raise BadRequest(f"no realtime bot with id {bot_id!r} is running here")
        return {"ok": True, "id": bot_id, "restarting": True}

    def ctl_run(self, payload: Any) -> dict[str, Any]:
        bot_id = _request_id(payload)
        if not self.tell_owner(SCHEDULED, bot_id, RunNow()):
            raise BadRequest(f"no schedule with id {bot_id!r} is managed here")
        return {"ok": True, "id": bot_id, "fired": True}

    def ctl_logs(self, payload: Any) -> dict[str, Any]:
        bot_id = _request_id(payload)
        tail = payload.get("tail", 100)
        if isinstance(tail, bool) or not isinstance(tail, int) or not (1 <= tail <= MAX_TAIL):
            raise BadRequest(f"'tail' must be an integer from 1 to {MAX_TAIL}")
        lines = self.read_logs(bot_id, tail)
        # Keep the reply under NATS's max payload: drop the oldest lines first.
        out: list[Any] = []
        size = 0
        for line in reversed(lines):
            size += len(json.dumps(line, default=str)) + 2
            if size > MAX_REPLY_BYTES:
                break
            out.append(line)
        out.reverse()
        return {"ok": True, "id": bot_id, "lines": out, "truncated": len(out) < len(lines)}


def nats_connect_options(cfg: Config, url: str) -> dict[str, Any]:
    """nats-py connect() keyword arguments: auth, TLS, reconnect forever."""
    opts: dict[str, Any] = {
        "servers": [url],
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 3,
        "name": f"the0-runtime-{cfg.instance_id}",
    }
    if cfg.nats_user:
        opts["user"] = cfg.nats_user
        opts["password"] = cfg.nats_password or ""
    if cfg.nats_token:
        opts["token"] = cfg.nats_token
    if cfg.nats_creds:
        opts["user_credentials"] = cfg.nats_creds
    if cfg.nats_tls_ca or cfg.nats_tls_cert or url.startswith("tls://"):
        ctx = ssl.create_default_context(cafile=cfg.nats_tls_ca) if cfg.nats_tls_ca else ssl.create_default_context()
        if cfg.nats_tls_cert:
            ctx.load_cert_chain(cfg.nats_tls_cert, cfg.nats_tls_key)
        opts["tls"] = ctx
    return opts


class NatsHub:
    """The current control connection, readable from any thread (readiness, log publishing)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.dropped = 0

    def is_connected(self) -> bool:
        nc = self.nc
        return bool(nc is not None and nc.is_connected)

    def publish(self, subject: str, data: bytes) -> None:
        """Thread-safe fire-and-forget publish; dropped (and counted) while disconnected."""
        loop, nc = self.loop, self.nc
        if loop is None or nc is None or not nc.is_connected:
            self.dropped += 1
            return
        try:
            asyncio.run_coroutine_threadsafe(nc.publish(subject, data), loop)
        except RuntimeError:
            self.dropped += 1

    def check(self) -> None:
        """Readiness check: raise when not connected."""
        if not self.is_connected():
            raise ConnectionError("NATS is not connected")


class Control(Supervised):
    """Owns the NATS connection (one asyncio loop thread) and dispatches messages to ``Handlers``."""

    def __init__(self, link: Link | None, url: str, connect_options: dict[str, Any], handlers: Handlers,
                 hub: NatsHub | None = None, workers: int = 4) -> None:
        super().__init__(link)
        self.hub = hub or NatsHub()
        self.url = url
        self.options = connect_options
        self.handlers = handlers
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="control")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing: asyncio.Event | None = None
        self.handled = 0

    def on_start(self) -> None:
        super().on_start()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="control-nats", daemon=True)
        self._thread.start()
        ready.wait(5)

    def on_stop(self) -> None:
        self._shutdown()
        super().on_stop()

    def on_failure(self, *exc: Any) -> None:
        self._shutdown()
        super().on_failure(*exc)

    def _shutdown(self) -> None:
        self.hub.nc = None
        self.hub.loop = None
        if self.loop is not None and self._closing is not None:
            self.loop.call_soon_threadsafe(self._closing.set)
        if self._thread is not None:
            self._thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run_loop(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._closing = asyncio.Event()
        ready.set()
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        import nats

        async def on_error(e: Exception) -> None:
            event(log, "nats.error", logging.WARNING, error=str(e))

        async def on_disconnected() -> None:
            event(log, "nats.disconnected", logging.WARNING, url=self.url)

        async def on_reconnected() -> None:
            event(log, "nats.reconnected", url=self.url)

        delay = 0.5
        assert self._closing is not None
        while not self._closing.is_set():
            try:
                self.nc = await nats.connect(
                    error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
                    **self.options,
                )
                break
            except Exception as e:  # noqa: BLE001 - keep trying; readiness reports it
                event(log, "nats.connect_failed", logging.WARNING, url=self.url, error=str(e), retry_in=delay)
                try:
                    await asyncio.wait_for(self._closing.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
        if self._closing.is_set():
            return
        for subject in EVENT_SUBJECTS:
            await self.nc.subscribe(subject, queue=QUEUE, cb=self._on_message)
        await self.nc.subscribe(CTL_PREFIX + "*", queue=QUEUE, cb=self._on_message)
        await self.nc.flush()
        self.connected.set()
        self.hub.loop, self.hub.nc = self.loop, self.nc
        event(log, "nats.subscribed", url=self.url)
        await self._closing.wait()
        try:
            await self.nc.drain()
        except Exception:  # noqa: BLE001
            pass

    async def _on_message(self, msg: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self.pool, self.handlers.handle, msg.subject, msg.data)
        except RuntimeError:
            return  # pool shut down: the runtime is stopping
        self.handled += 1
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, json.dumps(reply, default=str).encode())
            except Exception as e:  # noqa: BLE001
                event(log, "nats.reply_failed", logging.WARNING, subject=msg.subject, error=str(e))
