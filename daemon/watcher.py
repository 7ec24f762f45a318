"""One inotify instance per process, serving every watched directory tree (StateSync, LogShip, done-files).

The kernel allows 128 inotify instances per user and the embedded runtime runs 1,000 bots, so a process
keeps exactly one ``DirWatcher`` (``shared_watcher()``) with one reader thread. Each registered root is
watched recursively: a subdirectory created (or moved in) later is watched as soon as its creation is
seen. The reader never runs actor code: it calls the listener's ``callback(WatchEvent)``, which should
only ``tell`` an actor something. Events of one read are coalesced per root (one callback per root per
read, with the set of paths that changed). ``IN_Q_OVERFLOW`` (events were lost) reaches every listener
as ``WatchEvent(overflow=True)``: the listener must rescan everything it cares about.
"""
from __future__ import annotations

import logging
import os
import select
import threading
from dataclasses import dataclass, field
from typing import Callable

from inotify_simple import INotify, flags

from daemon.jsonlog import event

log = logging.getLogger("daemon.watcher")

WATCH_MASK = (
    flags.CREATE | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM
    | flags.DELETE | flags.DELETE_SELF | flags.ATTRIB | flags.ONLYDIR
)


@dataclass(frozen=True)
class WatchEvent:
    """Something changed under ``root``: ``paths`` (absolute), or everything may have (``overflow``)."""

    root: str
    paths: frozenset[str] = field(default_factory=frozenset)
    overflow: bool = False


Callback = Callable[[WatchEvent], None]


class WatchError(Exception):
    """A directory could not be watched (missing, or the inotify watch limit is reached)."""


class DirWatcher:
    """Recursive directory watches over one inotify instance and one reader thread."""

    def __init__(self, name: str = "inotify") -> None:
        self._ino = INotify()
        self._lock = threading.Lock()
        self._roots: dict[str, list[Callback]] = {}
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------------
    def register(self, root_dir: str, callback: Callback) -> None:
        """Watch ``root_dir`` and everything below it; ``callback`` gets a WatchEvent per change batch.

        Several listeners may register the same root (each gets every event). Raises WatchError when
        ``root_dir`` is not a directory.
        """
        root = os.path.realpath(root_dir)
        if not os.path.isdir(root):
            raise WatchError(f"cannot watch {root_dir!r}: not a directory (create it first)")
        with self._lock:
            self._roots.setdefault(root, []).append(callback)
        self._add_tree(root)

    def unregister(self, root_dir: str, callback: Callback | None = None) -> None:
        """Remove ``callback`` (every listener of the root when None) and drop watches no root needs."""
        root = os.path.realpath(root_dir)
        with self._lock:
            cbs = self._roots.get(root)
            if not cbs:
                return
            if callback is not None:
                cbs[:] = [c for c in cbs if c is not callback and c != callback]
            if callback is None or not cbs:
                self._roots.pop(root, None)
            else:
                return
            drop = [(p, wd) for p, wd in self._path_wd.items()
                    if _under(p, root) and not any(_under(p, r) for r in self._roots)]
            for p, wd in drop:
                self._path_wd.pop(p, None)
                self._wd_path.pop(wd, None)
        for _, wd in drop:
            try:
                self._ino.rm_watch(wd)
            except OSError:
                pass  # the directory is already gone: the kernel dropped the watch itself

    def watched_dirs(self) -> list[str]:
        with self._lock:
            return sorted(self._path_wd)

    def roots(self) -> list[str]:
        with self._lock:
            return sorted(self._roots)

    def close(self) -> None:
        """Stop the reader thread and release the inotify instance."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._ino.close()

    # -- internals -------------------------------------------------------------------------------
    def _add_tree(self, top: str) -> None:
        for dirpath, dirnames, _ in os.walk(top, followlinks=False):
            self._add_one(dirpath)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def _add_one(self, path: str) -> None:
        try:
            wd = self._ino.add_watch(path, WATCH_MASK)
        except FileNotFoundError:
            return  # removed between listing and watching
        except NotADirectoryError:
            return
        except OSError as e:  # ENOSPC: fs.inotify.max_user_watches reached
            event(log, "watcher.add_failed", logging.ERROR, path=path, error=str(e),
                  hint="raise fs.inotify.max_user_watches; the periodic rescan still catches changes")
            return
        with self._lock:
            old = self._wd_path.get(wd)
            if old is not None and old != path:
                self._path_wd.pop(old, None)  # same inode under a new name (moved directory)
            self._wd_path[wd] = path
            self._path_wd[path] = wd

    def _roots_of(self, path: str) -> list[str]:
        return [r for r in self._roots if _under(path, r)]

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._ino.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closed:
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            if self._closed:
                return
            if not any(fd == self._ino.fileno() for fd, _ in ready):
                continue
            try:
                events = self._ino.read(timeout=0)
            except OSError as e:
                event(log, "watcher.read_failed", logging.ERROR, error=str(e))
                continue
            try:
                self._dispatch(events)
            except Exception:  # noqa: BLE001 - the reader thread must survive anything
                log.exception("watcher.dispatch_failed")

    def _dispatch(self, events) -> None:
        changed: dict[str, set[str]] = {}
        overflow = False
        new_dirs: list[str] = []
        for ev in events:
            if ev.mask & flags.Q_OVERFLOW:
                overflow = True
                continue
            with self._lock:
                base = self._wd_path.get(ev.wd)
                if ev.mask & flags.IGNORED:
                    if base is not None:
                        self._wd_path.pop(ev.wd, None)
                        if self._path_wd.get(base) == ev.wd:
                            self._path_wd.pop(base, None)
                    continue
            if base is None:
                continue
            path = os.path.join(base, ev.name) if ev.name else base
            if ev.mask & flags.ISDIR and ev.mask & (flags.CREATE | flags.MOVED_TO):
                new_dirs.append(path)
            with self._lock:
                for root in self._roots_of(base):
                    changed.setdefault(root, set()).add(path)
        for d in new_dirs:
            self._add_tree(d)  # anything created inside before the watch existed is in the event's rescan
        with self._lock:
            if overflow:
                targets = [(r, cb, WatchEvent(r, overflow=True)) for r, cbs in self._roots.items() for cb in cbs]
            else:
                targets = [(r, cb, WatchEvent(r, frozenset(ps))) for r, ps in changed.items()
                           for cb in self._roots.get(r, ())]
        if overflow:
            event(log, "watcher.overflow", logging.WARNING, roots=len(targets))
        for root, cb, we in targets:
            try:
                cb(we)
            except Exception as e:  # noqa: BLE001 - a listener's error is logged, never fatal
                event(log, "watcher.callback_failed", logging.ERROR, root=root, error=repr(e))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


_shared: DirWatcher | None = None
_shared_lock = threading.Lock()


def shared_watcher() -> DirWatcher:
    """The process-wide watcher (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = DirWatcher()
        return _shared
