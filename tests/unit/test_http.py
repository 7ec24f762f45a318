"""/healthz, /readyz and /metrics served for real over 127.0.0.1 (port 0), and the metrics registry's
Prometheus text format."""
from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request

import pytest

from actors.http import HttpServer, parse_addr
from actors.metrics import CONTENT_TYPE, Registry


def get(server: HttpServer, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def serve():
    servers: list[HttpServer] = []

    def make(health=lambda: True, checks=None, registry=None, **kw) -> HttpServer:
        s = HttpServer("127.0.0.1:0", health, checks or {}, registry or Registry(), **kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


# -- /healthz -----------------------------------------------------------------------------------------


def test_healthz_follows_the_health_callable(serve):
    alive = {"root": True}
    server = serve(health=lambda: alive["root"])
    assert server.port > 0
    status, headers, body = get(server, "/healthz")
    assert status == 200 and json.loads(body) == {"ok": True}
    assert headers["Content-Type"] == "application/json"

    alive["root"] = False
    status, _, body = get(server, "/healthz")
    assert status == 503 and json.loads(body)["ok"] is False


def test_healthz_is_503_when_the_health_callable_raises(serve):
    def broken():
        raise RuntimeError("registry gone")

    status, _, body = get(serve(health=broken), "/healthz")
    assert status == 503 and "registry gone" in json.loads(body)["error"]


# -- /readyz ------------------------------------------------------------------------------------------


def test_readyz_is_200_when_every_check_passes(serve):
    server = serve(checks={"store": lambda: None, "nats": lambda: None})
    status, _, body = get(server, "/readyz")
    assert status == 200
    assert json.loads(body) == {"ok": True, "checks": {"store": "ok", "nats": "ok"}}


def test_readyz_is_503_and_names_each_failed_check_and_why(serve):
    def store():
        raise ConnectionError("mongo at 127.0.0.1:1 refused")

    def objects():
        raise TimeoutError()

    server = serve(checks={"store": store, "nats": lambda: None, "objects": objects})
    status, _, body = get(server, "/readyz")
    report = json.loads(body)
    assert status == 503 and report["ok"] is False
    assert report["checks"] == {"store": "failed", "nats": "ok", "objects": "failed"}
    assert report["failed"] == {"store": "ConnectionError: mongo at 127.0.0.1:1 refused", "objects": "TimeoutError"}


def test_readyz_fails_a_check_that_hangs_without_blocking_the_others(serve):
    gate = threading.Event()
    try:
        server = serve(checks={"stuck": lambda: gate.wait(30), "fine": lambda: None}, check_timeout=0.3)
        status, _, body = get(server, "/readyz")
        report = json.loads(body)
        assert status == 503
        assert report["failed"] == {"stuck": "timed out after 0.3s"}
        assert report["checks"]["fine"] == "ok"
        # a stuck check does not stop the server answering other requests
        assert get(server, "/healthz")[0] == 200
    finally:
        gate.set()


def test_readyz_with_no_checks_is_ready(serve):
    assert get(serve(), "/readyz")[0] == 200


# -- /metrics -----------------------------------------------------------------------------------------


def test_metrics_endpoint_serves_the_registry(serve):
    reg = Registry()
    restarts = reg.counter("the0_bot_restarts_total", "Bot restarts.", ["bot_id"])
    restarts.inc(bot_id="b1")
    restarts.inc(2, bot_id="b1")
    reg.gauge("the0_up", "1 while the runtime runs.").set(1)
    status, headers, body = get(serve(registry=reg), "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    text = body.decode()
    assert 'the0_bot_restarts_total{bot_id="b1"} 3\n' in text
    assert "# TYPE the0_bot_restarts_total counter\n" in text
    assert "the0_up 1\n" in text

    restarts.inc(bot_id="b2")  # rendered at each scrape
    assert 'the0_bot_restarts_total{bot_id="b2"} 1' in get(serve(registry=reg), "/metrics")[2].decode()


def test_unknown_paths_and_methods(serve):
    server = serve()
    status, _, body = get(server, "/nope")
    assert status == 404 and "/healthz" in json.loads(body)["error"]
    assert get(server, "/healthz", method="POST")[0] == 405
    status, _, body = get(server, "/healthz", method="HEAD")
    assert status == 200 and body == b""
    assert get(server, "/healthz?verbose=1")[0] == 200


def test_an_endpoint_error_answers_500_and_the_server_lives_on(serve):
    class Broken(Registry):
        def render(self) -> str:
            raise RuntimeError("render bug")

    server = serve(registry=Broken())
    status, _, body = get(server, "/metrics")
    assert status == 500 and "render bug" in json.loads(body)["error"]
    assert get(server, "/healthz")[0] == 200


# -- lifecycle ----------------------------------------------------------------------------------------


def test_stop_closes_the_port_and_start_reports_a_busy_port():
    server = HttpServer("127.0.0.1:0", lambda: True, {}, Registry()).start()
    port = server.port
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        HttpServer(f"127.0.0.1:{port}", lambda: True, {}, Registry()).start()
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_parse_addr():
    assert parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_addr("[::1]:9100") == ("::1", 9100)
    assert parse_addr(":9100") == ("0.0.0.0", 9100)
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_addr(bad)


# -- the registry's text format -----------------------------------------------------------------------


def test_render_format_escaping_and_special_values():
    reg = Registry()
    g = reg.gauge("the0_x", 'Help with \\ and\nnewline.', ["path", "kind"])
    g.set(0.5, path='a"b\\c\nd', kind="k")
    g.set(math.inf, path="p", kind="inf")
    g.set(-math.inf, path="p", kind="ninf")
    g.set(math.nan, path="p", kind="nan")
    text = reg.render()
    assert text.startswith("# HELP the0_x Help with \\\\ and\\nnewline.\n# TYPE the0_x gauge\n")
    assert 'the0_x{path="a\\"b\\\\c\\nd",kind="k"} 0.5\n' in text
    assert 'the0_x{path="p",kind="inf"} +Inf\n' in text
    assert 'the0_x{path="p",kind="ninf"} -Inf\n' in text
    assert 'the0_x{path="p",kind="nan"} NaN\n' in text
    assert Registry().render() == ""


def test_counters_gauges_and_labels():
    reg = Registry()
    c = reg.counter("the0_runs_total", "Runs.", ["schedule_id"])
    c.inc(schedule_id="s")
    assert reg.counter("the0_runs_total", "Runs.", ["schedule_id"]) is c  # get-or-create
    assert c.value(schedule_id="s") == 1 and c.value(schedule_id="other") == 0
    with pytest.raises(ValueError, match="only go up"):
        c.inc(-1, schedule_id="s")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(bot_id="s")
    with pytest.raises(ValueError, match="already registered as a counter"):
        reg.gauge("the0_runs_total", "Runs.", ["schedule_id"])
    with pytest.raises(ValueError, match="not a valid Prometheus name"):
        reg.counter("the0-bad", "x")
    with pytest.raises(ValueError, match="label name"):
        reg.counter("the0_ok", "x", ["__reserved"])

    g = reg.gauge("the0_children", "Children.")
    g.inc(3)
    g.dec()
    assert g.value() == 2
    c.remove(schedule_id="s")
    assert "schedule_id" not in reg.render()


def test_gauge_function_is_read_at_render_time_and_a_broken_one_is_skipped():
    reg = Registry()
    states = {("running",): 2}
    reg.gauge("the0_bots", "Bots by state.", ["state"]).set_function(lambda: states)
    reg.gauge("the0_broken", "Raises.").set_function(lambda: 1 / 0)
    reg.gauge("the0_plain", "A number.").set_function(lambda: 7)
    states[("backoff",)] = 1
    text = reg.render()
    assert 'the0_bots{state="backoff"} 1\nthe0_bots{state="running"} 2\n' in text
    assert "the0_plain 7\n" in text
    assert "the0_broken" not in text


def test_concurrent_increments_are_not_lost():
    c = Registry().counter("the0_hits_total", "Hits.", ["k"])

    def hammer():
        for _ in range(2000):
            c.inc(k="x")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value(k="x") == 16000
