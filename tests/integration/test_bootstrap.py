"""images/bootstrap.sh run for real (dash and busybox sh) with a local object store and a Python bot:
init then bot, credentials scrubbed, output to bot.log, exit code and .done, signal forwarding."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from daemon import layout
from daemon.storage_local import LocalObjectStore
from tests.servers._util import wait_for

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "images" / "bootstrap.sh"
SHELLS = {"dash": ["/usr/bin/dash"], "busybox": ["/usr/bin/busybox", "sh"]}

BOT = '''
import json, os, signal, sys, time
def main(bot_id, config):
    out = os.path.join(os.environ["STATE_DIR"], "env.json")
    json.dump(sorted(os.environ), open(out, "w"))
    print("hello from", bot_id, os.environ["BOT_TYPE"], flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if config.get("wait_for_term"):
        def on_term(sig, frame):
            print("got signal", sig, flush=True)
            sys.exit(config.get("term_code", 0))
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)  # wait-ok: the bot idles until it is signalled
    if config.get("fail"):
        raise RuntimeError("strategy blew up")
    return None
'''

SECRETS = {
    "MINIO_ACCESS_KEY": "minio-key", "MINIO_SECRET_KEY": "minio-secret", "AWS_SECRET_ACCESS_KEY": "aws",
    "AWS_ACCESS_KEY_ID": "aws-id", "NATS_CREDS": "nats", "MONGO_URI": "mongodb://u:p@127.0.0.1:1",
    "EXCHANGE_API_KEY": "k", "DB_PASSWORD": "p", "GITHUB_TOKEN": "t", "SOME_SECRET_THING": "s",
}


@pytest.fixture(params=sorted(SHELLS))
def shell(request):
    return SHELLS[request.param]


def setup_bot(tmp_path: Path, config: dict, code: str = BOT) -> dict:
    objects = tmp_path / "objects"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", code)
    LocalObjectStore(objects).put_bytes(layout.CODE_BUCKET, "bots/b1.zip", buf.getvalue())
    env = {
        "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "THE0_PYTHON": sys.executable,
        "BOT_ID": "b1", "RUNTIME": "python3.11", "ENTRYPOINT": "main.py", "CODE_FILE": "bots/b1.zip",
        "BOT_CONFIG": json.dumps(config), "IS_SCHEDULED": "false",
        "CODE_PATH": str(tmp_path / "bot"), "STATE_PATH": str(tmp_path / "state"),
        "LOGS_PATH": str(tmp_path / "logs"), "ENTRYPOINT_SCRIPT": str(tmp_path / "var/entrypoint.sh"),
        "THE0_OBJECTS_DIR": str(objects), "THE0_SYNC_WAIT": "20", **SECRETS,
    }
    return env


def test_bot_runs_without_credentials_and_its_exit_code_is_kept(tmp_path, shell):
    env = setup_bot(tmp_path, {"fail": True})
    p = subprocess.run(shell + [str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    names = set(json.loads((tmp_path / "state/env.json").read_text()))
    assert not names & set(SECRETS), names & set(SECRETS)
    assert not [n for n in names if n.startswith(("MINIO_", "THE0_"))]
    assert {"BOT_ID", "BOT_CONFIG", "STATE_DIR", "CODE_MOUNT_DIR", "BOT_TYPE"} <= names
    log = (tmp_path / "logs/bot.log").read_text()
    assert "hello from b1 realtime" in log and "to stderr" in log
    assert "RuntimeError: strategy blew up" in log
    assert (tmp_path / "logs/.done").read_text().strip() == "1"


def test_clean_exit_is_0_and_log_is_appended(tmp_path, shell):
    env = setup_bot(tmp_path, {})
    for _ in range(2):
        p = subprocess.run(shell + [str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "logs/bot.log").read_text().count("hello from b1") == 2
    assert (tmp_path / "logs/.done").read_text().strip() == "0"


def test_init_failure_exit_code_is_returned_and_no_bot_runs(tmp_path, shell):
    env = setup_bot(tmp_path, {})
    env["CODE_FILE"] = "bots/missing.zip"
    p = subprocess.run(shell + [str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "not found in the object store" in p.stderr
    assert not (tmp_path / "logs/bot.log").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_the_bot(tmp_path, shell, sig):
    env = setup_bot(tmp_path, {"wait_for_term": True, "term_code": 5})
    proc = subprocess.Popen(shell + [str(BOOTSTRAP)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        log = tmp_path / "logs/bot.log"
        wait_for(lambda: log.exists() and "ready" in log.read_text(), 60, what="the bot to start")
        proc.send_signal(sig)  # to the bootstrap shell only, as docker stop does to PID 1
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 5, err
    assert f"got signal {int(signal.SIGTERM)}" in log.read_text()
    assert (tmp_path / "logs/.done").read_text().strip() == "5"


def test_a_sync_that_does_not_finish_is_stopped_after_the_bounded_wait(tmp_path, shell):
    env = setup_bot(tmp_path, {})
    # Stand-in for a hung `daemon sync` (daemon init still runs for real through the same wrapper).
    wrapper = tmp_path / "py"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$3" = sync ]; then\n'
        f"  trap 'echo terminated >> {tmp_path}/sync.txt; exit 0' TERM\n"
        f"  echo started >> {tmp_path}/sync.txt\n"
        "  while :; do sleep 0.1; done\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    env.update(THE0_PYTHON=str(wrapper), THE0_SYNC_WAIT="1")
    p = subprocess.run(shell + [str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sync.txt").read_text().split() == ["started", "terminated"]
    assert "bootstrap.sync_timeout" in p.stderr


def test_with_the_real_sync_state_and_logs_reach_the_store(tmp_path, shell):
    """bootstrap + daemon init + daemon sync together: after exit the state and the log lines are stored,
    and daemon.logread reads back exactly what the bot printed (the LogShip record format)."""
    from daemon.archive import extract_tar
    from daemon.logread import read_lines, read_logs

    env = setup_bot(tmp_path, {"fail": True})
    p = subprocess.run(shell + [str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert '"sync_exit_code":0' in p.stderr
    store = LocalObjectStore(tmp_path / "objects")
    lines = read_lines(store, "b1")
    assert lines == (tmp_path / "logs/bot.log").read_text().splitlines()
    assert lines[0] == "hello from b1 realtime" and "RuntimeError: strategy blew up" in lines
    recs = read_logs(store, "b1")
    assert all(set(r) >= {"ts", "epoch", "offset", "line"} for r in recs)
    assert recs[0]["offset"] == 0 and recs[1]["offset"] == len(lines[0]) + 1
    restored = tmp_path / "restored"
    extract_tar(store.get_bytes(layout.STATE_BUCKET, layout.state_key("b1")), restored)
    assert (restored / "env.json").read_bytes() == (tmp_path / "state/env.json").read_bytes()
