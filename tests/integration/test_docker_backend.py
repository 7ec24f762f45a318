"""DockerBackend against a real dockerd, real runtime images (images/, local base) and a real S3 server.

Bot containers use the host network so they reach the 127.0.0.1 S3 and NATS servers of the test.
What is proved here:
- a Python bot keeps a counter in /state/state.json; after `docker kill` the watcher reports the exit and
  a new container continues from the last synced value (state restored by `daemon init`);
- `docker inspect` shows every hardening setting, and the bot's environment holds no MINIO_/NATS_ value;
- a retried create never leaves two containers, and an exited container is replaced on start;
- scheduled runs (Python, and a static C binary built here with gcc) run to completion, exit codes are
  reported and their logs are in the object store;
- dockerd restarted under a running bot: the watcher reconnects, reports the exit once, and keeps working.
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
import threading
import uuid
import zipfile
from dataclasses import replace

import pytest

from actors.backends.base import BackendError, ExitResult, Handle, RunSpec, TaskNotFound
from actors.backends.docker import LABEL_BOT_ID, DockerBackend, _parse_time, container_name, exit_from_state
from actors.config import Config, load
from actors.messages import REALTIME, SCHEDULED, BotDefinition
from daemon import layout
from tests.servers._util import wait_for
from tests.servers.nats import NatsServer

pytestmark = [pytest.mark.docker, pytest.mark.s3, pytest.mark.timeout(900)]

PREFIX = f"dk{uuid.uuid4().hex[:6]}"

COUNTER_BOT = '''
import json, os, sys, time

def main(bot_id, config):
    state_dir = os.environ.get("STATE_DIR", "/state")
    path = os.path.join(state_dir, "state.json")
    try:
        with open(path) as f:
            n = json.load(f)["counter"]
    except FileNotFoundError:
        n = 0
    print("ENVKEYS " + json.dumps(sorted(os.environ)), flush=True)
    print(f"START {n}", flush=True)
    steps = int(config.get("steps", 0))
    while True:
        n += 1
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"counter": n}, f)
        os.replace(tmp, path)
        print(f"COUNT {n}", flush=True)
        if steps and n >= steps:
            print("DONE", flush=True)
            return {"status": "success"}
        time.sleep(0.1)  # wait-ok: the test bot's own tick, not a test waiting
'''

C_BOT = r'''
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *id = getenv("BOT_ID");
    printf("hello from C bot %s\n", id ? id : "?");
    fflush(stdout);
    return 3;
}
'''


# --- fixtures ----------------------------------------------------------------------------------------


class ExitRecorder:
    """Collects (handle, exit) from the backend's watcher thread."""

    def __init__(self):
        self.exits: list[tuple[Handle, ExitResult]] = []
        self._lock = threading.Lock()

    def __call__(self, handle: Handle, result: ExitResult) -> None:
        with self._lock:
            self.exits.append((handle, result))

    def for_ref(self, ref: str) -> list[ExitResult]:
        with self._lock:
            return [r for h, r in self.exits if h.ref == ref]


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    srv = NatsServer(tmp_path_factory.mktemp("nats-docker")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def config(s3_server, tmp_path_factory) -> Config:
    env = {
        "THE0_BACKEND": "docker",
        "THE0_DOCKER_NETWORK": "host",
        "THE0_DATA_DIR": str(tmp_path_factory.mktemp("the0-docker")),
        **s3_server.env,
    }
    return load(env=env)


@pytest.fixture(scope="module")
def store(s3_server):
    from daemon.storage_s3 import S3ObjectStore

    return S3ObjectStore.from_env(s3_server.env)


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("cbot")
    (d / "bot.c").write_text(C_BOT)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(d / "bot"), str(d / "bot.c")], check=True)
    return (d / "bot").read_bytes()


@pytest.fixture(scope="module")
def backend(docker_images, docker_daemon, config, nats):
    recorder = ExitRecorder()
    b = DockerBackend(config, nats_url=nats.url)
    b.watch(recorder)
    wait_for(b.connected.is_set, 30, what="the docker events stream to open")
    b.recorder = recorder
    yield b
    b.close()
    client = docker_daemon.client()
    for c in client.containers.list(all=True, filters={"label": LABEL_BOT_ID}):
        if c.labels.get(LABEL_BOT_ID, "").startswith(PREFIX):
            c.remove(force=True)


