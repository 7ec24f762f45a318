"""daemon.entrypoints: argv and scripts per runtime; Python and a gcc-built binary run for real."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.entrypoints import (
    RUNTIMES,
    EntrypointError,
    command_for,
    script_for,
    write_entrypoint,
)


def run(argv, cwd, env_extra=None, timeout=60):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BOT_ID": "bot-1",
           "BOT_CONFIG": json.dumps({"symbol": "BTC", "n": 3})}
    env.update(env_extra or {})
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    d = tmp_path / "bot"
    d.mkdir()
    return d


# -- argv per runtime ------------------------------------------------------------------------------------

def test_argv_for_every_runtime(code):
    (code / "main.py").write_text("def main(bot_id, config):\n    pass\n")
    (code / "index.js").write_text("console.log('hi')\n")
    (code / "target/release").mkdir(parents=True)
    (code / "target/release/bot").write_bytes(b"\x7fELF")
    (code / "bot").write_bytes(b"\x7fELF")
    (code / "Bot.dll").write_bytes(b"MZ")
    (code / "bot.jar").write_bytes(b"PK")
    c = str(code)

    py = command_for("python3.11", "main.py", code)
    assert py[:3] == ["python3", "-u", "-c"] and py[4:] == [f"{c}/main.py", c]
    assert command_for("nodejs20", "index.js", code) == ["node", f"{c}/index.js"]
    assert command_for("rust", "target/release/bot", code) == [f"{c}/target/release/bot"]
    assert command_for("cpp", "bot", code) == [f"{c}/bot"]
    assert command_for("haskell", "./bot", code) == [f"{c}/bot"]
    assert command_for("dotnet8", "Bot.dll", code) == ["dotnet", f"{c}/Bot.dll"]
    assert command_for("scala3", "bot.jar", code) == ["java", "-jar", f"{c}/bot.jar"]
    assert command_for("scala3", "bot.jar:com.acme.Main", code) == ["java", "-cp", f"{c}/bot.jar", "com.acme.Main"]
    assert command_for("python3.11", "main.py", code, python="/opt/py")[0] == "/opt/py"
    assert os.stat(code / "target/release/bot").st_mode & 0o111  # compiled binaries made executable
    assert set(RUNTIMES) == {"python3.11", "nodejs20", "rust", "cpp", "dotnet8", "scala3", "haskell"}


@pytest.mark.parametrize("runtime,entry,match", [
    ("cobol", "main.py", "unknown runtime 'cobol'"),
    ("python3.11", "../main.py", "'..'"),
    ("python3.11", "a/../../main.py", "'..'"),
    ("python3.11", "/etc/passwd", "absolute"),
    ("python3.11", "main.py; rm -rf /", "characters"),
    ("python3.11", "$(id).py", "characters"),
    ("python3.11", "", "empty"),
    ("python3.11", "missing.py", "not found in the code archive"),
    ("python3.11", "index.js", "does not fit runtime python3.11"),
    ("scala3", "bot.jar:not a class", "not a Java class name"),
    ("rust", "sub", "not found"),
])
def test_bad_runtime_or_entrypoint_is_a_clear_error(code, runtime, entry, match):
    (code / "main.py").write_text("")
    (code / "index.js").write_text("")
    (code / "bot.jar").write_text("")
    (code / "sub").mkdir()
    with pytest.raises(EntrypointError, match=match):
        command_for(runtime, entry, code)


def test_entry_symlink_out_of_code_dir_is_refused(code, tmp_path):
    (tmp_path / "outside.py").write_text("")
    os.symlink(tmp_path / "outside.py", code / "main.py")
    with pytest.raises(EntrypointError, match="outside the code dir"):
        command_for("python3.11", "main.py", code)


def test_script_execs_with_quoting(tmp_path):
    s = script_for(["/a b/bin", "it's", "$HOME"], tmp_path / "c d")
    assert s.startswith("#!/bin/sh\n")
    assert "exec '/a b/bin' 'it'\"'\"'s' '$HOME'\n" in s
    assert f"cd '{tmp_path}/c d' || exit 1" in s


# -- Python runs for real --------------------------------------------------------------------------------

def test_python_main_runs_with_bot_id_and_config(code, tmp_path):
    out = tmp_path / "out.json"
    (code / "helper.py").write_text("VALUE = 42\n")
    (code / "main.py").write_text(
        "import json, helper\n"
        "def main(bot_id, config):\n"
        f"    open({str(out)!r}, 'w').write(json.dumps({{'id': bot_id, 'config': config, 'v': helper.VALUE}}))\n"
        "    print('traded')\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text()) == {"id": "bot-1", "config": {"symbol": "BTC", "n": 3}, "v": 42}
    assert p.stdout == "traded\n"


def test_python_exception_exits_1_with_traceback(code):
    (code / "main.py").write_text("def main(bot_id, config):\n    raise ValueError('exchange down')\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 1
    assert "Traceback" in p.stderr and "ValueError: exchange down" in p.stderr


def test_python_error_status_exits_1_and_async_main_is_awaited(code):
    (code / "main.py").write_text("def main(bot_id, config):\n    return {'status': 'error', 'message': 'no funds'}\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 1 and "no funds" in p.stderr

    (code / "main.py").write_text("async def main(bot_id, config):\n    print('async', bot_id)\n    return {'status': 'ok'}\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 0 and p.stdout == "async bot-1\n"


def test_python_missing_main_and_bad_config_exit_1(code):
    (code / "main.py").write_text("x = 1\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 1 and "defines no main(bot_id, config)" in p.stderr

    (code / "main.py").write_text("def main(bot_id, config):\n    pass\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code, {"BOT_CONFIG": "{nope"})
    assert p.returncode == 1 and "BOT_CONFIG is not valid JSON" in p.stderr


def test_written_script_runs_python_bot_via_sh(code, tmp_path):
    out = tmp_path / "ran"
    (code / "bots").mkdir()
    (code / "bots/main.py").write_text(f"import os\ndef main(bot_id, config):\n    open({str(out)!r}, 'w').write(os.getcwd())\n")
    script = tmp_path / "var/the0/entrypoint.sh"
    write_entrypoint("python3.11", "bots/main.py", code, script, python=sys.executable)
    assert os.stat(script).st_mode & 0o777 == 0o755
    p = run([str(script)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert out.read_text() == str(code)  # runs in the code dir


# -- a compiled binary runs for real ---------------------------------------------------------------------

def test_gcc_built_binary_runs(code, tmp_path):
    src = tmp_path / "bot.c"
    src.write_text(
        '#include <stdio.h>\n#include <stdlib.h>\n'
        'int main(void) { printf("cpp bot %s\\n", getenv("BOT_ID")); return 3; }\n')
    binary = code / "build" / "bot"
    binary.parent.mkdir()
    subprocess.run([shutil.which("gcc") or "gcc", "-O1", "-o", str(binary), str(src)], check=True)
    os.chmod(binary, 0o644)  # as if it came out of a zip without its exec bit
    argv = command_for("cpp", "build/bot", code)
    p = run(argv, code)
    assert p.returncode == 3 and p.stdout == "cpp bot bot-1\n"

    script = tmp_path / "entry.sh"
    write_entrypoint("cpp", "build/bot", code, script)
    p = run(["/bin/sh", str(script)], tmp_path)
    assert p.returncode == 3 and p.stdout == "cpp bot bot-1\n"


def test_node_bot_runs_when_node_is_present(code):
    node = shutil.which("node")
    assert node, "node is installed on the CI machines (apt nodejs)"
    (code / "index.js").write_text("console.log('node bot ' + process.env.BOT_ID)\n")
    p = run(command_for("nodejs20", "index.js", code, node=node), code)
    assert p.returncode == 0 and p.stdout == "node bot bot-1\n"


def test_python_vendor_dir_is_importable(code):
    (code / "vendor/exchange").mkdir(parents=True)
    (code / "vendor/exchange/__init__.py").write_text("NAME = 'vendored'\n")
    (code / "main.py").write_text("import exchange\ndef main(bot_id, config):\n    print(exchange.NAME)\n")
    p = run(command_for("python3.11", "main.py", code, python=sys.executable), code)
    assert p.returncode == 0 and p.stdout == "vendored\n", p.stderr


# -- the script as a container's whole command (Kubernetes) and under bootstrap.sh ------------------------

TERM_BOT = '''
import os, signal, sys, time
def main(bot_id, config):
    print("env has THE0_SUPERVISED:", "THE0_SUPERVISED" in os.environ, flush=True)
    if not config.get("wait"):
        return {"status": "error", "message": "failed on purpose"}
    signal.signal(signal.SIGTERM, lambda s, f: (print("stopping", flush=True), sys.exit(9)))
    print("ready", flush=True)
    while True:
        time.sleep(0.05)  # wait-ok: idles until signalled
'''


def test_standalone_script_logs_writes_done_file_and_forwards_term(code, tmp_path):
    from tests.servers._util import wait_for

    (code / "main.py").write_text(TERM_BOT)
    logs = tmp_path / "logs"
    script = tmp_path / "entrypoint.sh"
    write_entrypoint("python3.11", "main.py", code, script, logs_dir=logs, python=sys.executable)

    p = run(["/bin/sh", str(script)], tmp_path)
    assert p.returncode == 1 and p.stdout == ""
    assert "failed on purpose" in (logs / "bot.log").read_text()
    assert (logs / ".done").read_text() == "1\n"

    env = {"PATH": os.environ["PATH"], "BOT_ID": "b", "BOT_CONFIG": '{"wait": true}'}
    proc = subprocess.Popen(["/bin/sh", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "ready" in (logs / "bot.log").read_text(), 30, what="the bot to start")
        assert not (logs / ".done").exists()  # removed at start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping" in (logs / "bot.log").read_text()
    assert (logs / ".done").read_text() == "9\n"


def test_supervised_script_just_execs_the_bot(code, tmp_path):
    (code / "main.py").write_text(TERM_BOT)
    logs = tmp_path / "logs"
    script = tmp_path / "entrypoint.sh"
    write_entrypoint("python3.11", "main.py", code, script, logs_dir=logs, python=sys.executable)
    p = run(["/bin/sh", str(script)], tmp_path, {"THE0_SUPERVISED": "1"})
    assert p.returncode == 1
    assert p.stdout == "env has THE0_SUPERVISED: False\n"
    assert not logs.exists()
