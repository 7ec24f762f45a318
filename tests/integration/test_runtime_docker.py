"""Docker mode, the whole service: a real dockerd, images built from images/, a real S3 server and NATS.

The runtime runs as a child process with THE0_BACKEND=docker; bot containers use the host network so
they reach the 127.0.0.1 servers. Checked: a realtime bot runs; `docker kill` -> restarted after the
backoff with its counter continuing from the synced state; a config update replaces the container once;
the runtime killed -9 and started again adopts the container (same id, same start time, no second one);
delete removes it; a scheduled bot runs to completion on cron with its exit code recorded and its
container removed.
"""
from __future__ import annotations

import json
import secrets

import pytest

from actors.ctl import zip_dir
from daemon import layout
from daemon.storage_s3 import S3ObjectStore
from tests.integration.test_runtime_process import ROOT, RuntimeProcess, counter_doc, nats_request, stored_state_count
from tests.servers._util import wait_for

LABEL_BOT = "the0.runtime.bot-id"
BOT = f"dk-{secrets.token_hex(3)}"
SCHED = f"dks-{secrets.token_hex(3)}"


def containers(client, bot_id, all_=True):
    return client.containers.list(all=all_, filters={"label": f"{LABEL_BOT}={bot_id}"})


@pytest.fixture
def world(tmp_path, nats_server, s3_server, docker_daemon, docker_images):
    store = S3ObjectStore.from_env(s3_server.env)
    for name in ("counter", "report"):
        store.put_bytes(layout.CODE_BUCKET, f"{name}/code.zip", zip_dir(ROOT / "examples" / name))
    # the runtime passes the storage variables to the daemon, never to the bot
    env = dict(s3_server.env, THE0_BACKEND="docker", THE0_DOCKER_NETWORK="host")
    rt = RuntimeProcess(tmp_path / "the0", nats_server.url, env)
    client = docker_daemon.client()
    yield rt, store, client
    rt.stop()
    for bot in (BOT, SCHED):
        for c in containers(client, bot):
            c.remove(force=True)


def test_docker_mode_end_to_end(world):
    rt, store, client = world
    rt.start()
    assert nats_request(rt.nats_url, "the0.bot.created", counter_doc(BOT, "counter/code.zip"))["ok"]
    wait_for(lambda: [c for c in containers(client, BOT, all_=False)], 90, what="bot container running")
    wait_for(lambda: stored_state_count(store, BOT) >= 2, 60, what="state synced to S3")

    # docker kill -> restarted after the backoff; the counter continues from the last synced value
    (c1,) = containers(client, BOT, all_=False)
    synced = stored_state_count(store, BOT)
    c1.kill()
    wait_for(lambda: (rt.status(BOT) or {}).get("restarts") == 1
             and [c for c in containers(client, BOT, all_=False) if c.id != c1.id], 90, what="restart")
    wait_for(lambda: stored_state_count(store, BOT) > synced, 60, what="counter continues")
    first_after_restart = stored_state_count(store, BOT)
    assert first_after_restart > synced
    assert len(containers(client, BOT)) == 1  # the crashed one was removed once its exit was recorded

    # config update -> replaced exactly once
    (c2,) = containers(client, BOT, all_=False)
    assert nats_request(rt.nats_url, "the0.bot.updated", counter_doc(BOT, "counter/code.zip", symbol="ETH"))["ok"]
    wait_for(lambda: [c for c in containers(client, BOT, all_=False) if c.id != c2.id], 90, what="replacement")
    (c3,) = containers(client, BOT, all_=False)
    env = dict(e.split("=", 1) for e in c3.attrs["Config"]["Env"])
    assert json.loads(env["BOT_CONFIG"])["symbol"] == "ETH"
    assert len(containers(client, BOT)) == 1

    # kill -9 the runtime, start it again: adopted, not restarted, not duplicated
    started_at = client.api.inspect_container(c3.id)["State"]["StartedAt"]
    rt.kill9()
    rt.start()
    wait_for(lambda: (rt.status(BOT) or {}).get("state") == "running", 60, what="adopted")
    (c4,) = containers(client, BOT)
    assert c4.id == c3.id and client.api.inspect_container(c4.id)["State"]["StartedAt"] == started_at
    assert rt.status(BOT)["restarts"] == 0

    # delete -> removed
    assert nats_request(rt.nats_url, "the0.bot.deleted", {"id": BOT})["ok"]
    wait_for(lambda: containers(client, BOT) == [], 60, what="container removed")


def test_docker_mode_scheduled_run(world):
    rt, store, client = world
    rt.start()
    doc = counter_doc(SCHED, "report/code.zip", schedule="*/5 * * * * *")
    assert nats_request(rt.nats_url, "the0.bot-schedule.created", doc)["ok"]

    def finished():
        r = rt.ctl("status", id=SCHED)
        return [x for x in r.get("runs", []) if x.get("exit_code") == 0] if r.get("ok") else []

    wait_for(lambda: finished(), 120, what="a finished run")
    wait_for(lambda: any("report" in json.dumps(x) for x in rt.ctl("logs", id=SCHED, tail=50)["lines"]),
             60, what="run logs in the store")
    assert nats_request(rt.nats_url, "the0.bot-schedule.deleted", {"id": SCHED})["ok"]
    run_ids = {r["run_id"] for r in finished()}
    # every finished run's container is gone
    wait_for(lambda: not [c for c in containers(client, SCHED) if c.labels.get("the0.runtime.run-id") in run_ids],
             60, what="run containers removed")
