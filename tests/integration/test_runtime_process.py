"""The whole service, embedded defaults: real nats-server, real bot processes, sqlite, local objects.

``python -m actors.main`` runs as a child process (so it can be killed -9 like in production); the test
talks to it only through NATS, the object store and /proc, as an operator would.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.ctl import zip_dir
from daemon import layout
from daemon.storage_local import LocalObjectStore
from tests.servers._util import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Unique per test session: other suites (docker containers share /proc) may run bots called "counter".
BOT = f"counter-{secrets.token_hex(3)}"
SCHED = f"report-{secrets.token_hex(3)}"


def nats_request(url, subject, payload, timeout=10.0):
    async def go():
        import nats

        nc = await nats.connect(url, connect_timeout=3)
        try:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            msg = await nc.request(subject, data, timeout=timeout)
            return json.loads(msg.data)
        finally:
            await nc.close()

    return asyncio.run(go())


def bot_pids(bot_id: str) -> list[int]:
    """Processes whose environment says BOT_ID=<bot_id> (the bot itself; the runtime has no BOT_ID)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BOT_ID={bot_id}".encode() in env:
            pids.append(int(p.name))
    return pids


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


class RuntimeProcess:
    def __init__(self, data_dir: Path, nats_url: str, extra_env: dict | None = None):
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.http_port = free_port()
        inherited = {k: v for k, v in os.environ.items() if k != "MINIO_ENDPOINT"}  # local store unless asked
        self.env = dict(inherited, THE0_DATA_DIR=str(data_dir), NATS_URL=nats_url,
                        THE0_HTTP_ADDR=f"127.0.0.1:{self.http_port}", THE0_RECONCILE_INTERVAL="2",
                        MINIO_ACCESS_KEY="should-never-reach-a-bot", NATS_PASSWORD="nor-this")
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.data_dir / f"runtime-{time.time_ns()}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "actors.main"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, 30, what="runtime /readyz")
        return self

    def ready(self):
        import urllib.request

        if self.proc.poll() is not None:
            raise AssertionError(f"runtime exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001
            return False

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def ctl(self, verb, **payload):
        return nats_request(self.nats_url, f"the0.runtime.ctl.{verb}", payload)

    def status(self, bot_id):
        r = self.ctl("status", id=bot_id)
        return r.get("status") if r.get("ok") else None


def counter_doc(bot_id, file_path, **config):
    return {"id": bot_id, "config": {"interval": 0.2, **config},
            "custom": {"version": "1", "filePath": file_path,
                       "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}


@pytest.fixture
def world(tmp_path, nats_server):
    data = tmp_path / "the0"
    objects = LocalObjectStore(str(data / "objects"))
    for name in ("counter", "report"):
        objects.put_bytes(layout.CODE_BUCKET, f"{name}/code.zip", zip_dir(ROOT / "examples" / name))
    rt = RuntimeProcess(data, nats_server.url)
    yield rt, objects
    rt.stop()
    for bot in (BOT, SCHED):
        for pid in bot_pids(bot):
            os.kill(pid, signal.SIGKILL)


def read_state_count(data_dir: Path, bot_id: str) -> int:
    try:
        return json.loads((data_dir / "bots" / bot_id / "state" / "state.json").read_text())["count"]
    except (OSError, ValueError, KeyError):
        return 0


def test_realtime_bot_lifecycle_and_runtime_kill9_adoption(world):
    rt, objects = world
    rt.start()
    r = nats_request(rt.nats_url, "the0.bot.created", counter_doc(BOT, "counter/code.zip"))
    assert r["ok"], r

    # it runs, as exactly one process, with a clean environment
    wait_for(lambda: len(bot_pids(BOT)) == 1 and (rt.status(BOT) or {}).get("state") == "running",
             30, what="counter running")
    pid = bot_pids(BOT)[0]
    env = proc_env(pid)
    assert not [k for k in env if k.startswith(("MINIO_", "NATS_", "MONGO_", "AWS_", "THE0_"))], sorted(env)
    assert json.loads(env["BOT_CONFIG"])["interval"] == 0.2 and env["BOT_TYPE"] == "realtime"
    wait_for(lambda: read_state_count(rt.data_dir, BOT) >= 3, 20, what="counter ticking")

    # state reaches the object store
    wait_for(lambda: objects.exists(layout.STATE_BUCKET, layout.state_key(BOT)), 20, what="state uploaded")

    # kill -9 the bot -> restarted after the backoff, counter continues
    before = read_state_count(rt.data_dir, BOT)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (rt.status(BOT) or {}).get("restarts") == 1 and len(bot_pids(BOT)) == 1
             and bot_pids(BOT)[0] != pid, 30, what="restart after kill -9")
    st = rt.status(BOT)
    assert st["last_exit_code"] in (-9, 137), st
    wait_for(lambda: read_state_count(rt.data_dir, BOT) > before, 20, what="counter continues")
    pid2 = bot_pids(BOT)[0]

    # updated with a new config -> replaced exactly once
    r = nats_request(rt.nats_url, "the0.bot.updated", counter_doc(BOT, "counter/code.zip", symbol="ETH"))
    assert r["ok"], r
    wait_for(lambda: bot_pids(BOT) and bot_pids(BOT)[0] != pid2
             and json.loads(proc_env(bot_pids(BOT)[0])["BOT_CONFIG"]).get("symbol") == "ETH",
             30, what="replacement with the new config")
    pid3 = bot_pids(BOT)[0]
    # the same update again changes nothing
    assert nats_request(rt.nats_url, "the0.bot.updated", counter_doc(BOT, "counter/code.zip", symbol="ETH"))["ok"]
    rt.ctl("list")  # a round trip after the event
    assert bot_pids(BOT) == [pid3]

    # kill -9 the runtime: the bot keeps running; a new runtime adopts it (not restarted, not duplicated)
    rt.kill9()
    assert bot_pids(BOT) == [pid3]
    rt.start()
    wait_for(lambda: (rt.status(BOT) or {}).get("state") == "running", 30, what="adopted")
    ticks = read_state_count(rt.data_dir, BOT)
    wait_for(lambda: read_state_count(rt.data_dir, BOT) > ticks, 20, what="still ticking")
    assert bot_pids(BOT) == [pid3]
    assert rt.status(BOT)["restarts"] == 0  # a new actor, an adopted task: no restart

    # its log lines were shipped
    r = rt.ctl("logs", id=BOT, tail=5)
    assert r["ok"] and len(r["lines"]) == 5, r

    # deleted -> stopped
    r = nats_request(rt.nats_url, "the0.bot.deleted", {"id": BOT})
    assert r["ok"], r
    wait_for(lambda: bot_pids(BOT) == [], 30, what="stopped after delete")
    wait_for(lambda: rt.status(BOT) is None, 10, what="status gone")


def test_scheduled_bot_runs_on_cron_and_records_runs(world):
    rt, objects = world
    rt.start()
    doc = counter_doc(SCHED, "report/code.zip", schedule="*/2 * * * * *")
    r = nats_request(rt.nats_url, "the0.bot-schedule.created", doc)
    assert r["ok"], r

    def finished_runs():
        reply = rt.ctl("status", id=SCHED)
        return [x for x in reply.get("runs", []) if x.get("exit_code") == 0] if reply.get("ok") else []

    wait_for(lambda: len(finished_runs()) >= 2, 60, what="two finished runs")
    runs = finished_runs()
    assert len({x["run_id"] for x in runs}) == len(runs)  # deterministic, distinct run ids
    # a run's output reaches the object store
    wait_for(lambda: any("report" in json.dumps(x) for x in rt.ctl("logs", id=SCHED, tail=50)["lines"]),
             30, what="run logs shipped")
    r = rt.ctl("run", id=SCHED)
    assert r["ok"]
    r = nats_request(rt.nats_url, "the0.bot-schedule.deleted", {"id": SCHED})
    assert r["ok"]
    wait_for(lambda: rt.ctl("status", id=SCHED)["ok"] is False, 20, what="schedule gone")


def test_bad_requests_leave_the_runtime_healthy(world):
    rt, _ = world
    rt.start()
    for payload in (b"", b"\x00\xff", b"[]", b'{"id": "../x"}', json.dumps({"id": "x" * 5000}).encode()):
        for subject in ("the0.bot.created", "the0.bot-schedule.updated", "the0.runtime.ctl.status"):
            r = nats_request(rt.nats_url, subject, payload)
            assert r["ok"] is False and r["error"]
    assert rt.ready() and rt.ctl("list") == {"ok": True, "bots": []}


def ctl(rt, *args, env=None):
    return subprocess.run([sys.executable, "-m", "actors.ctl", "--url", rt.nats_url, *args], cwd=ROOT,
                          env=dict(os.environ, THE0_DATA_DIR=str(rt.data_dir), **(env or {})),
                          capture_output=True, text=True, timeout=60)


def test_operator_cli_deploy_list_status_restart_logs(world):
    rt, _ = world
    rt.start()
    bot = f"cli-{secrets.token_hex(3)}"
    try:
        r = ctl(rt, "deploy", str(ROOT / "examples" / "counter"), "--runtime", "python3.11", "--id", bot,
                "--config", '{"interval": 0.2}')
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(bot_pids(bot)) == 1, 30, what="deployed bot running")
        r = ctl(rt, "--json", "list")
        assert r.returncode == 0 and bot in [b["id"] for b in json.loads(r.stdout)["bots"]]
        table = ctl(rt, "list").stdout.splitlines()
        assert table[0].split()[:3] == ["ID", "KIND", "STATE"] and any(line.startswith(bot) for line in table)
        pid = bot_pids(bot)[0]
        assert ctl(rt, "restart", bot).returncode == 0
        wait_for(lambda: bot_pids(bot) and bot_pids(bot)[0] != pid, 30, what="restarted by ctl")
        wait_for(lambda: "tick" in ctl(rt, "logs", bot, "--tail", "3").stdout, 30, what="ctl logs")
        status = ctl(rt, "status", bot)
        assert status.returncode == 0 and "running" in status.stdout
        # logs -f: the shipped tail, then live lines published on the0.bot.logs.<id>
        follow = subprocess.Popen([sys.executable, "-m", "actors.ctl", "--url", rt.nats_url, "logs", bot, "--tail", "1",
                                   "-f"], cwd=ROOT, env=dict(os.environ, THE0_DATA_DIR=str(rt.data_dir)),
                                  stdout=subprocess.PIPE, text=True)
        try:
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len([x for x in seen if '"tick"' in x]) < 5:
                seen.append(follow.stdout.readline())
            assert len([x for x in seen if '"tick"' in x]) >= 5, seen
        finally:
            follow.kill()
            follow.wait(10)
        missing = ctl(rt, "status", "no-such-bot")
        assert missing.returncode == 1 and "no-such-bot" in missing.stderr
        down = subprocess.run([sys.executable, "-m", "actors.ctl", "--url", "nats://127.0.0.1:1", "list"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert down.returncode == 3 and "cannot reach NATS" in down.stderr
    finally:
        for pid in bot_pids(bot):
            os.kill(pid, signal.SIGKILL)


def test_shutdown_stops_bots_unless_asked_to_leave_them(world):
    rt, _ = world
    rt.start()
    assert nats_request(rt.nats_url, "the0.bot.created", counter_doc(BOT, "counter/code.zip"))["ok"]
    wait_for(lambda: len(bot_pids(BOT)) == 1, 30, what="running")
    rt.stop()  # SIGTERM: graceful, bots stopped
    assert rt.proc.returncode == 0
    assert bot_pids(BOT) == []
    rt.env["THE0_LEAVE_BOTS_RUNNING"] = "true"
    rt.start()
    wait_for(lambda: len(bot_pids(BOT)) == 1, 30, what="started again from the store")
    pid = bot_pids(BOT)[0]
    rt.stop()
    assert bot_pids(BOT) == [pid]  # left running, as asked
    rt.start()
    wait_for(lambda: (rt.status(BOT) or {}).get("state") == "running", 30, what="adopted")
    assert bot_pids(BOT) == [pid]


def stored_state_count(store, bot_id) -> int:
    """The counter in the bot's state as the object store holds it: 0 when absent, -1 when unreachable."""
    import io
    import tarfile

    try:
        data = store.get_bytes(layout.STATE_BUCKET, layout.state_key(bot_id))
    except Exception:  # noqa: BLE001 - the server may be down
        return -1
    if not data:
        return 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        for m in t.getmembers():
            if m.name.lstrip("./") == "state.json":
                return json.loads(t.extractfile(m).read())["count"]
    return 0


def test_object_store_outage_keeps_bots_running_and_loses_no_state(tmp_path, nats_server):
    from daemon.storage_s3 import S3ObjectStore
    from tests.servers._util import hold_for
    from tests.servers.s3 import S3Server

    (tmp_path / "s3").mkdir()
    s3 = S3Server(tmp_path / "s3").start()
    store = S3ObjectStore.from_env(s3.env, tries=1)
    store.put_bytes(layout.CODE_BUCKET, "counter/code.zip", zip_dir(ROOT / "examples" / "counter"))
    rt = RuntimeProcess(tmp_path / "the0", nats_server.url, s3.env)
    bot = f"s3out-{secrets.token_hex(3)}"
    try:
        rt.start()
        assert nats_request(rt.nats_url, "the0.bot.created", counter_doc(bot, "counter/code.zip"))["ok"]
        wait_for(lambda: stored_state_count(store, bot) >= 2, 30, what="state in S3")
        pid = bot_pids(bot)[0]
        s3.stop()
        wait_for(lambda: not rt.ready(), 20, what="readiness false while S3 is down")
        hold_for(lambda: bot_pids(bot) == [pid] and rt.proc.poll() is None, 10,
                 what="bot untouched while the object store is down")
        ticks_during_outage = read_state_count(rt.data_dir, bot)
        s3.start()  # same port; moto keeps nothing, so every object and bucket is gone
        wait_for(rt.ready, 60, what="readiness true again")
        # the state written during the outage reaches the store once it is back
        wait_for(lambda: stored_state_count(store, bot) >= ticks_during_outage, 90, what="state re-uploaded")
        assert bot_pids(bot) == [pid] and rt.status(bot)["restarts"] == 0
    finally:
        rt.stop()
        s3.stop()
        for p in bot_pids(bot):
            os.kill(p, signal.SIGKILL)
