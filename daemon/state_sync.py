"""StateSync: mirrors a bot's state directory to ``bot-state/<id>/state.tar.gz`` while the bot runs.

One pykka actor per bot. Changes reach it from the shared inotify watcher (``daemon.watcher``); it waits
for a quiet spell (trailing debounce, default 0.2 s) but never longer than a cap after the first change
(default 2 s), then builds the deterministic tar (``daemon.archive.make_state_tar``) and uploads it only
when its sha256 differs from the last uploaded one. That digest is kept in a small file outside the
state dir (``<work_dir>/state.digest``), so a daemon restarted after kill -9 uploads what it had not yet
uploaded, and uploads nothing when nothing changed. Every 60 s a rescan compares a cheap stat
signature and syncs when it moved (inotify overflow also forces a rescan).

Never uploaded: a ``state.json`` that does not parse (the last good state stays in the store; the bot is
probably mid-write and the next change syncs), a file above the per-file limit or a tree above the total
limit (default 16 MB / 64 MB; an error event says which file and what to do). Upload failures are retried
with exponential backoff by clock timers; the actor never dies of a store error. ``flush()`` (ask) syncs
now: the final sync on exit.

States (``status()["state"]``): ``idle`` (in sync), ``pending`` (change seen, debounce running),
``retrying`` (upload failed, timer set), ``invalid`` (last attempt refused: torn json or too large).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from daemon import layout
from daemon.clock import Clock, RealClock
from daemon.jsonlog import event
from daemon.storage import ObjectStore

from daemon.archive import ArchiveError, make_state_tar
from daemon.supervisor import Supervised

log = logging.getLogger("daemon.state_sync")

STATE_JSON = "state.json"
DIGEST_FILE = "state.digest"

IDLE, PENDING, RETRYING, INVALID = "idle", "pending", "retrying", "invalid"


# -- small helpers shared with log_ship ------------------------------------------------------------
def atomic_write(path: str, data: bytes) -> None:
    """Write ``path`` so a reader (or a process restarted after kill -9) sees old or new, never a part."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Backoff:
    """Exponential retry delays: ``base`` doubling to ``cap`` with +-10 % jitter; ``reset()`` on success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0):
        self.base, self.cap, self.attempts = base, cap, 0

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** self.attempts))
        self.attempts += 1
        return d * random.uniform(0.9, 1.1)

    def reset(self) -> None:
        self.attempts = 0


def default_clock() -> Clock:
    """One RealClock (one timer thread) per process, shared by every actor that is not given a clock."""
    global _clock
    with _clock_lock:
        if _clock is None:
            _clock = RealClock()
        return _clock


_clock: Clock | None = None
_clock_lock = threading.Lock()


def _limits(max_total_bytes: int):
    from daemon.archive import STATE_LIMITS, Limits

    return Limits(max_bytes=max_total_bytes, max_files=STATE_LIMITS.max_files)


class StateRejected(Exception):
    """The state dir cannot be uploaded as it is (torn state.json, size limit). Retrying will not help
    until the bot changes its state."""


# -- messages --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Changed:
    """The watcher saw changes (``overflow``: events were lost, rescan everything)."""
    overflow: bool = False


@dataclass(frozen=True)
class _Due:
    gen: int


@dataclass(frozen=True)
class _Rescan:
    pass


@dataclass(frozen=True)
class _Retry:
    gen: int


@dataclass(frozen=True)
class SyncResult:
    """What one sync did: ``uploaded`` | ``unchanged`` | ``rejected`` | ``failed``, and why."""
    outcome: str
    digest: str | None = None
    reason: str | None = None


class StateSync(Supervised):
    """Mirror ``state_dir`` to the object store (see module docstring)."""

    def __init__(
        self,
        link: Any,
        bot_id: str,
        state_dir: str,
        work_dir: str,
        store: ObjectStore,
        clock: Clock | None = None,
        watcher: Any = None,
        debounce: float = 0.2,
        max_latency: float = 2.0,
        rescan_interval: float = 60.0,
        max_file_bytes: int = 16 * 1024 * 1024,
        max_total_bytes: int = 64 * 1024 * 1024,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
    ):
        super().__init__(link)
        self.bot_id = layout.check_bot_id(bot_id)
        self.state_dir = os.path.abspath(state_dir)
        self.work_dir = os.path.abspath(work_dir)
        self.store = store
        self.clock = clock or default_clock()
        self.watcher = watcher
        self.debounce = debounce
        self.max_latency = max_latency
        self.rescan_interval = rescan_interval
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self._backoff = Backoff(retry_base, retry_cap)
        self._digest_path = os.path.join(self.work_dir, DIGEST_FILE)
        self._state = IDLE
        self._first_change: float | None = None
        self._last_change = 0.0
        self._due_gen = 0
        self._due_timer: Any = None
        self._retry_gen = 0
        self._last_digest: str | None = None
        self._last_signature: Any = None
        self._uploads = 0
        self._changes = 0
        self._last_result: SyncResult | None = None
        self._watch_cb: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        super().on_start()
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(self.work_dir, exist_ok=True)
        self._last_digest = self._read_digest()
        if self.watcher is not None:
            ref = self.actor_ref
            self._watch_cb = lambda ev: ref.tell(Changed(ev.overflow))
            self.watcher.register(self.state_dir, self._watch_cb)
        self.clock.call_later(self.rescan_interval, self.actor_ref, _Rescan())
        event(log, "state.sync_started", bot_id=self.bot_id, state_dir=self.state_dir,
              last_digest=self._last_digest)
        # Covers kill -9 between a write and its upload: sync at once if content differs.
        self._sync()

    def on_stop(self) -> None:
        self._unwatch()
        super().on_stop()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        self._unwatch()
        super().on_failure(exception_type, exception_value, traceback)

    def _unwatch(self) -> None:
        if self.watcher is not None and self._watch_cb is not None:
            try:
                self.watcher.unregister(self.state_dir, self._watch_cb)
            except Exception:  # noqa: BLE001 - stopping must not fail on the watcher
                pass

    # -- messages ----------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Changed):
            self._on_changed(message)
        elif isinstance(message, _Due):
            if message.gen == self._due_gen:
                self._on_due()
        elif isinstance(message, _Rescan):
            self.clock.call_later(self.rescan_interval, self.actor_ref, _Rescan())
            if self._state in (IDLE, INVALID) and self._signature() != self._last_signature:
                self._sync()
        elif isinstance(message, _Retry):
            if message.gen == self._retry_gen and self._state == RETRYING:
                self._sync()
        return None

    def _on_changed(self, msg: Changed) -> None:
        self._changes += 1
        now = self.clock.monotonic()
        self._last_change = now
        if self._state == RETRYING:
            return  # the retry timer syncs the latest content anyway
        if self._first_change is None:
            self._first_change = now
            self._state = PENDING
            self._schedule_due(self.debounce)

    def _schedule_due(self, delay: float) -> None:
        self._due_gen += 1
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_timer = self.clock.call_later(max(0.0, delay), self.actor_ref, _Due(self._due_gen))

    def _on_due(self) -> None:
        now = self.clock.monotonic()
        if self._first_change is not None:
            quiet_at = self._last_change + self.debounce
            cap_at = self._first_change + self.max_latency
            if now < quiet_at and now < cap_at:
                self._schedule_due(min(quiet_at, cap_at) - now)
                return
        self._sync()

    # -- public (ask through the proxy) -----------------------------------------------------------
    def flush(self, retry_for: float = 0.0) -> SyncResult:
        """Sync now (final sync). Upload failures are retried for up to ``retry_for`` real seconds."""
        deadline = time.monotonic() + retry_for
        while True:
            res = self._sync(schedule_retry=False)
            if res.outcome != "failed" or time.monotonic() + 0.2 > deadline:
                if res.outcome == "failed":
                    self._schedule_retry()
                return res
            time.sleep(0.2)  # final sync only: the actor is stopping, nothing else waits on it

    def status(self) -> dict:
        return {
            "state": self._state,
            "last_digest": self._last_digest,
            "uploads": self._uploads,
            "changes": self._changes,
            "last_result": self._last_result,
        }

    # -- the sync itself ---------------------------------------------------------------------------
    def _sync(self, schedule_retry: bool = True) -> SyncResult:
        self._first_change = None
        self._due_gen += 1  # a pending debounce timer is now stale
        signature = self._signature()
        try:
            data = self._build()
        except StateRejected as e:
            self._state = INVALID
            self._last_signature = signature
            self._last_result = SyncResult("rejected", reason=str(e))
            return self._last_result
        except OSError as e:  # a file vanished while archiving: the bot is writing; try again soon
            event(log, "state.archive_retry", logging.WARNING, bot_id=self.bot_id, error=str(e))
            self._state = PENDING
            self._first_change = self.clock.monotonic()
            self._last_change = self._first_change
            self._schedule_due(self.debounce)
            self._last_result = SyncResult("failed", reason=f"archiving: {e}")
            return self._last_result
        digest = hashlib.sha256(data).hexdigest()
        if self._last_digest is None:
            self._last_digest = self._remote_digest()
        if digest == self._last_digest:
            self._state = IDLE
            self._last_signature = signature
            self._backoff.reset()
            self._last_result = SyncResult("unchanged", digest)
            return self._last_result
        try:
            self.store.put_bytes(layout.STATE_BUCKET, layout.state_key(self.bot_id), data, "application/gzip")
        except Exception as e:  # noqa: BLE001 - a store error never kills the actor
            event(log, "state.upload_failed", logging.WARNING, bot_id=self.bot_id, error=str(e),
                  attempt=self._backoff.attempts + 1)
            self._last_result = SyncResult("failed", digest, reason=str(e))
            if schedule_retry:
                self._schedule_retry()
            else:
                self._state = RETRYING
            return self._last_result
        atomic_write(self._digest_path, digest.encode())
        self._last_digest = digest
        self._last_signature = signature
        self._uploads += 1
        self._state = IDLE
        self._backoff.reset()
        event(log, "state.uploaded", bot_id=self.bot_id, digest=digest[:16], bytes=len(data))
        self._last_result = SyncResult("uploaded", digest)
        return self._last_result

    def _schedule_retry(self) -> None:
        self._state = RETRYING
        self._retry_gen += 1
        self.clock.call_later(self._backoff.next(), self.actor_ref, _Retry(self._retry_gen))

    def _build(self) -> bytes:
        """Check state.json and the size limits, then make the deterministic tar (StateRejected if not)."""
        if not os.path.isdir(self.state_dir):
            # never replace the stored state with an empty one because the directory went away
            raise StateRejected(f"state dir {self.state_dir} is missing: nothing uploaded")
        sj = os.path.join(self.state_dir, STATE_JSON)
        if os.path.isfile(sj):
            try:
                with open(sj, "rb") as f:
                    json.loads(f.read())
            except (ValueError, UnicodeDecodeError) as e:
                event(log, "state.invalid_json", logging.WARNING, bot_id=self.bot_id, error=str(e),
                      hint="state.json does not parse (torn write?); the last good state stays uploaded")
                raise StateRejected(f"{STATE_JSON} does not parse as JSON: {e}") from e
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.state_dir):
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                total += st.st_size
                if st.st_size > self.max_file_bytes:
                    rel = os.path.relpath(p, self.state_dir)
                    msg = (f"state file {rel!r} is {st.st_size} bytes, above the per-file limit of "
                           f"{self.max_file_bytes}: not uploaded; keep big data elsewhere or shrink the file")
                    event(log, "state.too_large", logging.ERROR, bot_id=self.bot_id, file=rel,
                          size=st.st_size, limit=self.max_file_bytes)
                    raise StateRejected(msg)
        if total > self.max_total_bytes:
            msg = (f"state dir holds {total} bytes, above the total limit of {self.max_total_bytes}: "
                   f"not uploaded; delete files the bot no longer needs")
            event(log, "state.too_large", logging.ERROR, bot_id=self.bot_id, total=total,
                  limit=self.max_total_bytes)
            raise StateRejected(msg)
        try:
            return make_state_tar(self.state_dir, _limits(self.max_total_bytes))
        except ArchiveError as e:
            event(log, "state.too_large", logging.ERROR, bot_id=self.bot_id, error=str(e))
            raise StateRejected(str(e)) from e

    def _signature(self) -> tuple:
        """Cheap fingerprint of the tree (names, sizes, mtimes): the periodic rescan tars only if it moved."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.state_dir):
            dirnames.sort()
            for name in sorted(filenames) + [d + "/" for d in dirnames]:
                try:
                    st = os.lstat(os.path.join(dirpath, name.rstrip("/")))
                except FileNotFoundError:
                    continue
                out.append((os.path.relpath(os.path.join(dirpath, name), self.state_dir),
                            st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def _read_digest(self) -> str | None:
        try:
            with open(self._digest_path, "rb") as f:
                return f.read().decode().strip() or None
        except FileNotFoundError:
            return None

    def _remote_digest(self) -> str | None:
        """Digest of the stored object when we have no local record (fresh container after restore)."""
        try:
            data = self.store.get_bytes(layout.STATE_BUCKET, layout.state_key(self.bot_id))
        except Exception as e:  # noqa: BLE001 - unknown: upload again rather than risk losing state
            event(log, "state.remote_digest_failed", logging.WARNING, bot_id=self.bot_id, error=str(e))
            return None
        if data is None:
            with tempfile.TemporaryDirectory() as empty:  # nothing stored and nothing to store: no upload
                return hashlib.sha256(make_state_tar(empty)).hexdigest()
        return hashlib.sha256(data).hexdigest()
