"""A NATS publisher that any thread can call without blocking: live log lines from LogShip and the runtime.

One asyncio loop runs nats-py in a background thread. ``publish(subject, data)`` only appends to a
bounded queue and, when needed, wakes the loop (one wake-up per burst, not per message). While the
connection is down, or when the queue is full, messages are dropped and counted: live logs are best
effort, the object store has every line. The connection is retried forever with backoff (the first
connect too, so a daemon started before NATS still gets there).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

from daemon.jsonlog import event

log = logging.getLogger("daemon.publish")


def _import_nats(websocket: bool):
    """Import nats-py without its optional aiohttp (websocket transport) unless a ws:// URL needs it:
    aiohttp costs ~14 MB of the daemon's memory budget. Later imports of aiohttp elsewhere still work."""
    import sys

    if websocket or "nats" in sys.modules or "aiohttp" in sys.modules:
        import nats

        return nats
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # makes `import aiohttp` fail inside nats
    try:
        import nats
    finally:
        del sys.modules["aiohttp"]
    return nats


class Publisher:
    """``Publisher(url).start()``; ``publish(subject, bytes) -> bool`` from any thread; ``close()``."""

    def __init__(self, url: str, name: str = "the0-daemon", max_queue: int = 20000,
                 connect_timeout: float = 2.0, reconnect_wait: float = 1.0):
        self.url = url
        self.name = name
        self.max_queue = max_queue
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.sent = 0
        self.dropped = 0
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._connected = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._main: Any = None
        self._sending: set[asyncio.Task] = set()

    @property
    def connected(self) -> bool:
        nc = self._nc
        return bool(nc is not None and nc.is_connected)

    def start(self) -> "Publisher":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="nats-publish", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, subject: str, data: bytes) -> bool:
        """Queue one message; False (and counted in ``dropped``) when it cannot be sent now."""
        if not self.connected or self._loop is None:
            self.dropped += 1
            return False
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                return False
            self._queue.append((subject, data))
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # loop closed
            self.dropped += 1
            return False
        return True

    __call__ = publish

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then disconnect and stop the thread."""
        if self._loop is None or self._closing:
            return
        self._closing = True
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout)
        except Exception as e:  # noqa: BLE001 - closing must not fail
            event(log, "publish.close_failed", logging.WARNING, error=repr(e))
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop thread ---------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        self._main = loop.create_task(self._connect_forever())
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _connect_forever(self) -> None:
        nats = _import_nats(websocket=self.url.startswith(("ws://", "wss://")))

        async def on_disconnect() -> None:
            self._connected.clear()
            event(log, "publish.disconnected", logging.WARNING, url=self.url)

        async def on_reconnect() -> None:
            self._connected.set()
            event(log, "publish.reconnected", url=self.url)

        async def on_error(e: Exception) -> None:
            event(log, "publish.error", logging.DEBUG, error=repr(e))

        wait = self.reconnect_wait
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    servers=[self.url], name=self.name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait, connect_timeout=self.connect_timeout,
                    disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error,
                )
                self._connected.set()
                event(log, "publish.connected", url=self.url)
                return
            except Exception as e:  # noqa: BLE001 - keep trying: NATS may come up later
                event(log, "publish.connect_failed", logging.WARNING, url=self.url, error=repr(e),
                      retry_in=wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            batch = list(self._queue)
            self._queue.clear()
        if batch:
            t = self._loop.create_task(self._send(batch))
            self._sending.add(t)
            t.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        nc = self._nc
        for subject, data in batch:
            try:
                await nc.publish(subject, data)
                self.sent += 1
            except Exception:  # noqa: BLE001 - connection lost mid-batch: drop the rest, counted
                self.dropped += 1

    async def _shutdown(self) -> None:
        self._wake()
        if self._sending:
            await asyncio.wait(list(self._sending), timeout=2)
        if self._main is not None and not self._main.done():
            self._main.cancel()
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await nc.flush(timeout=2)
            except Exception:  # noqa: BLE001
                pass
            await nc.close()
        self._loop.call_soon(self._loop.stop)
