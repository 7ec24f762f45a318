"""The service's HTTP endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus).

A plain object, not an actor: requests are served by stdlib ``ThreadingHTTPServer`` threads (one per
request, all daemon threads), so a slow or stuck request never blocks an actor, and a stuck actor only
fails the check that asks it.

- ``GET /healthz``: 200 ``{"ok": true}`` while ``health()`` is true (the process and its root
  supervisor are alive); 503 otherwise (or if it raises).
- ``GET /readyz``: runs every readiness check (``name -> callable`` returning None or raising), each in
  its own thread with ``check_timeout`` seconds; 200 ``{"ok": true, "checks": {name: "ok"}}`` when all
  pass, else 503 with ``"failed": {name: "why"}``.
- ``GET /metrics``: ``Registry.render()`` as ``text/plain; version=0.0.4``.

    server = HttpServer("127.0.0.1:0", health=lambda: True, checks={"store": store.ping}, registry=reg)
    server.start(); server.port; server.stop()
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from actors.metrics import CONTENT_TYPE, Registry
from daemon.jsonlog import event

__all__ = ["HttpServer", "parse_addr"]

log = logging.getLogger("actors.http")


def parse_addr(addr: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9000"`` for IPv6) -> (host, port). Port 0 means pick a free one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"HTTP address {addr!r} must be HOST:PORT (e.g. 127.0.0.1:8080); set THE0_HTTP_ADDR")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a stuck request
    owner: "HttpServer"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: stop() leaves no keep-alive behind
    server_version = "the0-runtime"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(send_body=False)

    def do_POST(self) -> None:  # noqa: N802
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"ok": False, "error": "only GET and HEAD are served"},
                   True, extra={"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _route(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        owner = self.server.owner
        try:
            if path == "/healthz":
                status, body = owner.health_report()
                self._json(status, body, send_body)
            elif path == "/readyz":
                status, body = owner.readiness_report()
                self._json(status, body, send_body)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, owner.registry.render().encode(), CONTENT_TYPE, send_body)
            else:
                self._json(HTTPStatus.NOT_FOUND,
                           {"ok": False, "error": f"no such path {path!r}; try /healthz, /readyz or /metrics"},
                           send_body)
        except Exception as e:  # noqa: BLE001 - an endpoint's bug answers 500, never kills the server
            event(log, "http.error", logging.ERROR, path=path, error=repr(e))
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"ok": False, "error": repr(e)}, send_body)

    def _json(self, status: int, body: dict[str, Any], send_body: bool, extra: dict[str, str] | None = None) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self._send(status, data, "application/json", send_body, extra)

    def _send(self, status: int, data: bytes, ctype: str, send_body: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        event(log, "http.request", logging.DEBUG, client=self.client_address[0], line=format % args)


class HttpServer:
    """Serves /healthz, /readyz and /metrics on ``addr`` from daemon threads (see module doc)."""

    def __init__(
        self,
        addr: str,
        health: Callable[[], bool],
        checks: dict[str, Callable[[], None]],
        registry: Registry,
        check_timeout: float = 5.0,
    ) -> None:
        self.addr = addr
        self.host, self._want_port = parse_addr(addr)
        self.health = health
        self.checks = dict(checks)
        self.registry = registry
        self.check_timeout = check_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the chosen one when ``addr`` asked for port 0). Only after ``start()``."""
        if self._server is None:
            raise RuntimeError("HttpServer.port is known only after start()")
        return self._server.server_address[1]

    def start(self) -> "HttpServer":
        """Bind and serve in a daemon thread. Raises OSError with the address when it cannot bind."""
        if self._server is not None:
            raise RuntimeError(f"HttpServer on {self.addr} is already started")
        try:
            server = _Server((self.host, self._want_port), _Handler)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {self.addr} for /healthz /readyz /metrics: {e.strerror}; "
                                   "free the port or set THE0_HTTP_ADDR") from e
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        event(log, "http.listening", addr=f"{self.host}:{self.port}")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (requests in flight finish on their own threads). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        event(log, "http.stopped", addr=self.addr)

    # -- the reports (run in request threads; also usable directly) ---------------------------------

    def health_report(self) -> tuple[int, dict[str, Any]]:
        try:
            ok = bool(self.health())
            error = None if ok else "the process or its root supervisor is not alive"
        except Exception as e:  # noqa: BLE001 - a failing health callable means unhealthy
            ok, error = False, f"health check raised {e!r}"
        if ok:
            return HTTPStatus.OK, {"ok": True}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"ok": False, "error": error}

    def readiness_report(self) -> tuple[int, dict[str, Any]]:
        results = _run_checks(self.checks, self.check_timeout)
        failed = {name: why for name, why in results.items() if why is not None}
        body: dict[str, Any] = {"ok": not failed,
                                "checks": {name: ("ok" if why is None else "failed") for name, why in results.items()}}
        if failed:
            body["failed"] = failed
            return HTTPStatus.SERVICE_UNAVAILABLE, body
        return HTTPStatus.OK, body


def _run_checks(checks: dict[str, Callable[[], None]], timeout: float) -> dict[str, str | None]:
    """Run every check concurrently, each in a daemon thread; name -> None (passed) or why it failed.
    A check still running after ``timeout`` seconds fails (its thread is left to finish)."""
    results: dict[str, str | None] = {}
    lock = threading.Lock()

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            why = None
        except Exception as e:  # noqa: BLE001 - the error is the answer
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        with lock:
            results[name] = why

    threads = []
    for name, fn in checks.items():
        t = threading.Thread(target=run, args=(name, fn), name=f"readyz-{name}", daemon=True)
        t.start()
        threads.append((name, t))
    deadline = time.monotonic() + timeout
    for _, t in threads:  # the checks run at once: the whole report takes at most about `timeout`
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return {name: results.get(name, f"timed out after {timeout:g}s") for name, _ in threads}