def upload_zip(store, key: str, files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((modes or {}).get(name, 0o644) | 0o100000) << 16
            z.writestr(info, data)
    store.put_bytes(layout.CODE_BUCKET, layout.code_key(key), buf.getvalue(), "application/zip")


def python_bot(store, name: str, kind: str = REALTIME, config: dict | None = None) -> BotDefinition:
    bot_id = f"{PREFIX}-{name}"
    key = f"{bot_id}/v1/code.zip"
    upload_zip(store, key, {"main.py": COUNTER_BOT})
    cfg = dict(config or {})
    if kind == SCHEDULED:
        cfg.setdefault("schedule", "0 * * * *")
    doc = {
        "id": bot_id,
        "config": cfg,
        "custom": {"version": "1.0.0", "filePath": key,
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }
    return BotDefinition.from_document(doc, kind)


def container_exec(docker_daemon, ref: str, *cmd: str) -> str:
    out = docker_daemon.client().containers.get(ref).exec_run(list(cmd))
    if out.exit_code != 0:
        raise AssertionError(f"exec {cmd} exited {out.exit_code}: {out.output!r}")
    return out.output.decode()


def bot_log(docker_daemon, ref: str) -> str:
    return container_exec(docker_daemon, ref, "cat", f"{layout.LOGS_PATH}/{layout.BOT_LOG_FILE}")


def live_counter(docker_daemon, ref: str) -> int:
    return json.loads(container_exec(docker_daemon, ref, "cat", f"{layout.STATE_PATH}/state.json"))["counter"]


def synced_counter(store, bot_id: str) -> int | None:
    blob = store.get_bytes(layout.STATE_BUCKET, layout.state_key(bot_id))
    if blob is None:
        return None
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as t:
        for m in t.getmembers():
            if m.name.lstrip("./") == "state.json":
                return json.loads(t.extractfile(m).read())["counter"]
    return None


def stored_log_text(store, bot_id: str) -> str:
    out = []
    for key in store.list(layout.LOGS_BUCKET, layout.logs_prefix(bot_id)):
        out.append((store.get_bytes(layout.LOGS_BUCKET, key) or b"").decode("utf-8", "replace"))
    return "\n".join(out)


def containers_named(docker_daemon, name: str) -> list:
    return [c for c in docker_daemon.client().containers.list(all=True, filters={"name": name})
            if c.name == name]


def wait_exit(backend, ref: str, timeout: float = 60) -> ExitResult:
    results = wait_for(lambda: backend.recorder.for_ref(ref), timeout, what=f"exit of {ref[:12]} reported")
    return results[0]


# --- without containers ------------------------------------------------------------------------------


def test_exit_results_and_docker_times_are_read_exactly():
    assert exit_from_state({"ExitCode": 0}) == ExitResult(code=0, reason="exited")
    assert exit_from_state({"ExitCode": 137}).signal == 9
    oom = exit_from_state({"ExitCode": 137, "OOMKilled": True})
    assert oom.oom_killed and oom.reason == "oom-killed"
    assert _parse_time("0001-01-01T00:00:00Z") == 0.0
    assert _parse_time("2026-12-04T16:41:55.123456789Z") == pytest.approx(1796402515.123456)


def test_local_object_store_is_refused_with_a_clear_error(tmp_path):
    cfg = load(env={"THE0_BACKEND": "docker", "THE0_DATA_DIR": str(tmp_path)})
    with pytest.raises(BackendError, match="MINIO_ENDPOINT") as e:
        DockerBackend(cfg)
    assert e.value.retryable is False


def test_limits_default_override_and_bounded_by_max(backend, store):
    bot = python_bot(store, "limits", config={"limits": {"memory_mb": 99999, "cpus": 0.5, "pids": 64}})
    kw = backend.create_kwargs(RunSpec(bot))
    assert kw["mem_limit"] == f"{backend.config.limits.max_memory_mb}m"  # bounded by max_memory_mb
    assert kw["nano_cpus"] == 500_000_000
    assert kw["pids_limit"] == 64
    plain = backend.create_kwargs(RunSpec(python_bot(store, "limits2")))
    assert plain["mem_limit"] == "512m" and plain["pids_limit"] == 256 and plain["nano_cpus"] == 1_000_000_000
    assert "restart_policy" not in plain and "oom_score_adj" not in plain and "ulimits" not in plain


def test_missing_image_or_network_is_a_clear_error_and_leaves_nothing(backend, store, config, docker_daemon):
    bot = python_bot(store, "errs")
    no_image = DockerBackend(replace(config, docker=replace(config.docker, image_tag="no-such-tag")))
    with pytest.raises(BackendError, match="images/build.sh") as e:
        no_image.start(RunSpec(bot))
    assert e.value.retryable is False
    no_net = DockerBackend(replace(config, docker=replace(config.docker, network="the0-no-such-net")))
    with pytest.raises(BackendError, match="docker network create the0-no-such-net") as e:
        no_net.start(RunSpec(bot))
    assert e.value.retryable is False
    assert containers_named(docker_daemon, container_name(RunSpec(bot))) == []


# --- realtime bot: state, kill, restart, hardening ---------------------------------------------------------


def test_realtime_bot_state_survives_kill_and_container_is_hardened(backend, store, docker_daemon):
    bot = python_bot(store, "counter", config={"limits": {"memory_mb": 256, "cpus": 0.5, "pids": 128}})
    h = backend.start(RunSpec(bot))
    assert h.bot_id == bot.id and h.kind == REALTIME and h.config_hash == bot.config_hash
    assert backend.inspect(h).running

    # Hardening, as dockerd sees it.
    attrs = docker_daemon.client().api.inspect_container(h.ref)
    hc, cc = attrs["HostConfig"], attrs["Config"]
    assert attrs["Name"] == f"/the0-bot-{bot.id}"
    assert hc["ReadonlyRootfs"] is True
    assert set(hc["Tmpfs"]) == {"/bot", "/state", "/tmp", "/var/the0"}
    assert all("uid=1000" in o and "gid=1000" in o for o in hc["Tmpfs"].values())
    assert hc["CapDrop"] == ["ALL"]
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert cc["User"] == "1000:1000"
    assert hc["Memory"] == 256 * 1024 * 1024
    assert hc["NanoCpus"] == 500_000_000
    assert hc["PidsLimit"] == 128
    assert hc["RestartPolicy"]["Name"] in ("", "no")
    assert hc["NetworkMode"] == "host"
    assert cc["Labels"]["the0.runtime.managed"] == "true"
    assert cc["Labels"]["the0.runtime.kind"] == REALTIME
    assert cc["Labels"]["the0.runtime.config-hash"] == bot.config_hash
    # The daemon got the store's credentials; the bot process did not.
    env_keys = {e.split("=", 1)[0] for e in cc["Env"]}
    assert {"MINIO_ENDPOINT", "MINIO_SECRET_KEY", "NATS_URL", "BOT_ID", "CODE_FILE"} <= env_keys

    wait_for(lambda: live_counter(docker_daemon, h.ref) >= 10, 60, what="the bot to count")
    log_text = bot_log(docker_daemon, h.ref)
    assert "START 0" in log_text
    bot_env = json.loads(next(line for line in log_text.splitlines() if line.startswith("ENVKEYS "))[8:])
    assert not [k for k in bot_env if k.startswith(("MINIO_", "NATS_", "AWS_"))], bot_env
    assert {"BOT_ID", "BOT_CONFIG", "STATE_DIR"} <= set(bot_env)
    assert container_exec(docker_daemon, h.ref, "id", "-u").strip() == "1000"

    # Let the daemon sync a value, then kill -9 the container (no final sync).
    wait_for(lambda: (synced_counter(store, bot.id) or 0) >= 5, 60, what="state synced to S3")
    docker_daemon.client().containers.get(h.ref).kill()
    res = wait_exit(backend, h.ref)
    assert res.code == 137 and res.signal == 9
    assert backend.inspect(h).running is False
    last_synced = synced_counter(store, bot.id)
    assert last_synced and last_synced >= 5

    # Start again: the exited container is replaced, and the counter continues from the synced value.
    h2 = backend.start(RunSpec(bot))
    assert h2.ref != h.ref
    assert len(containers_named(docker_daemon, container_name(RunSpec(bot)))) == 1
    with pytest.raises(TaskNotFound):
        backend.inspect(h)
    wait_for(lambda: f"START {last_synced}" in bot_log(docker_daemon, h2.ref), 60,
             what=f"the new container to start from {last_synced}")
    wait_for(lambda: live_counter(docker_daemon, h2.ref) > last_synced, 30, what="counting on")
    assert len(backend.recorder.for_ref(h.ref)) == 1  # the exit was reported once

    # A graceful stop: SIGTERM, the daemon's final sync, the exit returned by stop() (and, as with the
    # process backend, not sent to the watch callback as well).
    before_stop = live_counter(docker_daemon, h2.ref)
    res2 = backend.stop(h2, grace=10)
    assert res2 is not None and res2.code == 143 and res2.signal == 15  # bootstrap exits 128+TERM
    final = synced_counter(store, bot.id)
    assert final >= before_stop  # the final sync ran after SIGTERM
    backend.remove(h2)
    assert containers_named(docker_daemon, container_name(RunSpec(bot))) == []
    backend.remove(h2)  # no error when already gone
    h3 = backend.start(RunSpec(bot))
    docker_daemon.client().containers.get(h3.ref).kill()
    wait_exit(backend, h3.ref)  # events come in order: h2's die was handled before h3's
    assert backend.recorder.for_ref(h2.ref) == []
    backend.remove(h3)


def test_retried_create_never_leaves_two_containers(backend, store, docker_daemon, config, nats):
    bot = python_bot(store, "retry")
    spec = RunSpec(bot)
    h1 = backend.start(spec)
    # A retry after a timeout, even from another backend instance (a restarted runtime), adopts it.
    other = DockerBackend(config, nats_url=nats.url)
    h2 = other.start(spec)
    h3 = backend.start(spec)
    assert h1.ref == h2.ref == h3.ref
    assert len(containers_named(docker_daemon, container_name(spec))) == 1
    managed = [x for x in backend.list_managed() if x.bot_id == bot.id]
    assert [x.ref for x in managed] == [h1.ref]
    assert managed[0].config_hash == bot.config_hash and managed[0].started_at > 0
    assert backend.logs(h1, tail=50) is not None
    backend.stop(h1, grace=5)
    backend.remove(h1)


# --- scheduled runs ---------------------------------------------------------------------------------------


def test_scheduled_python_run_completes_with_exit_code_and_logs_in_store(backend, store, docker_daemon):
    bot = python_bot(store, "sched", kind=SCHEDULED, config={"steps": 3})
    run_id = layout.run_id_for(bot.id, 1_700_000_000)
    spec = RunSpec(bot, run_id=run_id, scheduled_at=1_700_000_000)
    h = backend.run_once(spec)
    assert h.run_id == run_id and h.kind == SCHEDULED
    assert h.meta["name"] == f"the0-run-{run_id}"
    res = wait_exit(backend, h.ref)
    assert res.code == 0, backend.logs(h, tail=50)
    # The same run id again (a retry) does not run it a second time.
    again = backend.run_once(spec)
    assert again.ref == h.ref
    assert len(containers_named(docker_daemon, f"the0-run-{run_id}")) == 1
    wait_for(lambda: "DONE" in stored_log_text(store, bot.id), 30, what="the run's log in the store")
    assert synced_counter(store, bot.id) == 3
    backend.remove(h)


def test_scheduled_c_binary_runs_and_its_exit_code_is_reported(backend, store, c_binary, config, nats):
    bot_id = f"{PREFIX}-cbot"
    key = f"{bot_id}/v1/code.zip"
    upload_zip(store, key, {"bin/bot": c_binary}, modes={"bin/bot": 0o755})
    bot = BotDefinition.from_document({
        "id": bot_id,
        "config": {"schedule": "*/5 * * * *"},
        "custom": {"version": "1", "filePath": key,
                   "config": {"runtime": "cpp", "entrypoints": {"bot": "bin/bot"}}},
    }, SCHEDULED)
    h = backend.run_once(RunSpec(bot, run_id=layout.run_id_for(bot_id, 1_700_000_300), scheduled_at=1_700_000_300))
    res = wait_exit(backend, h.ref)
    assert res.code == 3 and res.signal is None and not res.oom_killed
    wait_for(lambda: f"hello from C bot {bot_id}" in stored_log_text(store, bot_id), 30,
             what="the C bot's output in the store")
    # A runtime started after the exit (restart while the run finished) learns it from the first relist.
    later = DockerBackend(config, nats_url=nats.url)
    seen = ExitRecorder()
    later.watch(seen)
    try:
        got = wait_for(lambda: seen.for_ref(h.ref), 30, what="the new watcher to report the finished run")
        assert got[0].code == 3 and [x for x, _ in seen.exits if x.ref == h.ref][0].run_id == h.run_id
    finally:
        later.close()
    backend.remove(h)


# --- dockerd restart (last: it stops every container) ---------------------------------------------------


def test_watcher_reconnects_after_dockerd_restart_and_reports_each_exit_once(backend, store, docker_daemon):
    bot = python_bot(store, "restart")
    h = backend.start(RunSpec(bot))
    wait_for(lambda: live_counter(docker_daemon, h.ref) >= 3, 60, what="the bot to run")
    before = backend.reconnects

    docker_daemon.restart()  # dockerd stops its containers on the way down (no live-restore)

    res = wait_exit(backend, h.ref, timeout=90)
    assert res.code is not None
    wait_for(lambda: backend.reconnects > before and backend.connected.is_set(), 60,
             what="the watcher to reconnect")
    # Relisted: the exited container is still known (not yet removed), and reported once only.
    assert h.ref in {x.ref for x in backend.list_managed()}
    assert len(backend.recorder.for_ref(h.ref)) == 1

    # The new stream works: a bot started after the restart is seen dying.
    h2 = backend.start(RunSpec(bot))
    assert h2.ref != h.ref
    wait_for(lambda: backend.inspect(h2).running and live_counter(docker_daemon, h2.ref) >= 1, 60,
             what="the bot to run again")
    docker_daemon.client().containers.get(h2.ref).kill()
    assert wait_exit(backend, h2.ref).code == 137
    assert len(backend.recorder.for_ref(h2.ref)) == 1
    assert len(backend.recorder.for_ref(h.ref)) == 1
    backend.remove(h2)
