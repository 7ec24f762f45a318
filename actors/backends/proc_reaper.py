"""The single exit watcher of the process backend: one thread, one epoll set, one pidfd per watched process.

Every bot process the runtime watches (its own children and processes adopted after a runtime restart) is
registered here with its pid and its start time (``/proc/<pid>/stat`` field 22, in clock ticks since boot).
A pidfd becomes readable when its process exits; the reaper thread then

1. kills what is left of the process group (the group leader is a zombie or still referenced, so its
   number cannot have been reused),
2. reaps the process with ``waitpid(WNOHANG)`` when it is our child (exit code or signal known, no zombie
   left); a process that is not our child (adopted) has an unknown exit code,
3. calls ``on_exit(key, ProcExit)`` from the reaper thread. The callback must be quick (hand slow work to
   another thread).

``pid + start time`` names a process for good: a pid whose start time differs is another process (pid
reuse) and is never watched nor signalled. Signals go through ``signal_group``, which holds the reaper's
lock so the leader cannot be reaped (and its pid reused) between the check and the ``killpg``.

Also here: the /proc helpers the backend uses to recognise its processes.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from daemon.jsonlog import event

log = logging.getLogger("the0.backend.process.reaper")


# --- /proc helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the backend needs."""

    pid: int
    state: str  # R S D Z T ...
    pgid: int
    start_ticks: int  # field 22: start time in clock ticks after boot

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None when there is no such process."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        # rest[0] is field 3 (state): field n is rest[n - 3].
        return ProcStat(pid=int(pid), state=rest[0], pgid=int(rest[2]), start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time (field 22), or None when it does not exist."""
    st = proc_stat(pid)
    return st.start_ticks if st else None


def is_alive(pid: int, ticks: int) -> bool:
    """True when ``pid`` is the very process that started at ``ticks`` and has not exited."""
    st = proc_stat(pid)
    return st is not None and st.start_ticks == ticks and not st.zombie


def parse_ref(ref: str) -> tuple[int, int]:
    """``"pid:start_ticks"`` -> (pid, ticks); ValueError for anything else."""
    pid_s, _, ticks_s = ref.partition(":")
    pid, ticks = int(pid_s), int(ticks_s)
    if pid <= 1 or ticks < 0:
        raise ValueError(f"invalid process ref {ref!r}")
    return pid, ticks


def make_ref(pid: int, ticks: int) -> str:
    return f"{pid}:{ticks}"


# --- the reaper -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcExit:
    """How a watched process ended. ``known`` False: not our child, the code is lost (adopted process)."""

    pid: int
    code: int | None  # exit status; 128 + signal when killed by a signal (shell and Docker convention)
    signal: int | None
    known: bool


@dataclass
class _Watched:
    key: str
    pid: int
    ticks: int
    pidfd: int
    kill_group: bool


ExitHandler = Callable[[str, ProcExit], None]


class ProcReaper:
    """One thread watching every registered process through pidfds in one epoll set."""

    def __init__(self, on_exit: ExitHandler, name: str = "proc-reaper"):
        self._on_exit = on_exit
        self._lock = threading.RLock()
        self._by_fd: dict[int, _Watched] = {}
        self._by_key: dict[str, _Watched] = {}
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- registration ----------------------------------------------------------------------------------
    def watch(self, key: str, pid: int, ticks: int, kill_group: bool = True) -> bool:
        """Watch process ``pid`` started at ``ticks`` under ``key``.

        Returns False (and watches nothing) when the process is gone or ``pid`` now names another process.
        A process that already exited but is not reaped yet (zombie) is accepted: its exit is reported at
        once. Watching a key twice for the same process is a no-op; for another process it is an error.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("process reaper is closed")
            cur = self._by_key.get(key)
            if cur is not None:
                if (cur.pid, cur.ticks) == (pid, ticks):
                    return True
                raise ValueError(f"{key} is already watched as pid {cur.pid}; cannot watch pid {pid} too")
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            # Check the start time after opening the pidfd: if it matches now, the pidfd is that process.
            st = proc_stat(pid)
            if st is None or st.start_ticks != ticks:
                os.close(fd)
                return False
            w = _Watched(key=key, pid=pid, ticks=ticks, pidfd=fd, kill_group=kill_group)
            self._by_fd[fd] = w
            self._by_key[key] = w
            self._epoll.register(fd, select.EPOLLIN)
        return True

    def unwatch(self, key: str) -> bool:
        """Stop watching ``key`` without reporting anything; True when it was watched."""
        with self._lock:
            w = self._by_key.pop(key, None)
            if w is None:
                return False
            self._by_fd.pop(w.pidfd, None)
            self._forget_fd(w.pidfd)
        return True

    def watching(self, key: str) -> bool:
        with self._lock:
            return key in self._by_key

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._by_key)

    # -- signals ---------------------------------------------------------------------------------------
    def signal_group(self, key: str, sig: int) -> bool:
        """Send ``sig`` to the process group of the watched process ``key``.

        Holds the reaper's lock, so the leader cannot be reaped in between: the pid is checked against the
        recorded start time and only then signalled. Returns False when ``key`` is not watched (exited) or
        the pid names another process now.
        """
        with self._lock:
            w = self._by_key.get(key)
            if w is None:
                return False
            st = proc_stat(w.pid)
            if st is None or st.start_ticks != w.ticks:
                return False
            try:
                if st.pgid == w.pid:
                    os.killpg(w.pid, sig)
                else:  # the bot left its own group: signal the process itself through its pidfd
                    signal.pidfd_send_signal(w.pidfd, sig)
            except ProcessLookupError:
                return False
            return True

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the thread and close every pidfd. Watched processes keep running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.eventfd_write(self._wake, 1)
        self._thread.join(5.0)
        with self._lock:
            for w in list(self._by_key.values()):
                self._forget_fd(w.pidfd)
            self._by_key.clear()
            self._by_fd.clear()
            try:
                self._epoll.close()
            finally:
                os.close(self._wake)

    def _forget_fd(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    # -- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                ready = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                if self._closed:
                    return
                raise
            for fd, _mask in ready:
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    if self._closed:
                        return
                    continue
                try:
                    done = self._reap(fd)
                except Exception as e:  # noqa: BLE001 - the single watcher must not die of one process
                    event(log, "reaper.reap_failed", logging.ERROR, exc_info=True, fd=fd, error=str(e))
                    continue
                if done is None:
                    continue
                key, result = done
                try:
                    self._on_exit(key, result)
                except Exception as e:  # noqa: BLE001 - the watcher must outlive a bad callback
                    event(log, "reaper.callback_failed", logging.ERROR, exc_info=True, key=key, error=str(e))
            if self._closed:
                return

    def _reap(self, fd: int) -> tuple[str, ProcExit] | None:
        with self._lock:
            w = self._by_fd.get(fd)
            # The fd may have been unwatched and its number reused by a newer watch since epoll reported
            # it: act only when this pidfd really says "exited" now.
            if w is None or not _readable(fd):
                return None
            del self._by_fd[fd]
            self._by_key.pop(w.key, None)
            try:
                if w.kill_group:
                    self._kill_leftovers(w)
                result = _wait(w.pid)
            finally:
                self._forget_fd(fd)
        return w.key, result

    @staticmethod
    def _kill_leftovers(w: _Watched) -> None:
        # The leader has exited. While it is an unreaped zombie its pid (= the group id) cannot be reused,
        # so SIGKILL to the group reaches only what the bot left behind.
        st = proc_stat(w.pid)
        if st is None or st.start_ticks != w.ticks or st.pgid != w.pid:
            return
        try:
            os.killpg(w.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    try:
        return bool(p.poll(0))
    except OSError:
        return False


def _wait(pid: int) -> ProcExit:
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (adopted), or reaped elsewhere
        return ProcExit(pid=pid, code=None, signal=None, known=False)
    if got == 0:  # should not happen once the pidfd is readable
        return ProcExit(pid=pid, code=None, signal=None, known=False)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ProcExit(pid=pid, code=128 + sig, signal=sig, known=True)
    return ProcExit(pid=pid, code=os.waitstatus_to_exitcode(status), signal=None, known=True)
