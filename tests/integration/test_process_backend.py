"""The process backend with real bot processes: start, logs, environment, exits, stop, adoption, pid reuse, runs.

Bots are real python3.11 bots (``main(bot_id, config)``) zipped into a real local object store; every
process the tests start is found again through /proc and killed by pid at the end.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
import zipfile
from pathlib import Path

import pytest

from actors.backends.base import KIND_REALTIME, KIND_SCHEDULED, BackendError, Handle, RunSpec, TaskNotFound
from actors.backends.proc_reaper import ProcReaper, parse_ref, proc_stat, start_ticks
from actors.backends.process import REASON_ADOPTED, REASON_PID_REUSED, ProcessBackend, tail_lines
from actors.messages import BotDefinition
from daemon.layout import CODE_BUCKET, STATE_BUCKET, run_id_for, state_key
from daemon.storage_local import LocalObjectStore
from tests.servers._util import wait_for

REPO = Path(__file__).resolve().parents[2]

BOT_MAIN = r'''
import json, os, signal, sys, time

def main(bot_id, config):
    state = os.environ["STATE_DIR"]
    with open(os.path.join(state, "env.json"), "w") as f:
        json.dump(sorted(os.environ), f)
    mode = config.get("mode", "loop")
    if mode == "fail":
        print("failing on purpose", flush=True)
        sys.exit(int(config.get("code", 3)))
    if mode == "once":
        runs = 0
        p = os.path.join(state, "runs.json")
        if os.path.exists(p):
            runs = json.load(open(p))["runs"]
        with open(p + ".tmp", "w") as f:
            json.dump({"runs": runs + 1}, f)
        os.replace(p + ".tmp", p)
        print(f"run done {runs + 1}", flush=True)
        return
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
    if mode == "with_child":
        import subprocess
        child = subprocess.Popen(["sleep", "300"])
        with open(os.path.join(state, "child.pid"), "w") as f:
            f.write(str(child.pid))
    if mode == "term_ok":
        def bye(*a):
            print("got SIGTERM, bye", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
    n = 0
    while True:
        n += 1
        with open(os.path.join(state, "state.json.tmp"), "w") as f:
            json.dump({"n": n}, f)
        os.replace(os.path.join(state, "state.json.tmp"), os.path.join(state, "state.json"))
        print(f"tick {n}", flush=True)
        time.sleep(0.2)  # wait-ok: the bot paces its own loop
'''

CODE_FILE = "tests/process-bot.zip"
SECRET_ENV = {
    "MINIO_ENDPOINT": "127.0.0.1:1",
    "MINIO_SECRET_KEY": "must-not-leak",
    "NATS_URL": "nats://127.0.0.1:1",
    "MONGO_URI": "mongodb://127.0.0.1:1",
    "AWS_SECRET_ACCESS_KEY": "must-not-leak",
    "THE0_SOMETHING": "runtime-only",
}
ALLOWED_ENV = {"PATH", "HOME", "LANG", "TZ", "BOT_ID", "BOT_CONFIG", "STATE_DIR", "CODE_MOUNT_DIR", "BOT_TYPE",
               "LOGS_DIR", "LC_CTYPE", "PWD"}  # LC_CTYPE may be added by Python's UTF-8 coercion in the child


# --- helpers ---------------------------------------------------------------------------------------------


def make_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def bot_def(bot_id: str, kind: str = "realtime", **config) -> BotDefinition:
    if kind == "scheduled":
        config.setdefault("schedule", "* * * * *")
    doc = {
        "id": bot_id,
        "config": config,
        "custom": {"version": "1.0.0", "filePath": CODE_FILE,
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }
    return BotDefinition.from_document(doc, kind)


def pids_with_bot_id(bot_id: str) -> list[int]:
    """Every live (non-zombie) process whose environment has BOT_ID=<bot_id>: counts a bot's processes."""
    needle = f"BOT_ID={bot_id}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            st = proc_stat(int(d))
            if st is not None and not st.zombie:
                found.append(int(d))
    return found


