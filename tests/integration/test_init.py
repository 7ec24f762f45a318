"""daemon init against both object stores: code restore, state round trip, entrypoint, exit codes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from daemon import init, layout
from daemon.archive import dir_digest, make_state_tar
from daemon.storage_local import LocalObjectStore
from tests.servers._util import free_port

ROOT = Path(__file__).resolve().parents[2]

BOT_PY = '''
import json, os
def main(bot_id, config):
    state = os.environ["STATE_DIR"]
    path = os.path.join(state, "state.json")
    data = json.load(open(path)) if os.path.exists(path) else {"runs": 0}
    data["runs"] += 1
    data["last_config"] = config
    json.dump(data, open(path, "w"))
    os.makedirs(os.path.join(state, "history"), exist_ok=True)
    open(os.path.join(state, "history", f"run-{data['runs']}.txt"), "w").write(bot_id)
    print("run", data["runs"])
'''


def code_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def dirs(tmp_path):
    class D:
        n = 0

        def fresh(self):
            self.n += 1
            base = tmp_path / f"c{self.n}"
            return base / "bot", base / "state"

    return D()


def run_bot(argv, code_dir, state_dir, bot_id="bot-1", config=None):
    env = {"PATH": os.environ["PATH"], "BOT_ID": bot_id, "BOT_CONFIG": json.dumps(config or {"x": 1}),
           "STATE_DIR": str(state_dir), "CODE_MOUNT_DIR": str(code_dir)}
    return subprocess.run(argv, cwd=code_dir, env=env, capture_output=True, text=True, timeout=60)


def test_code_restore_and_state_round_trip(object_store, dirs):
    blob = os.urandom(200_000)
    object_store.put_bytes(layout.CODE_BUCKET, "user/bot-1/v1.zip",
                           code_zip({"main.py": BOT_PY.encode(), "lib/data.bin": blob}))

    # First run: no saved state.
    code, state = dirs.fresh()
    argv = init.prepare("bot-1", "user/bot-1/v1.zip", "python3.11", "main.py", code, state, object_store,
                        python=sys.executable)
    assert (code / "main.py").read_text() == BOT_PY and (code / "lib/data.bin").read_bytes() == blob
    assert state.is_dir() and list(state.iterdir()) == []
    p = run_bot(argv, code, state)
    assert p.returncode == 0 and p.stdout == "run 1\n", p.stderr

    # What StateSync does at the end of the run: save the state dir as the deterministic tar.
    (state / "blob.bin").write_bytes(os.urandom(300_000))
    object_store.put_bytes(layout.STATE_BUCKET, layout.state_key("bot-1"), make_state_tar(state))

    # Next run in a fresh container: the state dir comes back byte for byte.
    code2, state2 = dirs.fresh()
    argv2 = init.prepare("bot-1", "/user/bot-1/v1.zip", "python3.11", "main.py", code2, state2, object_store,
                         python=sys.executable)
    assert tree(state2) == tree(state)
    assert dir_digest(state2) == dir_digest(state)
    assert make_state_tar(state2) == make_state_tar(state)
    p = run_bot(argv2, code2, state2)
    assert p.returncode == 0 and p.stdout == "run 2\n", p.stderr
    assert json.loads((state2 / "state.json").read_text())["runs"] == 2


def test_init_replaces_old_code_but_first_run_keeps_state_dir(object_store, dirs):
    object_store.put_bytes(layout.CODE_BUCKET, "v2.zip", code_zip({"main.py": b"def main(b, c): pass\n"}))
    code, state = dirs.fresh()
    code.mkdir(parents=True)
    (code / "stale.py").write_text("old version")
    init.prepare("bot-2", "v2.zip", "python3.11", "main.py", code, state, object_store)
    assert sorted(os.listdir(code)) == ["main.py"]


@pytest.mark.parametrize("case,match", [
    ("missing-code", "not found in the object store"),
    ("zip-slip", "refused"),
    ("not-a-zip", "refused"),
    ("bad-entry", "not found in the code archive"),
    ("bad-runtime", "unknown runtime"),
    ("bad-id", "invalid bot id"),
    ("bad-code-file", "CODE_FILE"),
    ("bad-state", "state archive"),
])
def test_bad_input_is_exit_2_with_a_clear_message(object_store, dirs, case, match):
    object_store.put_bytes(layout.CODE_BUCKET, "ok.zip", code_zip({"main.py": b"def main(b, c): pass\n"}))
    object_store.put_bytes(layout.CODE_BUCKET, "slip.zip", code_zip({"../evil.py": b"x"}))
    object_store.put_bytes(layout.CODE_BUCKET, "junk.zip", b"this is not an archive at all")
    args = dict(bot_id="bot-3", code_file="ok.zip", runtime="python3.11", entrypoint="main.py")
    if case == "missing-code":
        args["code_file"] = "nope.zip"
    elif case == "zip-slip":
        args["code_file"] = "slip.zip"
    elif case == "not-a-zip":
        args["code_file"] = "junk.zip"
    elif case == "bad-entry":
        args["entrypoint"] = "bot.py"
    elif case == "bad-runtime":
        args["runtime"] = "perl5"
    elif case == "bad-id":
        args["bot_id"] = "../x"
    elif case == "bad-code-file":
        args["code_file"] = "a/../../b.zip"
    elif case == "bad-state":
        object_store.put_bytes(layout.STATE_BUCKET, layout.state_key("bot-3"), b"\x1f\x8b garbage")
    code, state = dirs.fresh()
    with pytest.raises(init.InitError, match=match) as ei:
        init.prepare(code_dir=code, state_dir=state, store=object_store, **args)
    assert ei.value.exit_code == 2
    assert not (code.parent / "evil.py").exists()
    if case == "bad-state":  # the saved state is kept for the operator, not overwritten
        assert object_store.get_bytes(layout.STATE_BUCKET, layout.state_key("bot-3")) == b"\x1f\x8b garbage"


def _env(tmp_path: Path, **extra) -> dict:
    return {"BOT_ID": "bot-9", "RUNTIME": "python3.11", "ENTRYPOINT": "main.py", "CODE_FILE": "b9.zip",
            "CODE_PATH": str(tmp_path / "bot"), "STATE_PATH": str(tmp_path / "state"),
            "LOGS_PATH": str(tmp_path / "logs"), "ENTRYPOINT_SCRIPT": str(tmp_path / "var/entrypoint.sh"),
            "THE0_PYTHON": sys.executable, **extra}


def test_main_writes_a_runnable_script_local(tmp_path):
    objects = tmp_path / "objects"
    LocalObjectStore(objects).put_bytes(layout.CODE_BUCKET, "b9.zip", code_zip({"main.py": BOT_PY.encode()}))
    env = _env(tmp_path, THE0_OBJECTS_DIR=str(objects))
    assert init.main([], env) == 0
    assert (tmp_path / "logs").is_dir()
    # Run as a container's whole command (Kubernetes): output to bot.log, exit code to .done.
    p = run_bot([str(tmp_path / "var/entrypoint.sh")], tmp_path, tmp_path / "state", bot_id="bot-9")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "logs/bot.log").read_text() == "run 1\n"
    assert (tmp_path / "logs/.done").read_text() == "0\n"
    assert (tmp_path / "state/history/run-1.txt").read_text() == "bot-9"


def test_python_m_daemon_init_against_s3(tmp_path, s3_server):
    s3_server.reset()
    from daemon.storage_s3 import S3ObjectStore

    S3ObjectStore.from_env(s3_server.env).put_bytes(layout.CODE_BUCKET, "b9.zip", code_zip({"main.py": BOT_PY.encode()}))
    env = {"PATH": os.environ["PATH"], **_env(tmp_path), **s3_server.env}
    p = subprocess.run([sys.executable, "-m", "daemon", "init"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line)["event"] for line in p.stderr.splitlines() if line.startswith("{")]
    assert events == ["init.code_restored", "init.state_absent", "init.ready"]
    assert (tmp_path / "var/entrypoint.sh").exists()


def test_main_exit_codes(tmp_path, capsys):
    env = _env(tmp_path, THE0_OBJECTS_DIR=str(tmp_path / "objects"))
    assert init.main([], {k: v for k, v in env.items() if k != "RUNTIME"}) == 2
    assert "RUNTIME is not set" in capsys.readouterr().err
    assert init.main([], env) == 2  # code object missing
    assert "not found in the object store" in capsys.readouterr().err
    assert init.main(["extra"], env) == 2
    # Object store unreachable: exit 3, after bounded retries (a closed port on 127.0.0.1).
    down = _env(tmp_path, MINIO_ENDPOINT=f"127.0.0.1:{free_port()}", MINIO_ACCESS_KEY="k", MINIO_SECRET_KEY="s")
    assert init.main([], down) == 3
    assert "unreachable" in capsys.readouterr().err


def test_main_bad_credentials_is_exit_2(tmp_path, s3_auth_server, capsys):
    env = _env(tmp_path, **s3_auth_server.env)
    assert init.main([], env) == 2
    assert "check MINIO_ACCESS_KEY / MINIO_SECRET_KEY" in capsys.readouterr().err


def test_limits_come_from_the_environment(tmp_path, capsys):
    objects = tmp_path / "objects"
    files = {f"f{i}.txt": b"x" for i in range(20)}
    files["main.py"] = BOT_PY.encode()
    LocalObjectStore(objects).put_bytes(layout.CODE_BUCKET, "b9.zip", code_zip(files))
    env = _env(tmp_path, THE0_OBJECTS_DIR=str(objects), THE0_CODE_MAX_FILES="10")
    assert init.main([], env) == 2
    assert "more than the limit of 10" in capsys.readouterr().err
    assert init.main([], {**env, "THE0_CODE_MAX_FILES": "lots"}) == 2
    assert "THE0_CODE_MAX_FILES='lots'" in capsys.readouterr().err
    assert init.main([], {**env, "THE0_CODE_MAX_FILES": "100"}) == 0
    assert init.InitLimits.from_env({}) == init.InitLimits()
