"""LogShip: tails a bot's ``bot.log`` and ships it as NDJSON objects to ``bot-logs/logs/<id>/<day>/...``.

One pykka actor per bot. It reads the log from a saved byte offset, cuts batches of whole lines (at most
``max_bytes``, default 256 KB, or whatever arrived within ``max_delay``, default 1 s, of a batch's first
line), writes each batch once as one object, publishes its lines on ``the0.bot.logs.<id>``, and only then
moves the checkpoint. A line record is ``{"ts", "epoch", "offset", "line"}`` plus ``"fields"`` when the
line is a JSON object.

Crash safety (at-least-once, no doubles): before uploading a batch the checkpoint records the batch as
``inflight`` (epoch, start, end, day timestamp); after a restart that batch is cut again with the same
boundaries and the same key (``layout.log_key(bot, start, at, epoch)``), so it overwrites itself. Readers
additionally dedup by (epoch, offset). The checkpoint lives in the daemon's work dir, outside the logs
dir, and is replaced atomically.

Generations: when the file is truncated (smaller than our position) or rotated (the path names another
inode) the current generation's remaining lines are shipped (for a rotation: read to the end of the old
file first), then ``epoch`` goes up by one and the offset restarts at 0. With no checkpoint at all (a
fresh container) the first epoch is one above the highest already stored for that day, so a new run
never overwrites an older run's objects.

A partial last line (no newline yet) waits for its end; a final ``flush(final=True)`` ships it as is.
Wake-ups come from the shared inotify watcher and a periodic poll (safety net).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from daemon import layout
from daemon.clock import Clock
from daemon.jsonlog import event
from daemon.state_sync import Backoff, atomic_write, default_clock
from daemon.supervisor import Supervised
from daemon.storage import ObjectStore

log = logging.getLogger("daemon.log_ship")

CHECKPOINT_FILE = "logship.checkpoint.json"
_HEAD_BYTES = 64
IDLE, RETRYING = "idle", "retrying"

Publish = Callable[[str, bytes], Any]


@dataclass(frozen=True)
class LogChanged:
    """The log file (may have) grown, been truncated or replaced: read it now."""


@dataclass(frozen=True)
class _Poll:
    pass


@dataclass(frozen=True)
class _BatchDue:
    gen: int


@dataclass(frozen=True)
class _Retry:
    gen: int


@dataclass(frozen=True)
class ShipResult:
    """Outcome of a flush: everything read so far is shipped (``ok``), the committed offset, and epoch."""
    ok: bool
    epoch: int | None
    offset: int
    pending_lines: int
    reason: str | None = None


class _ShipFailed(Exception):
    pass


def make_record(ts: float, epoch: int, offset: int, raw: bytes) -> dict:
    """The NDJSON record of one log line (``raw`` without its newline), as a dict."""
    return json.loads(encode_record(repr(float(ts)), epoch, offset, raw))


def encode_record(ts_text: str, epoch: int, offset: int, raw: bytes) -> str:
    """One NDJSON record as text (``raw`` without its newline)."""
    out: list[str] = []
    encode_segment(out, ts_text, epoch, offset, raw, True)
    return out[0]


def encode_segment(out: list[str], ts_text: str, epoch: int, offset: int, seg: bytes, partial: bool) -> None:
    """Append the records of a run of lines starting at byte ``offset`` (the hot loop: > 50,000 lines/s).

    ``seg`` holds whole lines each ending in a newline, plus (``partial``) one last line without it.
    ``fields`` is the line's own JSON text when the line is a JSON object (it parsed as one, so it is
    valid JSON for the same object), re-encoded only when it uses Python's NaN/Infinity extensions.
    """
    prefix = f'{{"ts":{ts_text},"epoch":{epoch},"offset":'
    enc = _encode_str
    append = out.append
    if seg.isascii():
        whole = seg.decode("ascii")
        texts = whole.split("\n")
        if not partial:
            texts.pop()  # after the last newline
        if "\r" not in whole and "{" not in whole:  # the common case: plain text lines
            for text in texts:
                append(f'{prefix}{offset},"line":{enc(text)}}}')
                offset += len(text) + 1
            return
        sizes = None
    else:
        raws = seg.split(b"\n")
        if not partial:
            raws.pop()
        texts = [r.decode("utf-8", errors="replace") for r in raws]
        sizes = [len(r) for r in raws]
    for idx, text in enumerate(texts):
        size = len(text) if sizes is None else sizes[idx]
        if text.endswith("\r"):
            text = text[:-1]
        rec = f'{prefix}{offset},"line":{enc(text)}'
        if text[:1] in ("{", " ", "\t"):
            fields = _json_object_text(text)
            if fields is not None:
                rec += ',"fields":' + fields
        append(rec + "}")
        offset += size + 1


def _json_object_text(text: str) -> str | None:
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return None
    try:
        fields = json.loads(s)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    if "NaN" in s or "Infinity" in s:
        return json.dumps(fields, ensure_ascii=False, default=str)
    return s


_encode_str = json.encoder.encode_basestring  # C-accelerated JSON string literal


def _epoch_of_key(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class LogShip(Supervised):
    """Ship ``log_file`` to the object store (see module docstring)."""

    def __init__(
        self,
        link: Any,
        bot_id: str,
        log_file: str,
        work_dir: str,
        store: ObjectStore,
        publish: Publish | None = None,
        clock: Clock | None = None,
        watcher: Any = None,
        max_bytes: int = 256 * 1024,
        max_delay: float = 1.0,
        poll_interval: float = 1.0,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        read_chunk: int = 1 << 20,
        pump_limit: int = 8 << 20,
    ):
        super().__init__(link)
        self.bot_id = layout.check_bot_id(bot_id)
        log_file = os.path.abspath(log_file)
        self.log_dir = os.path.dirname(log_file)
        self.log_file = log_file
        self.work_dir = os.path.abspath(work_dir)
        self.store = store
        self.publish = publish
        self.clock = clock or default_clock()
        self.watcher = watcher
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        self.read_chunk = read_chunk
        self.pump_limit = pump_limit
        self.subject = layout.logs_subject(self.bot_id)
        self._backoff = Backoff(retry_base, retry_cap)
        self._cp_path = os.path.join(self.work_dir, CHECKPOINT_FILE)
        self._state = IDLE
        self._retry_gen = 0
        self._batch_gen = 0
        self._batch_timer: Any = None
        self._watch_cb: Any = None
        # the open generation
        self._f: Any = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of self._f
        self._epoch: int | None = None  # None: fresh start, decided at the first ship
        self._committed = 0  # everything before this offset is shipped and checkpointed
        self._buf = b""  # bytes read but not yet cut into lines; starts at self._buf_off
        self._buf_off = 0
        # not yet shipped: segments of whole lines (start offset, bytes, read at, is a final partial line)
        self._lines: list[tuple[int, bytes, float, bool]] = []
        self._pending_bytes = 0
        self._reship: dict | None = None  # inflight batch of the previous run, to cut again identically
        self._cp: dict | None = None
        self._seen_head = b""  # the generation's first bytes as last seen (copytruncate detection)
        self._rotated_away = False
        self._stats = {"batches": 0, "lines": 0, "bytes": 0, "failures": 0, "published": 0}

    # -- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        super().on_start()
        os.makedirs(self.work_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self._cp = self._load_checkpoint()
        if self.watcher is not None:
            ref, want = self.actor_ref, os.path.join(os.path.realpath(self.log_dir), os.path.basename(self.log_file))

            def on_change(ev: Any) -> None:
                if ev.overflow or want in ev.paths:
                    ref.tell(LogChanged())

            self._watch_cb = on_change
            self.watcher.register(self.log_dir, on_change)
        self.clock.call_later(self.poll_interval, self.actor_ref, _Poll())
        event(log, "logs.ship_started", bot_id=self.bot_id, log_file=self.log_file, checkpoint=self._cp)
        self._pump()

    def on_stop(self) -> None:
        self._close()
        super().on_stop()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        self._close()
        super().on_failure(exception_type, exception_value, traceback)

    def _close(self) -> None:
        if self.watcher is not None and self._watch_cb is not None:
            try:
                self.watcher.unregister(self.log_dir, self._watch_cb)
            except Exception:  # noqa: BLE001 - stopping must not fail on the watcher
                pass
        if self._f is not None:
            self._f.close()
            self._f = None

    # -- messages ----------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, LogChanged):
            self._pump()
        elif isinstance(message, _Poll):
            self.clock.call_later(self.poll_interval, self.actor_ref, _Poll())
            self._pump()
        elif isinstance(message, _BatchDue):
            if message.gen == self._batch_gen:
                self._batch_timer = None
                if self._state == IDLE and self._lines:
                    self._try_ship()
        elif isinstance(message, _Retry):
            if message.gen == self._retry_gen and self._state == RETRYING:
                self._state = IDLE
                if not self._lines or self._try_ship():
                    self._pump()
        return None

    # -- public (ask through the proxy) -----------------------------------------------------------
    def flush(self, final: bool = True, retry_for: float = 0.0) -> ShipResult:
        """Read everything there is and ship it now; ``final`` also ships a trailing partial line.

        Upload failures are retried for up to ``retry_for`` real seconds (final sync on exit).
        """
        deadline = time.monotonic() + retry_for
        while True:
            self._state = IDLE
            ok = self._pump(final=final, limit=None) and self._try_ship()
            if ok or time.monotonic() + 0.2 > deadline:
                break
            time.sleep(0.2)  # final sync only: the actor is stopping, nothing else waits on it
        return ShipResult(ok, self._epoch, self._committed, self._pending_line_count(),
                          None if ok else "upload failed; see logs.upload_failed events")

    def status(self) -> dict:
        return {"state": self._state, "epoch": self._epoch, "offset": self._committed,
                "pending_lines": self._pending_line_count(), **self._stats}

    def _pending_line_count(self) -> int:
        return sum(seg.count(b"\n") + (1 if partial else 0) for _, seg, _, partial in self._lines)

    # -- reading -----------------------------------------------------------------------------------
    def _pump(self, final: bool = False, limit: int | None = -1) -> bool:
        """Read what is new, cutting and shipping batches; False when a ship failed (retry scheduled)."""
        if self._state == RETRYING:
            return False
        if limit == -1:
            limit = self.pump_limit
        if not self._ensure_open():
            return True
        while True:
            change = self._generation_change()
            if change is None:
                return self._read_available(final, limit)
            # finish the current generation: everything still in it becomes lines and is shipped
            if change == "rotated" and not self._read_available(True, None):
                return False
            if change == "truncated" and not self._cut_lines(final=True):
                return False
            if not self._try_ship():
                return False
            if change == "rotated":
                self._f.close()
                self._f = None
                self._rotated_away = True  # whatever file appears next is a new generation
                if not self._open_path(new_generation=True):
                    return True
            else:
                self._f.seek(0)
                self._new_generation(0)
            event(log, "logs.new_generation", bot_id=self.bot_id, reason=change, epoch=self._epoch)

    def _ensure_open(self) -> bool:
        if self._f is not None:
            return True
        return self._open_path(new_generation=False)

    def _open_path(self, new_generation: bool) -> bool:
        try:
            f = open(self.log_file, "rb", buffering=0)
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        self._f, self._ident = f, (st.st_dev, st.st_ino)
        cp, self._cp = self._cp, None
        if new_generation or self._rotated_away:
            self._rotated_away = False
            self._new_generation(0)
        elif cp and (cp.get("dev"), cp.get("ino")) == self._ident and st.st_size >= cp.get("offset", 0) \
                and self._head(cp.get("head_len") or 0) == (cp.get("head"), cp.get("head_len")):
            self._epoch, self._committed = int(cp["epoch"]), int(cp["offset"])
            inflight = cp.get("inflight")
            if inflight and inflight.get("start") == self._committed and st.st_size >= inflight.get("end", 0):
                self._reship = inflight
            self._reset_reader(self._committed)
            f.seek(self._committed)
        elif cp:
            self._epoch = int(cp["epoch"])
            self._new_generation(0)  # the file was replaced or truncated while we were down
        else:
            self._reset_reader(0)
        return True

    def _new_generation(self, offset: int) -> None:
        if self._epoch is not None:
            self._epoch += 1
        self._committed = offset
        self._reset_reader(offset)
        self._reship = None
        st = os.fstat(self._f.fileno())
        self._ident = (st.st_dev, st.st_ino)
        if self._epoch is not None:
            self._write_checkpoint(None)

    def _reset_reader(self, offset: int) -> None:
        self._buf, self._buf_off = b"", offset
        self._lines, self._pending_bytes = [], 0
        self._seen_head = b""

    def _generation_change(self) -> str | None:
        try:
            st = os.stat(self.log_file)
        except FileNotFoundError:
            st = None  # deleted, not yet recreated: keep reading the old file
        if st is not None and (st.st_dev, st.st_ino) != self._ident:
            return "rotated"
        fd = self._f.fileno()
        if os.fstat(fd).st_size < self._buf_off + len(self._buf):
            return "truncated"
        # truncated and written again past our position (copytruncate): the first bytes changed
        head = os.pread(fd, _HEAD_BYTES, 0)
        if not head.startswith(self._seen_head):
            return "truncated"
        self._seen_head = head
        return None

    def _read_available(self, final: bool, limit: int | None) -> bool:
        read = 0
        while True:
            if not self._cut_lines(final=False):
                return False
            if limit is not None and read >= limit:
                self.actor_ref.tell(LogChanged())  # let other messages in, then go on
                return True
            chunk = self._f.read(self.read_chunk)
            if not chunk:
                break
            read += len(chunk)
            self._buf += chunk
        if final and self._buf:
            return self._cut_lines(final=True)
        return True

    def _cut_lines(self, final: bool) -> bool:
        """Move complete lines (and with ``final`` a trailing partial one) from the buffer to the batch,
        shipping whenever a batch is full. False when a ship failed.

        Works on whole runs of lines (no per-line Python work here): the batch is cut at the first
        newline at or after the byte where it reaches ``max_bytes`` (or where the re-shipped batch of
        the previous run ended).
        """
        buf, base = self._buf, self._buf_off
        i, n = 0, len(buf)
        ts = self.clock.time()
        added = False
        while i < n:
            if self._reship is not None:
                want = self._reship["end"] - (base + i)
            else:
                want = self.max_bytes - self._pending_bytes
            t = i + max(1, want) - 1
            j = buf.find(b"\n", t) if t < n else -1
            if j >= 0:
                self._lines.append((base + i, buf[i:j + 1], ts, False))
                self._pending_bytes += j + 1 - i
                i = j + 1
                self._buf, self._buf_off = buf[i:], base + i
                if not self._try_ship():
                    return False
                buf, base, i, n = self._buf, self._buf_off, 0, len(self._buf)
                continue
            k = buf.rfind(b"\n", i)
            if k >= i:
                self._lines.append((base + i, buf[i:k + 1], ts, False))
                self._pending_bytes += k + 1 - i
                added = True
                i = k + 1
            if final and i < n:
                self._lines.append((base + i, buf[i:], ts, True))
                self._pending_bytes += n - i
                added = True
                i = n
            break
        self._buf, self._buf_off = buf[i:], base + i
        if added and self._lines and self._batch_timer is None:
            self._batch_timer = self.clock.call_later(self.max_delay, self.actor_ref, _BatchDue(self._batch_gen))
        return True

    # -- shipping ----------------------------------------------------------------------------------
    def _try_ship(self) -> bool:
        """Ship the pending lines as one object; on failure schedule a retry and return False."""
        if not self._lines:
            return True
        if self._state == RETRYING:
            return False
        try:
            self._ship()
        except Exception as e:  # noqa: BLE001 - a store error never kills the actor
            self._stats["failures"] += 1
            event(log, "logs.upload_failed", logging.WARNING, bot_id=self.bot_id, error=str(e),
                  attempt=self._backoff.attempts + 1, offset=self._committed)
            self._state = RETRYING
            self._retry_gen += 1
            self.clock.call_later(self._backoff.next(), self.actor_ref, _Retry(self._retry_gen))
            return False
        self._state = IDLE
        self._backoff.reset()
        return True

    def _ship(self) -> None:
        segs = self._lines
        start = segs[0][0]
        end = segs[-1][0] + len(segs[-1][1])
        at = segs[0][2]
        if self._reship is not None and self._reship.get("start") == start:
            at = float(self._reship["at"])
        if self._epoch is None:
            self._epoch = self._first_epoch(at)
        epoch = self._epoch
        self._write_checkpoint({"start": start, "end": end, "at": at})
        records: list[str] = []
        for off, seg, ts, partial in segs:
            encode_segment(records, repr(float(ts)), epoch, off, seg, partial)
        body = ("\n".join(records) + "\n").encode()
        key = layout.log_key(self.bot_id, start, at, epoch)
        self.store.put_bytes(layout.LOGS_BUCKET, key, body, "application/x-ndjson")
        if self.publish is not None:
            for r in records:
                try:
                    self.publish(self.subject, r.encode())
                    self._stats["published"] += 1
                except Exception as e:  # noqa: BLE001 - live logs are best effort; the store has them
                    event(log, "logs.publish_failed", logging.WARNING, bot_id=self.bot_id, error=str(e))
                    break
        self._committed = end
        self._lines, self._pending_bytes = [], 0
        self._reship = None
        self._write_checkpoint(None)
        self._batch_gen += 1
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        self._stats["batches"] += 1
        self._stats["lines"] += len(records)
        self._stats["bytes"] += len(body)

    def _first_epoch(self, at: float) -> int:
        """Fresh start: one above the highest epoch already stored for the batch's day (0 if none)."""
        day = time.strftime("%Y%m%d", time.gmtime(at))
        top = -1
        for key in self.store.list(layout.LOGS_BUCKET, layout.logs_prefix(self.bot_id, day)):
            e = _epoch_of_key(key)
            if e is not None and e > top:
                top = e
        return top + 1

    # -- checkpoint --------------------------------------------------------------------------------
    def _head(self, n: int = 256) -> tuple[str, int]:
        """Digest of the file's first bytes: tells a new file from the old one when the inode is reused."""
        data = os.pread(self._f.fileno(), n, 0)
        return hashlib.sha256(data).hexdigest()[:32], len(data)

    def _write_checkpoint(self, inflight: dict | None) -> None:
        dev, ino = self._ident or (None, None)
        head, head_len = self._head() if self._f is not None else (None, 0)
        cp = {"epoch": self._epoch, "offset": self._committed, "dev": dev, "ino": ino, "head": head,
              "head_len": head_len, "inflight": inflight}
        atomic_write(self._cp_path, json.dumps(cp).encode())

    def _load_checkpoint(self) -> dict | None:
        try:
            with open(self._cp_path, "rb") as f:
                cp = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError as e:
            event(log, "logs.checkpoint_unreadable", logging.WARNING, bot_id=self.bot_id, error=str(e),
                  hint="starting a new epoch from offset 0")
            return None
        if not isinstance(cp, dict) or cp.get("epoch") is None:
            return None
        return cp
