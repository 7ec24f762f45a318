"""The embedded ``process`` backend (the default): every bot is one local process in its own session.

Layout under ``data_dir``::

    bots/<bot id>/       a realtime bot (and a schedule's shared state dir)
        code/            extracted code (daemon.init.prepare)
        state/           the bot's state dir, mirrored to object storage by StateSync
        logs/bot.log     the bot's stdout+stderr (an O_APPEND file descriptor, never a pipe of the runtime)
        work/            the daemon's checkpoints (LogShip offsets, state digests)
        task.json        the live process: {pid, start_time (clock ticks), bot_id, kind, run_id, ...}
        exit.json        how the last process ended
    runs/<run id>/       one scheduled run: code/ logs/ work/ task.json exit.json;
                         its state dir is bots/<schedule id>/state

A bot costs exactly one process: ``daemon.init.prepare`` restores code and state and returns the bot's argv,
which is exec'd directly (no shell, no wrapper) with a minimal environment (never the runtime's: no object
store, NATS or database credentials). The daemon's StateSync and LogShip for the bot run embedded in this
process (``daemon.sync.BotSync``).

Exits come from ``ProcReaper`` (one thread, pidfds in one epoll set). The final sync of an exited bot runs
on a small worker pool; then ``task.json`` goes, and the exit is delivered to the ``watch`` callback from
one notifier thread. A task ended by ``stop()`` is not reported to the callback: ``stop()`` returns its
exit (an actor replacing its bot must not mistake the old process's end for the new one's).

A runtime that dies leaves its bots running: ``list_managed()`` of the next runtime adopts every process
whose pid *and* start time match its ``task.json`` (pid reuse never fools it), and reports the exit
(code unknown) of the ones that ended while it was away.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from actors.backends.base import (
    KIND_REALTIME,
    KIND_SCHEDULED,
    Backend,
    BackendError,
    Capabilities,
    ExitCallback,
    ExitResult,
    Handle,
    RunSpec,
    TaskNotFound,
    TaskState,
)
from actors.backends.proc_reaper import ProcExit, ProcReaper, is_alive, make_ref, parse_ref, proc_stat
from daemon.jsonlog import event
from daemon.layout import BOT_LOG_FILE, check_bot_id
from daemon.storage import ObjectStore

log = logging.getLogger("the0.backend.process")

RECORD_FILE = "task.json"
EMBEDDED_LOG_POLL = 10.0
EXIT_FILE = "exit.json"
RECORD_VERSION = 1
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

REASON_AWAY = "exited while the runtime was away (code unknown)"
REASON_ADOPTED = "exited while adopted (code unknown)"
REASON_PID_REUSED = "exited while the runtime was away; its pid now belongs to another process"
REASON_STOPPED = "stopped by the runtime"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return run_id


# --- paths and records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPaths:
    """Where one task's files live. ``state`` is shared by every run of a schedule."""

    key: str
    root: Path
    code: Path
    state: Path
    logs: Path
    work: Path

    @property
    def log_file(self) -> Path:
        return self.logs / BOT_LOG_FILE

    @property
    def record(self) -> Path:
        return self.root / RECORD_FILE

    @property
    def exit_file(self) -> Path:
        return self.root / EXIT_FILE

    def make(self) -> None:
        for d in (self.root, self.code, self.state, self.logs, self.work):
            d.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class TaskRecord:
    """The contents of task.json: enough to find the process again after a runtime restart."""

    pid: int
    start_time: int  # /proc/<pid>/stat field 22 (clock ticks after boot)
    bot_id: str
    kind: str
    run_id: str | None
    config_hash: str
    started_at: float

    @property
    def ref(self) -> str:
        return make_ref(self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "pid": self.pid,
            "start_time": self.start_time,
            "bot_id": self.bot_id,
            "kind": self.kind,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, d: Any) -> "TaskRecord":
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        kind = d.get("kind")
        if kind not in (KIND_REALTIME, KIND_SCHEDULED):
            raise ValueError(f"unknown kind {kind!r}")
        run_id = d.get("run_id")
        if kind == KIND_SCHEDULED:
            check_run_id(run_id)
        pid, start = int(d["pid"]), int(d["start_time"])
        if pid <= 1 or start < 0:
            raise ValueError(f"bad pid/start_time {pid}/{start}")
        return cls(
            pid=pid,
            start_time=start,
            bot_id=check_bot_id(d.get("bot_id")),
            kind=kind,
            run_id=run_id if kind == KIND_SCHEDULED else None,
            config_hash=str(d.get("config_hash") or ""),
            started_at=float(d.get("started_at") or 0.0),
        )

    def handle(self, paths: TaskPaths) -> Handle:
        return Handle(
            bot_id=self.bot_id,
            kind=self.kind,
            ref=self.ref,
            config_hash=self.config_hash,
            run_id=self.run_id,
            started_at=self.started_at,
            meta={"pid": str(self.pid), "dir": str(paths.root), "log_file": str(paths.log_file)},
        )


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    # No fsync: the rename is atomic against a crash of this process, and a power loss ends the bots
    # too (after a reboot the pid + start-time check finds them gone either way).
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def tail_lines(path: Path, n: int, block: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a file, reading backwards from its end in blocks (the file may be huge)."""
    if n <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0 and buf.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    lines = buf.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln.decode("utf-8", "replace") for ln in lines[-n:]]


# --- in-memory task state --------------------------------------------------------------------------------


class _Task:
    """One process the backend watches (own child or adopted), from start to its final sync."""

    def __init__(self, paths: TaskPaths, record: TaskRecord, popen: subprocess.Popen | None = None):
        self.paths = paths
        self.record = record
        self.handle = record.handle(paths)
        self.popen = popen
        self.sync: Any = None  # daemon.sync.BotSync
        self.stopping = False
        self.exited = threading.Event()  # the process is gone; ``result`` is set
        self.finished = threading.Event()  # final sync done, task.json removed
        self.result: ExitResult | None = None

    @property
    def key(self) -> str:
        return self.paths.key


class _Notifier:
    """Delivers exits to the ``watch`` callback from one thread, holding them until a callback is set."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: list[tuple[Handle, ExitResult]] = []
        self._callback: ExitCallback | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="process-exits", daemon=True)
        self._thread.start()

    def set_callback(self, cb: ExitCallback) -> None:
        with self._cv:
            self._callback = cb
            self._cv.notify()

    def put(self, handle: Handle, result: ExitResult) -> None:
        with self._cv:
            self._pending.append((handle, result))
            self._cv.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (self._callback is None or not self._pending):
                    self._cv.wait()
                if self._callback is None or not self._pending:
                    return  # closed
                handle, result = self._pending.pop(0)
                cb = self._callback
            try:
                cb(handle, result)
            except Exception as e:  # noqa: BLE001 - a listener's error is logged, never fatal
                event(log, "process.exit_callback_failed", logging.ERROR, exc_info=True, bot_id=handle.bot_id,
                      error=str(e))