class Exits:
    """The watch callback: records every reported exit; tests wait on it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: list[tuple[Handle, object]] = []
        self.threads: set[str] = set()

    def __call__(self, handle, result):
        with self.lock:
            self.items.append((handle, result))
            self.threads.add(threading.current_thread().name)

    def for_ref(self, ref: str):
        with self.lock:
            return [r for h, r in self.items if h.ref == ref]

    def wait_one(self, ref: str, timeout: float = 20.0):
        return wait_for(lambda: self.for_ref(ref), timeout=timeout, what=f"exit of {ref}")[0]


@pytest.fixture
def store(tmp_path):
    s = LocalObjectStore(tmp_path / "objects")
    s.put_bytes(CODE_BUCKET, CODE_FILE, make_zip({"main.py": BOT_MAIN}))
    return s


@pytest.fixture
def prefix():
    """A unique bot id prefix; every process carrying it is killed after the test."""
    p = f"pb{uuid.uuid4().hex[:8]}"
    yield p
    for pid in _pids_with_prefix(p):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _pids_with_prefix(prefix: str) -> list[int]:
    needle = f"BOT_ID={prefix}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError:
                continue
            if any(v.startswith(needle) for v in env.split(b"\0")):
                out.append(int(d))
    return out


@pytest.fixture
def make_backend(tmp_path, store):
    made = []

    def make(data_dir: Path | None = None, **kw) -> tuple[ProcessBackend, Exits]:
        kw.setdefault("stop_grace", 5.0)
        b = ProcessBackend(data_dir or tmp_path / "data", store, **kw)
        ex = Exits()
        b.watch(ex)
        made.append(b)
        return b, ex

    yield make
    for b in made:
        b.close()


def wait_running(b: ProcessBackend, h: Handle) -> None:
    wait_for(lambda: b.inspect(h).running and any("tick" in ln for ln in b.logs(h, 5)), timeout=20,
             what=f"bot {h.bot_id} running and printing")


# --- tests -----------------------------------------------------------------------------------------------


def test_start_runs_one_process_logs_to_file_and_env_is_clean(make_backend, prefix, tmp_path, monkeypatch):
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    b, _ = make_backend()
    bot_id = f"{prefix}-a"
    h = b.start(RunSpec(bot_def(bot_id, symbol="BTC")))
    assert h.kind == KIND_REALTIME and h.bot_id == bot_id
    pid, ticks = parse_ref(h.ref)
    assert start_ticks(pid) == ticks
    wait_running(b, h)

    # Output goes to the bot's own log file (a file, not a pipe of the runtime).
    log_file = tmp_path / "data" / "bots" / bot_id / "logs" / "bot.log"
    assert "tick" in log_file.read_text()
    assert os.readlink(f"/proc/{pid}/fd/1") == str(log_file)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(log_file)
    # Own session and process group.
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid

    # Exactly one process per bot: the argv is exec'd directly.
    assert pids_with_bot_id(bot_id) == [pid]

    # Environment: only the bot's variables, never the runtime's credentials.
    env_file = tmp_path / "data" / "bots" / bot_id / "state" / "env.json"
    keys = set(wait_for(lambda: json.loads(env_file.read_text()), what="env.json"))
    assert not [k for k in keys if k.startswith(("MINIO_", "NATS_", "MONGO_", "AWS_", "THE0_"))], keys
    assert keys <= ALLOWED_ENV, keys - ALLOWED_ENV
    environ = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if kv)
    assert environ[b"BOT_TYPE"] == b"realtime"
    assert json.loads(environ[b"BOT_CONFIG"]) == {"symbol": "BTC"}
    assert environ[b"STATE_DIR"].decode() == str(env_file.parent)

    # Idempotent: starting it again returns the same process.
    assert b.start(RunSpec(bot_def(bot_id, symbol="BTC"))).ref == h.ref
    assert pids_with_bot_id(bot_id) == [pid]

    # task.json names the process.
    rec = json.loads((tmp_path / "data" / "bots" / bot_id / "task.json").read_text())
    assert (rec["pid"], rec["start_time"], rec["bot_id"], rec["kind"]) == (pid, ticks, bot_id, "realtime")
    assert [x.ref for x in b.list_managed()] == [h.ref]

    wait_for(lambda: len(b.logs(h, 3)) == 3, what="three log lines")
    lines = b.logs(h, tail=3)
    assert len(lines) == 3 and all(ln.startswith("tick ") for ln in lines)


def test_kill_9_reports_one_exit_with_signal_and_final_sync(make_backend, prefix, store, tmp_path):
    b, exits = make_backend()
    h = b.start(RunSpec(bot_def(f"{prefix}-k")))
    wait_running(b, h)
    pid, _ = parse_ref(h.ref)
    os.kill(pid, signal.SIGKILL)
    res = exits.wait_one(h.ref)
    assert res.signal == 9 and res.code == 137
    assert "SIGKILL" in res.reason
    # Reaped (no zombie), record gone, state uploaded by the final sync.
    assert proc_stat(pid) is None or proc_stat(pid).start_ticks != parse_ref(h.ref)[1]
    assert not (tmp_path / "data" / "bots" / h.bot_id / "task.json").exists()
    assert store.exists(STATE_BUCKET, state_key(h.bot_id))
    st = b.inspect(h)
    assert not st.running and st.exit.signal == 9
    assert b.list_managed() == []

    # "Once": a second bot's exit goes through the same single notifier after the first; still one report.
    h2 = b.start(RunSpec(bot_def(f"{prefix}-k2")))
    wait_running(b, h2)
    os.kill(parse_ref(h2.ref)[0], signal.SIGKILL)
    exits.wait_one(h2.ref)
    assert len(exits.for_ref(h.ref)) == 1
    assert len(exits.threads) == 1  # delivered from one thread


def test_failing_bot_reports_its_exit_code(make_backend, prefix):
    b, exits = make_backend()
    h = b.start(RunSpec(bot_def(f"{prefix}-f", mode="fail", code=3)))
    res = exits.wait_one(h.ref)
    assert res.code == 3 and res.signal is None
    assert "failing on purpose" in "\n".join(b.logs(h, 20))
    b.remove(h)  # realtime: the state dir stays
    assert (b.data_dir / "bots" / h.bot_id / "state" / "env.json").exists()


def test_stop_sends_sigterm_to_the_group(make_backend, prefix, store):
    b, exits = make_backend()
    h = b.start(RunSpec(bot_def(f"{prefix}-t", mode="term_ok")))
    wait_running(b, h)
    res = b.stop(h, grace=10)
    assert res is not None and res.code == 0 and res.signal is None
    assert "got SIGTERM, bye" in "\n".join(b.logs(h, 5))
    assert pids_with_bot_id(h.bot_id) == []
    assert store.exists(STATE_BUCKET, state_key(h.bot_id))  # final sync happened before stop returned
    # A stopped task is not reported to the watch callback (stop returned its exit).
    assert exits.for_ref(h.ref) == []
    # Stopping again is harmless and tells the same exit.
    assert b.stop(h, grace=1).code == 0

    h2 = b.start(RunSpec(bot_def(f"{prefix}-t2")))  # default SIGTERM action: killed by signal 15
    wait_running(b, h2)
    res2 = b.stop(h2, grace=10)
    assert res2.signal == signal.SIGTERM and res2.code == 128 + signal.SIGTERM


def test_stop_kills_a_bot_ignoring_sigterm_after_grace(make_backend, prefix):
    b, _ = make_backend()
    h = b.start(RunSpec(bot_def(f"{prefix}-i", mode="ignore_term")))
    wait_running(b, h)
    res = b.stop(h, grace=0.5)
    assert res.signal == signal.SIGKILL
    assert "ignoring SIGTERM" in "\n".join(b.logs(h, 50))
    assert pids_with_bot_id(h.bot_id) == []


def test_leftover_children_of_a_dead_bot_are_killed(make_backend, prefix, tmp_path):
    b, exits = make_backend()
    h = b.start(RunSpec(bot_def(f"{prefix}-c", mode="with_child")))
    wait_running(b, h)
    child_file = tmp_path / "data" / "bots" / h.bot_id / "state" / "child.pid"
    child = int(wait_for(lambda: child_file.read_text().strip(), what="child pid"))
    child_ticks = start_ticks(child)
    assert os.getpgid(child) == parse_ref(h.ref)[0]  # in the bot's process group
    os.kill(parse_ref(h.ref)[0], signal.SIGKILL)  # only the leader dies...
    assert exits.wait_one(h.ref).signal == 9
    # ...and what it left in its group is killed with it (like a container's processes).
    wait_for(lambda: (proc_stat(child) is None or proc_stat(child).zombie
                      or proc_stat(child).start_ticks != child_ticks), what="the bot's child killed")


def test_second_instance_adopts_without_duplicating(make_backend, prefix, tmp_path):
    b1, exits1 = make_backend()
    h = b1.start(RunSpec(bot_def(f"{prefix}-ad")))
    wait_running(b1, h)
    pid, _ = parse_ref(h.ref)
    b1.close()  # the runtime goes away; the bot keeps running
    assert pids_with_bot_id(h.bot_id) == [pid]

    b2, exits2 = make_backend()
    adopted = b2.list_managed()
    assert [x.ref for x in adopted] == [h.ref]
    assert adopted[0] == h  # same handle: bot, kind, ref, config hash, start time
    assert b2.start(RunSpec(bot_def(h.bot_id))).ref == h.ref  # and start() is idempotent across instances
    assert b2.list_managed() == adopted  # listing again changes nothing
    assert pids_with_bot_id(h.bot_id) == [pid]
    assert b2.inspect(h).running

    # LogShip/StateSync resumed: the bot keeps writing; its exit is reported by the second instance.
    os.kill(pid, signal.SIGKILL)
    res = exits2.wait_one(h.ref)
    # Still this test process's child (both instances live in one process), so the code is known here;
    # test_runtime_killed_bot_adopted covers a real runtime restart, where it is not.
    assert res.signal == 9
    assert exits1.for_ref(h.ref) == []
    assert not (tmp_path / "data" / "bots" / h.bot_id / "task.json").exists()


RUNTIME_SCRIPT = r'''
import sys, time
from pathlib import Path
from actors.backends.base import RunSpec
from actors.backends.process import ProcessBackend
from actors.messages import BotDefinition
from daemon.storage_local import LocalObjectStore
data, objects, doc = sys.argv[1], sys.argv[2], sys.argv[3]
import json
b = ProcessBackend(Path(data), LocalObjectStore(objects))
h = b.start(RunSpec(BotDefinition.from_document(json.loads(doc), "realtime")))
print(h.ref, flush=True)
while True:
    time.sleep(60)  # wait-ok: this stand-in runtime idles until the test kills it -9
'''


def test_runtime_killed_bot_adopted(make_backend, prefix, tmp_path, store):
    """A real runtime process is killed -9: its bot survives, and the next runtime adopts it."""
    bot_id = f"{prefix}-rt"
    doc = {"id": bot_id, "config": {}, "custom": {"version": "1", "filePath": CODE_FILE,
                                                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}
    rt = subprocess.Popen(
        [sys.executable, "-c", RUNTIME_SCRIPT, str(tmp_path / "data"), str(store.root), json.dumps(doc)],
        cwd=str(REPO), stdout=subprocess.PIPE, start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        ref = rt.stdout.readline().decode().strip()
        assert ref, "runtime did not start the bot"
        os.kill(rt.pid, signal.SIGKILL)
        rt.wait(10)
    finally:
        if rt.poll() is None:
            rt.kill()
            rt.wait(10)
    pid, _ = parse_ref(ref)
    log_file = tmp_path / "data" / "bots" / bot_id / "logs" / "bot.log"
    size = log_file.stat().st_size
    wait_for(lambda: log_file.stat().st_size > size, what="the bot still logging after its runtime died")
    assert pids_with_bot_id(bot_id) == [pid]

    b, exits = make_backend()
    assert [h.ref for h in b.list_managed()] == [ref]
    assert pids_with_bot_id(bot_id) == [pid]
    h = b.list_managed()[0]
    os.kill(pid, signal.SIGKILL)
    res = exits.wait_one(ref)
    assert res.code is None and res.reason == REASON_ADOPTED
    assert len(exits.for_ref(ref)) == 1
    # The adopted bot's log lines, written while no runtime ran, were shipped by the resumed LogShip.
    wait_for(lambda: list(store.list("bot-logs", f"logs/{bot_id}/")), what="log objects shipped")
    # A fresh instance learns the end from exit.json; a ref nobody recorded is not found.
    fresh, _ = make_backend()
    st = fresh.inspect(h)
    assert not st.running and st.exit.code is None and st.exit.reason == REASON_ADOPTED
    with pytest.raises(TaskNotFound):
        fresh.inspect(Handle(bot_id=bot_id, kind=KIND_REALTIME, ref="4000001:5"))


def test_stop_an_adopted_bot(make_backend, prefix, tmp_path, store):
    """stop() on a process that is not our child (its runtime died): SIGTERM to its group, exit code unknown."""
    bot_id = f"{prefix}-as"
    doc = {"id": bot_id, "config": {"mode": "term_ok"}, "custom": {"version": "1", "filePath": CODE_FILE,
           "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}
    rt = subprocess.Popen(
        [sys.executable, "-c", RUNTIME_SCRIPT, str(tmp_path / "data"), str(store.root), json.dumps(doc)],
        cwd=str(REPO), stdout=subprocess.PIPE, start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        ref = rt.stdout.readline().decode().strip()
        assert ref, "runtime did not start the bot"
    finally:
        os.kill(rt.pid, signal.SIGKILL)
        rt.wait(10)
    b, exits = make_backend()
    h = Handle(bot_id=bot_id, kind=KIND_REALTIME, ref=ref)  # the actor's handle, not yet listed: stop adopts it
    wait_for(lambda: any("tick" in ln for ln in b.logs(h, 5)), what="bot running")
    res = b.stop(h, grace=10)
    assert res.code is None and res.reason == "stopped by the runtime"
    assert "got SIGTERM, bye" in "\n".join(b.logs(h, 5))
    assert pids_with_bot_id(bot_id) == []
    assert exits.for_ref(ref) == []
    assert not (tmp_path / "data" / "bots" / bot_id / "task.json").exists()


def test_stale_record_and_pid_reuse_guard(make_backend, prefix, tmp_path):
    # A live process that is not the bot: in its own session, so a killpg of its pid would hit it.
    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        ticks = start_ticks(victim.pid)
        bot_id = f"{prefix}-reuse"
        d = tmp_path / "data" / "bots" / bot_id
        d.mkdir(parents=True)
        (d / "task.json").write_text(json.dumps({
            "version": 1, "pid": victim.pid, "start_time": ticks + 12345, "bot_id": bot_id, "kind": "realtime",
            "run_id": None, "config_hash": "x", "started_at": 1.0}))
        gone = f"{prefix}-gone"
        g = tmp_path / "data" / "bots" / gone
        g.mkdir(parents=True)
        (g / "task.json").write_text(json.dumps({
            "version": 1, "pid": 4_000_000, "start_time": 1, "bot_id": gone, "kind": "realtime",
            "run_id": None, "config_hash": "x", "started_at": 1.0}))

        b, exits = make_backend()
        fake = Handle(bot_id=bot_id, kind=KIND_REALTIME, ref=f"{victim.pid}:{ticks + 12345}")
        assert b.stop(fake, grace=0) is None  # not adopted, not signalled
        assert b.list_managed() == []
        res = exits.wait_one(fake.ref)
        assert res.code is None and res.reason == REASON_PID_REUSED
        assert exits.wait_one("4000000:1").code is None
        wait_for(lambda: not (d / "task.json").exists() and not (g / "task.json").exists(), what="records removed")
        assert b.list_managed() == []
        assert len(exits.for_ref(fake.ref)) == 1
        assert victim.poll() is None and proc_stat(victim.pid).start_ticks == ticks
        assert not b.inspect(fake).running
    finally:
        victim.kill()
        victim.wait(10)


def test_run_once_exits_zero_and_is_idempotent_by_run_id(make_backend, prefix, store, tmp_path):
    b, exits = make_backend()
    sched = bot_def(f"{prefix}-s", kind="scheduled", mode="once")
    run_id = run_id_for(sched.id, 1_700_000_000)
    h = b.run_once(RunSpec(sched, run_id=run_id, scheduled_at=1_700_000_000))
    assert h.kind == KIND_SCHEDULED and h.run_id == run_id
    res = exits.wait_one(h.ref)
    assert res.code == 0 and res.signal is None
    assert "run done 1" in b.logs(h, 5)
    assert (tmp_path / "data" / "runs" / run_id / "logs" / "bot.log").exists()
    env = json.loads((tmp_path / "data" / "bots" / sched.id / "state" / "env.json").read_text())
    assert "BOT_TYPE" in env
    assert store.exists(STATE_BUCKET, state_key(sched.id))

    # The same run id again: not run twice; its end is reported again.
    h_again = b.run_once(RunSpec(sched, run_id=run_id, scheduled_at=1_700_000_000))
    assert h_again.ref == h.ref
    wait_for(lambda: len(exits.for_ref(h.ref)) == 2, what="second report")
    assert b.logs(h, 50).count("run done 1") == 1

    # A new run shares the schedule's state: the count goes on.
    run2 = run_id_for(sched.id, 1_700_000_060)
    h2 = b.run_once(RunSpec(sched, run_id=run2, scheduled_at=1_700_000_060))
    assert exits.wait_one(h2.ref).code == 0
    assert "run done 2" in b.logs(h2, 5)

    b.remove(h)
    assert not (tmp_path / "data" / "runs" / run_id).exists()
    b.remove(h)  # already gone: no error


def test_start_rejects_bad_input(make_backend, prefix, store):
    b, _ = make_backend()
    with pytest.raises(ValueError):
        b.start(RunSpec(bot_def(f"{prefix}-x"), run_id="r1"))
    with pytest.raises(ValueError):
        b.run_once(RunSpec(bot_def(f"{prefix}-x", kind="scheduled")))
    missing = BotDefinition.from_document({"id": f"{prefix}-m", "custom": {"filePath": "nope.zip", "config": {
        "runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}, "realtime")
    with pytest.raises(BackendError):
        b.start(RunSpec(missing))
    assert b.list_managed() == []


def test_tail_lines_reads_from_the_end(tmp_path):
    p = tmp_path / "big.log"
    with open(p, "w") as f:
        for i in range(20000):
            f.write(f"line {i}\n")
        f.write("partial")
    assert tail_lines(p, 3, block=100) == ["line 19998", "line 19999", "partial"]
    assert tail_lines(p, 0) == []
    assert tail_lines(tmp_path / "absent", 5) == []
    assert len(tail_lines(p, 50000)) == 20001


def test_reaper_watches_many_processes_with_one_thread():
    """50 processes, one watcher thread: each exit reported once with its status, no zombie left."""
    got: dict[str, object] = {}
    lock = threading.Lock()

    def on_exit(key, pe):
        with lock:
            assert key not in got
            got[key] = pe

    reaper = ProcReaper(on_exit)
    procs = []
    ticks = {}
    try:
        threads_before = threading.active_count()
        for i in range(50):
            p = subprocess.Popen(["sleep", "300"], start_new_session=True)
            procs.append(p)
            ticks[p.pid] = start_ticks(p.pid)
            assert reaper.watch(f"k{i}", p.pid, ticks[p.pid])
        assert threading.active_count() == threads_before
        # A wrong start time is another process: not watched, not signalled.
        assert not reaper.watch("wrong", procs[0].pid, start_ticks(procs[0].pid) + 1)
        assert not reaper.signal_group("wrong", signal.SIGKILL)
        for i, p in enumerate(procs):
            if i % 2:
                assert reaper.signal_group(f"k{i}", signal.SIGTERM)
            else:
                os.kill(p.pid, signal.SIGKILL)
        wait_for(lambda: len(got) == 50, what="50 exits")
        for i, p in enumerate(procs):
            pe = got[f"k{i}"]
            assert pe.known and pe.signal == (signal.SIGTERM if i % 2 else signal.SIGKILL)
            st = proc_stat(p.pid)
            assert st is None or st.start_ticks != ticks[p.pid]  # reaped: no zombie left
            p.returncode = pe.code
        assert reaper.keys() == []
    finally:
        reaper.close()
        for p in procs:
            if p.returncode is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
