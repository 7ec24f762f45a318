"""Control's NATS connection options against real nats-servers: user/password, token, TLS; and 1,000
hostile payloads over a real connection, every one answered, the bridge still serving afterwards."""
from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from actors.config import Config
from actors.control import Control, Handlers, NatsHub, nats_connect_options
from actors.status import StatusBoard
from actors.stores.sqlite import SqliteStore
from tests.servers._util import free_port, port_open, stop_process, wait_for
from tests.servers.nats import nats_server_binary
from tests.unit.test_control import hostile_payloads


class AuthNats:
    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=open(tmp / "nats.log", "ab"),
                                     start_new_session=True)
        wait_for(lambda: port_open(self.port), 10, what="nats-server")

    def stop(self):
        stop_process(self.proc)


def start_control(tmp_path, url, cfg):
    store = SqliteStore(tmp_path / "db.sqlite")
    hub = NatsHub()
    handlers = Handlers(store, StatusBoard(), lambda: None, lambda *a: False, lambda bot_id, tail: [])
    ref = Control.start(None, url, nats_connect_options(cfg, url), handlers, hub)
    return ref, hub, store


def request(url, subject, data, **opts):
    async def go():
        import nats

        nc = await nats.connect(url, **opts)
        try:
            return json.loads((await nc.request(subject, data, timeout=5)).data)
        finally:
            await nc.close()

    return asyncio.run(go())


def test_user_password(tmp_path):
    srv = AuthNats(tmp_path, "--user", "rt", "--pass", "s3cret")
    url = f"nats://127.0.0.1:{srv.port}"
    try:
        good, hub, store = start_control(tmp_path, url, replace(Config(), nats_user="rt", nats_password="s3cret"))
        wait_for(hub.is_connected, 10, what="connected with user/password")
        r = request(url, "the0.runtime.ctl.list", b"{}", user="rt", password="s3cret")
        assert r == {"ok": True, "bots": []}
        good.stop()
        store.close()
        bad, hub2, store2 = start_control(tmp_path, url, replace(Config(), nats_user="rt", nats_password="wrong"))
        with pytest.raises(AssertionError):
            wait_for(hub2.is_connected, 3, what="must not connect with a wrong password")
        assert bad.is_alive()  # keeps retrying; readiness says why, nothing crashes
        bad.stop()
        store2.close()
    finally:
        srv.stop()


def test_token(tmp_path):
    srv = AuthNats(tmp_path, "--auth", "tok-123")
    url = f"nats://127.0.0.1:{srv.port}"
    try:
        ref, hub, store = start_control(tmp_path, url, replace(Config(), nats_token="tok-123"))
        wait_for(hub.is_connected, 10, what="connected with a token")
        assert request(url, "the0.runtime.ctl.list", b"{}", token="tok-123")["ok"]
        ref.stop()
        store.close()
    finally:
        srv.stop()


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    srv = AuthNats(tmp_path, "--tls", "--tlscert", str(cert), "--tlskey", str(key))
    url = f"tls://127.0.0.1:{srv.port}"
    try:
        ref, hub, store = start_control(tmp_path, url, replace(Config(), nats_tls_ca=str(cert)))
        wait_for(hub.is_connected, 10, what="connected over TLS, server verified with the CA")
        import ssl

        ctx = ssl.create_default_context(cafile=str(cert))
        assert request(url, "the0.runtime.ctl.list", b"{}", tls=ctx)["ok"]
        ref.stop()
        store.close()
    finally:
        srv.stop()


def test_a_thousand_hostile_payloads_over_nats(tmp_path, nats_server):
    ref, hub, store = start_control(tmp_path, nats_server.url, Config())
    wait_for(hub.is_connected, 10, what="connected")
    subjects = ["the0.bot.created", "the0.bot.updated", "the0.bot-schedule.created", "the0.runtime.ctl.status",
                "the0.runtime.ctl.restart", "the0.runtime.ctl.run"]

    async def go():
        import nats

        nc = await nats.connect(nats_server.url)
        replies = []
        try:
            for i, payload in enumerate(hostile_payloads(1000, seed=7)):
                msg = await nc.request(subjects[i % len(subjects)], payload, timeout=10)
                replies.append(json.loads(msg.data))
            replies.append(json.loads((await nc.request("the0.runtime.ctl.list", b"{}", timeout=5)).data))
        finally:
            await nc.close()
        return replies

    replies = asyncio.run(go())
    assert all(r["ok"] is False and r["error"] for r in replies[:-1])
    assert replies[-1] == {"ok": True, "bots": []}  # still serving
    assert ref.is_alive() and hub.is_connected()
    assert store.list_docs("bots") == [] and store.list_docs("schedules") == []
    ref.stop()
    store.close()