# --- the backend ---------------------------------------------------------------------------------------


class ProcessBackend(Backend):
    """Bots as local process groups under ``data_dir``; see the module docstring."""

    name = "process"
    capabilities = Capabilities(restarts_bots=False, fires_schedules=False)

    def __init__(
        self,
        data_dir: str | os.PathLike,
        store: ObjectStore,
        publish: Callable[[str, bytes], None] | None = None,
        clock: Any = None,
        stop_grace: float = 15.0,
        sync_deadline: float = 10.0,
        finish_workers: int = 4,
        programs: dict[str, str] | None = None,
    ):
        self.data_dir = Path(data_dir).absolute()
        self.store = store
        self.publish = publish
        self.clock = clock
        self.stop_grace = stop_grace
        self.sync_deadline = sync_deadline
        # Interpreters for daemon.entrypoints.command_for (python, node, dotnet, java).
        self.programs = dict(programs or {})
        self.programs.setdefault("python", find_python())
        (self.data_dir / "bots").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "runs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._tasks: dict[str, _Task] = {}
        self._children: dict[int, subprocess.Popen] = {}
        self._recent: OrderedDict[str, ExitResult] = OrderedDict()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max(1, finish_workers), thread_name_prefix="process-finish")
        self._notifier = _Notifier()
        self._reaper = ProcReaper(self._on_proc_exit)

    # --- paths -----------------------------------------------------------------------------------------
    def _paths(self, kind: str, bot_id: str, run_id: str | None) -> TaskPaths:
        check_bot_id(bot_id)
        bot_root = self.data_dir / "bots" / bot_id
        if kind == KIND_REALTIME:
            return TaskPaths(
                key=f"bot/{bot_id}",
                root=bot_root,
                code=bot_root / "code",
                state=bot_root / "state",
                logs=bot_root / "logs",
                work=bot_root / "work",
            )
        root = self.data_dir / "runs" / check_run_id(run_id or "")
        return TaskPaths(
            key=f"run/{run_id}", root=root, code=root / "code", state=bot_root / "state", logs=root / "logs",
            work=root / "work",
        )

    def _paths_of(self, handle: Handle) -> TaskPaths:
        try:
            return self._paths(handle.kind, handle.bot_id, handle.run_id)
        except ValueError as e:
            raise TaskNotFound(f"not a process backend handle: {e}") from None

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            lk = self._key_locks.get(key)
            if lk is None:
                lk = self._key_locks[key] = threading.Lock()
            return lk

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("process backend is closed", retryable=False)

    # --- records ---------------------------------------------------------------------------------------
    def _read_record(self, paths: TaskPaths) -> TaskRecord | None:
        """task.json, or None. A record that cannot be parsed names no process: it is removed."""
        try:
            raw = _read_json(paths.record)
            return None if raw is None else TaskRecord.from_json(raw)
        except (OSError, ValueError, KeyError, TypeError) as e:
            event(log, "process.record_invalid", logging.WARNING, path=str(paths.record), error=str(e))
            _unlink(paths.record)
            return None

    def _remove_record(self, paths: TaskPaths, ref: str) -> None:
        """Delete task.json if it still names ``ref`` (a newer process of the same bot keeps its record)."""
        try:
            raw = _read_json(paths.record)
        except (OSError, ValueError):
            raw = None
        try:
            if raw is not None and make_ref(int(raw["pid"]), int(raw["start_time"])) != ref:
                return
        except (KeyError, TypeError, ValueError):
            pass
        _unlink(paths.record)

    def _write_exit(self, task: _Task) -> None:
        res = task.result or ExitResult(code=None)
        data = task.record.to_json()
        data.update(code=res.code, signal=res.signal, reason=res.reason, finished_at=time.time())
        try:
            _write_json_atomic(task.paths.exit_file, data)
        except OSError as e:
            event(log, "process.exit_record_failed", logging.WARNING, bot_id=task.record.bot_id, error=str(e))

    def _read_exit(self, paths: TaskPaths) -> tuple[TaskRecord, ExitResult] | None:
        try:
            raw = _read_json(paths.exit_file)
            if raw is None:
                return None
            rec = TaskRecord.from_json(raw)
            code = raw.get("code")
            sig = raw.get("signal")
            return rec, ExitResult(code=None if code is None else int(code), signal=None if sig is None else int(sig),
                                   reason=str(raw.get("reason") or ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- start -------------------------------------------------------------------------------------------
    def start(self, spec: RunSpec) -> Handle:
        if spec.run_id:
            raise ValueError(f"start() is for realtime bots; bot {spec.bot.id}'s run {spec.run_id} needs run_once()")
        return self._launch(spec, KIND_REALTIME)

    def run_once(self, spec: RunSpec) -> Handle:
        if not spec.run_id:
            raise ValueError(f"run_once() needs a run id (bot {spec.bot.id})")
        return self._launch(spec, KIND_SCHEDULED)

    def _launch(self, spec: RunSpec, kind: str) -> Handle:
        self._check_open()
        bot = spec.bot
        try:
            paths = self._paths(kind, bot.id, spec.run_id)
        except ValueError as e:
            raise BackendError(str(e), retryable=False) from None
        with self._key_lock(paths.key):
            self._check_open()
            prev = self._tasks.get(paths.key)
            if prev is not None:
                if not prev.exited.is_set():
                    return prev.handle
                # Let the previous process's final state upload land before state is restored again.
                if not prev.finished.wait(self.sync_deadline + 5.0):
                    raise BackendError(f"bot {bot.id}: the previous process's final sync is still running")
            rec = self._read_record(paths)
            if rec is not None:
                if is_alive(rec.pid, rec.start_time):
                    task = self._adopt(paths, rec)
                    if task is not None:
                        return task.handle
                    with self._lock:  # it ended just now: let its final sync finish first
                        ended = self._tasks.get(paths.key)
                    if ended is not None:
                        ended.finished.wait(self.sync_deadline + 5.0)
                    if kind == KIND_SCHEDULED:
                        return rec.handle(paths)
                else:
                    # Ended while no runtime watched it: ship what it left, then start afresh (realtime) or
                    # report that run's end (a scheduled run never runs twice).
                    task = self._retire(paths, rec, _stale_reason(rec), wait=True, notify=kind == KIND_SCHEDULED)
                    if kind == KIND_SCHEDULED:
                        return task.handle
            if kind == KIND_SCHEDULED:
                done = self._read_exit(paths)
                if done is not None:  # this run already ran to its end: report it again, do not rerun
                    drec, dres = done
                    self._notifier.put(drec.handle(paths), dres)
                    return drec.handle(paths)
            return self._spawn(spec, kind, paths)

    def _spawn(self, spec: RunSpec, kind: str, paths: TaskPaths) -> Handle:
        bot = spec.bot
        paths.make()
        if kind == KIND_REALTIME:
            _unlink(paths.exit_file)
        argv = self._prepare(spec, paths)
        env = self._bot_env(spec, kind, paths)
        try:
            log_fd = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise BackendError(f"bot {bot.id}: cannot open its log file {paths.log_file}: {e}") from e
        try:
            popen = subprocess.Popen(
                argv,
                cwd=str(paths.code),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                close_fds=True,
                start_new_session=True,
                env=env,
            )
        except OSError as e:
            raise BackendError(f"bot {bot.id}: cannot execute {argv[0]!r}: {e}", retryable=False) from e
        finally:
            os.close(log_fd)
        pid = popen.pid
        with self._lock:
            self._children[pid] = popen  # held until reaped, so subprocess never reaps it behind our back
        st = proc_stat(pid)  # the child is not reaped yet (zombie at worst): its stat is there
        if st is None:
            raise BackendError(f"bot {bot.id}: process {pid} vanished right after start")
        started = self.clock.time() if self.clock is not None else time.time()
        rec = TaskRecord(pid=pid, start_time=st.start_ticks, bot_id=bot.id, kind=kind, run_id=spec.run_id,
                         config_hash=bot.config_hash, started_at=started)
        task = _Task(paths, rec, popen)
        try:
            _write_json_atomic(paths.record, rec.to_json())
            task.sync = self._start_sync(bot.id, paths)
        except Exception as e:
            self._abort_spawn(task)
            raise BackendError(f"bot {bot.id}: started but could not be set up ({e}); it was killed") from e
        with self._lock:
            self._tasks[paths.key] = task
        if not self._reaper.watch(paths.key, pid, rec.start_time):  # cannot happen for an unreaped child
            self._process_ended(paths.key, ProcExit(pid=pid, code=None, signal=None, known=False))
        event(log, "process.started", bot_id=bot.id, kind=kind, run_id=spec.run_id, pid=pid, argv0=argv[0])
        return task.handle

    def _abort_spawn(self, task: _Task) -> None:
        pid = task.record.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            if task.popen is not None:
                task.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with self._lock:
            self._children.pop(pid, None)
        _unlink(task.paths.record)

    def _prepare(self, spec: RunSpec, paths: TaskPaths) -> list[str]:
        from daemon.init import EXIT_STORAGE, InitError, prepare  # daemon ships alone too: import when needed

        bot = spec.bot
        try:
            argv = prepare(
                bot.id,
                bot.code_file,
                bot.runtime,
                bot.entrypoint,
                str(paths.code),
                str(paths.state),
                self.store,
                None,
                **self.programs,
            )
        except InitError as e:
            raise BackendError(f"bot {bot.id}: init failed: {e}", retryable=e.exit_code == EXIT_STORAGE) from e
        except Exception as e:  # noqa: BLE001 - say which bot and what failed; keep the retryability
            raise BackendError(f"bot {bot.id}: init failed: {e}", retryable=bool(getattr(e, "retryable", True))) from e
        argv = [str(a) for a in argv]
        if not argv:
            raise BackendError(f"bot {bot.id}: init returned no command to run", retryable=False)
        return argv

    def _bot_env(self, spec: RunSpec, kind: str, paths: TaskPaths) -> dict[str, str]:
        """The bot's whole environment: never the runtime's (no MINIO_*, NATS_*, MONGO_*, AWS_*, ...)."""
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "HOME": str(paths.root),
            "LANG": os.environ.get("LANG") or "C.UTF-8",
            "BOT_ID": spec.bot.id,
            "BOT_CONFIG": spec.bot.config_json,
            "STATE_DIR": str(paths.state),
            "CODE_MOUNT_DIR": str(paths.code),
            "BOT_TYPE": kind,
            "LOGS_DIR": str(paths.logs),
        }
        if os.environ.get("TZ"):
            env["TZ"] = os.environ["TZ"]
        return env

    def _start_sync(self, bot_id: str, paths: TaskPaths) -> Any:
        from daemon.sync import BotSync

        return BotSync.start(
            bot_id,
            str(paths.state),
            str(paths.log_file),
            str(paths.work),
            self.store,
            publish=self.publish,
            clock=self.clock,
            # inotify (one shared watcher) wakes LogShip on every write; with hundreds of bots in one
            # process the safety-net poll is what costs idle CPU, so it runs every 10 s here, not 1 s.
            log_options={"poll_interval": EMBEDDED_LOG_POLL},
        )

    def _stop_sync(self, task: _Task, final: bool) -> None:
        sync, task.sync = task.sync, None
        if sync is None:
            return
        try:
            sync.stop(final=final, deadline=self.sync_deadline)
        except Exception as e:  # noqa: BLE001 - a failed upload must not lose the exit
            event(log, "process.sync_stop_failed", logging.ERROR, exc_info=True, bot_id=task.record.bot_id,
                  final=final, error=str(e))

    # --- adoption ----------------------------------------------------------------------------------------
    def _adopt(self, paths: TaskPaths, rec: TaskRecord) -> _Task | None:
        """Watch a live process recorded by an earlier runtime and resume its sync. Caller holds the key lock."""
        task = _Task(paths, rec)
        try:
            task.sync = self._start_sync(rec.bot_id, paths)
        except Exception as e:  # noqa: BLE001 - the bot keeps running; its sync is retried at the next adoption
            event(log, "process.sync_start_failed", logging.ERROR, exc_info=True, bot_id=rec.bot_id, error=str(e))
        with self._lock:
            self._tasks[paths.key] = task
        if not self._reaper.watch(paths.key, rec.pid, rec.start_time):
            self._process_ended(paths.key, ProcExit(pid=rec.pid, code=None, signal=None, known=False))
            return None
        event(log, "process.adopted", bot_id=rec.bot_id, kind=rec.kind, run_id=rec.run_id, pid=rec.pid)
        return task

    def _retire(self, paths: TaskPaths, rec: TaskRecord, reason: str, wait: bool, notify: bool) -> _Task:
        """A recorded process ended unwatched: catch-up sync, record the exit, drop task.json, maybe report."""
        task = _Task(paths, rec)
        task.result = ExitResult(code=None, reason=reason)
        task.exited.set()
        with self._lock:
            self._tasks[paths.key] = task
        event(log, "process.ended_unwatched", logging.WARNING, bot_id=rec.bot_id, kind=rec.kind, run_id=rec.run_id,
              pid=rec.pid, reason=reason)

        def job() -> None:
            try:
                paths.make()
                task.sync = self._start_sync(rec.bot_id, paths)
            except Exception as e:  # noqa: BLE001
                event(log, "process.sync_start_failed", logging.ERROR, exc_info=True, bot_id=rec.bot_id, error=str(e))
            self._finish(task, notify=notify)

        if wait:
            job()
        else:
            self._pool.submit(job)
        return task

    # --- exits -------------------------------------------------------------------------------------------
    def _on_proc_exit(self, key: str, pe: ProcExit) -> None:
        """Reaper thread: quick bookkeeping, then the final sync goes to the worker pool."""
        self._process_ended(key, pe)

    def _process_ended(self, key: str, pe: ProcExit) -> None:
        with self._lock:
            popen = self._children.pop(pe.pid, None)
            task = self._tasks.get(key)
        if popen is not None and popen.returncode is None:
            # Tell the Popen object what we reaped, so it never waits for the pid itself.
            popen.returncode = -pe.signal if pe.signal else (pe.code if pe.code is not None else 0)
        if task is None or task.record.pid != pe.pid or task.exited.is_set():
            return
        if task.stopping:
            reason = REASON_STOPPED
        elif not pe.known:
            reason = REASON_ADOPTED
        elif pe.signal:
            reason = f"killed by {_signame(pe.signal)}"
        else:
            reason = f"exited with code {pe.code}"
        task.result = ExitResult(code=pe.code, signal=pe.signal, reason=reason)
        task.exited.set()
        event(log, "process.exited", logging.INFO if pe.code == 0 or task.stopping else logging.WARNING,
              bot_id=task.record.bot_id, run_id=task.record.run_id, pid=pe.pid, code=pe.code, signal=pe.signal,
              reason=reason)
        try:
            self._pool.submit(self._finish, task, not task.stopping)
        except RuntimeError:  # pool shut down (closing): finish here
            self._finish(task, notify=False)

    def _finish(self, task: _Task, notify: bool = True) -> None:
        """Final sync (state and logs), exit record, task.json removed, then the exit is reported."""
        try:
            self._stop_sync(task, final=True)
            self._write_exit(task)
            self._remove_record(task.paths, task.handle.ref)
            with self._lock:
                if self._tasks.get(task.key) is task:
                    del self._tasks[task.key]
                self._recent[task.handle.ref] = task.result
                while len(self._recent) > 2000:
                    self._recent.popitem(last=False)
        finally:
            task.finished.set()
        if notify and task.result is not None:
            self._notifier.put(task.handle, task.result)

    # --- stop / inspect ------------------------------------------------------------------------------------
    def stop(self, handle: Handle, grace: float | None = None) -> ExitResult | None:
        self._check_open()
        grace = self.stop_grace if grace is None else max(0.0, grace)
        paths = self._paths_of(handle)
        task = self._task_for(handle, paths)
        if task is None:
            with self._lock:
                known = self._recent.get(handle.ref)
            if known is None:
                done = self._read_exit(paths)
                if done is not None and done[0].ref == handle.ref:
                    known = done[1]
            return known
        task.stopping = True
        if not task.exited.is_set():
            event(log, "process.stopping", bot_id=handle.bot_id, run_id=handle.run_id, pid=task.record.pid, grace=grace)
            self._reaper.signal_group(task.key, signal.SIGTERM)
            if not task.exited.wait(grace):
                event(log, "process.kill", logging.WARNING, bot_id=handle.bot_id, pid=task.record.pid,
                      reason=f"still running {grace}s after SIGTERM")
                self._reaper.signal_group(task.key, signal.SIGKILL)
                if not task.exited.wait(10.0):
                    raise BackendError(f"bot {handle.bot_id}: process {task.record.pid} survived SIGKILL for 10s")
        if not task.finished.wait(self.sync_deadline + 5.0):
            event(log, "process.final_sync_slow", logging.WARNING, bot_id=handle.bot_id, pid=task.record.pid)
        return task.result

    def _task_for(self, handle: Handle, paths: TaskPaths) -> _Task | None:
        """The watched task of ``handle``; adopts it first when only its task.json knows it."""
        with self._lock:
            task = self._tasks.get(paths.key)
        if task is not None and task.handle.ref == handle.ref:
            return task
        with self._key_lock(paths.key):
            with self._lock:
                task = self._tasks.get(paths.key)
            if task is not None:
                return task if task.handle.ref == handle.ref else None
            rec = self._read_record(paths)
            if rec is None or rec.ref != handle.ref or not is_alive(rec.pid, rec.start_time):
                return None
            return self._adopt(paths, rec)

    def inspect(self, handle: Handle) -> TaskState:
        paths = self._paths_of(handle)
        try:
            pid, ticks = parse_ref(handle.ref)
        except ValueError:
            raise TaskNotFound(f"bot {handle.bot_id}: {handle.ref!r} is not a process ref") from None
        with self._lock:
            task = self._tasks.get(paths.key)
            recent = self._recent.get(handle.ref)
        if task is not None and task.handle.ref == handle.ref:
            if task.exited.is_set():
                return TaskState(running=False, exit=task.result, phase="exited")
            return TaskState(running=True, phase="running")
        if recent is not None:
            return TaskState(running=False, exit=recent, phase="exited")
        if is_alive(pid, ticks):
            return TaskState(running=True, phase="running")
        done = self._read_exit(paths)
        if done is not None and done[0].ref == handle.ref:
            return TaskState(running=False, exit=done[1], phase="exited")
        rec = self._read_record(paths)
        if rec is not None and rec.ref == handle.ref:
            return TaskState(running=False, exit=ExitResult(code=None, reason=_stale_reason(rec)), phase="exited")
        raise TaskNotFound(f"bot {handle.bot_id}: process {handle.ref} is gone and has no record")

    # --- recovery ----------------------------------------------------------------------------------------
    def list_managed(self) -> list[Handle]:
        """Running tasks, adopting live recorded processes; stale records are retired and their exit reported."""
        self._check_open()
        found: list[Handle] = []
        for sub, kind in (("bots", KIND_REALTIME), ("runs", KIND_SCHEDULED)):
            base = self.data_dir / sub
            try:
                dirs = sorted(p for p in base.iterdir() if (p / RECORD_FILE).exists())
            except FileNotFoundError:
                continue
            for d in dirs:
                h = self._recover_one(d, kind)
                if h is not None:
                    found.append(h)
        return found

    def _recover_one(self, d: Path, kind: str) -> Handle | None:
        raw_paths = TaskPaths(key="", root=d, code=d, state=d, logs=d, work=d)
        rec = self._read_record(raw_paths)
        if rec is None:
            return None
        if rec.kind != kind or (kind == KIND_REALTIME and rec.bot_id != d.name) or (
            kind == KIND_SCHEDULED and rec.run_id != d.name
        ):
            event(log, "process.record_misplaced", logging.WARNING, path=str(d / RECORD_FILE))
            return None
        paths = self._paths(kind, rec.bot_id, rec.run_id)
        lock = self._key_lock(paths.key)
        if not lock.acquire(blocking=False):
            return None  # being started or adopted right now by someone else
        try:
            with self._lock:
                task = self._tasks.get(paths.key)
            if task is not None:
                if task.handle.ref == rec.ref and not task.exited.is_set():
                    return task.handle
                return None  # ending or being replaced: its exit is on its way
            if is_alive(rec.pid, rec.start_time):
                task = self._adopt(paths, rec)
                return task.handle if task is not None else None
            self._retire(paths, rec, _stale_reason(rec), wait=False, notify=True)
            return None
        finally:
            lock.release()

    # --- logs / remove / watch / close ---------------------------------------------------------------------
    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        return tail_lines(self._paths_of(handle).log_file, int(tail))

    def remove(self, handle: Handle) -> None:
        paths = self._paths_of(handle)
        with self._lock:
            task = self._tasks.get(paths.key)
        if task is not None and task.handle.ref == handle.ref:
            if not task.exited.is_set():
                raise BackendError(f"bot {handle.bot_id}: {handle.ref} is still running; stop it first",
                                   retryable=False)
            task.finished.wait(self.sync_deadline + 5.0)
        elif task is not None:
            return  # a newer process of this bot: nothing of the old one left to remove
        if handle.kind == KIND_SCHEDULED:
            rec = self._read_record(paths)
            if rec is not None and is_alive(rec.pid, rec.start_time):
                raise BackendError(f"run {handle.run_id} is still running; stop it first", retryable=False)
            shutil.rmtree(paths.root, ignore_errors=True)
            with self._lock:
                self._key_locks.pop(paths.key, None)
        else:
            # Realtime: the state dir, logs and checkpoints stay (the next process of the bot uses them).
            self._remove_record_if_dead(paths)

    def _remove_record_if_dead(self, paths: TaskPaths) -> None:
        rec = self._read_record(paths)
        if rec is not None and not is_alive(rec.pid, rec.start_time):
            self._remove_record(paths, rec.ref)

    def watch(self, on_exit: ExitCallback) -> None:
        self._notifier.set_callback(on_exit)

    def close(self) -> None:
        """Stop watching and syncing; bots keep running and a later runtime adopts them."""
        if self._closed:
            return
        self._closed = True
        self._reaper.close()
        self._pool.shutdown(wait=True)  # final syncs of bots that already exited finish
        with self._lock:
            live = [t for t in self._tasks.values() if not t.exited.is_set()]
        for t in live:
            self._stop_sync(t, final=False)
        self._notifier.close()
        event(log, "process.backend_closed", left_running=len(live))


def find_python() -> str:
    """A real python3.11/python3 binary on PATH (an ELF file, not a wrapper script such as a pyenv shim,
    which would add a process and variables to the bot's environment); else this interpreter's binary."""
    for name in ("python3.11", "python3"):
        for d in (os.environ.get("PATH") or DEFAULT_PATH).split(os.pathsep):
            cand = os.path.join(d or ".", name)
            try:
                real = os.path.realpath(cand)
                if os.access(real, os.X_OK) and os.path.isfile(real):
                    with open(real, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            return real
            except OSError:
                continue
    return os.path.realpath(sys.executable)


def _stale_reason(rec: TaskRecord) -> str:
    st = proc_stat(rec.pid)
    if st is not None and st.start_ticks != rec.start_time:
        return REASON_PID_REUSED
    return REASON_AWAY


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
