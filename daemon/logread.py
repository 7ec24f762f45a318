"""Read a bot's shipped logs back from object storage, in order and without doubles.

LogShip (daemon.log_ship) writes each batch of lines once as an NDJSON object at
``bot-logs/logs/<id>/<YYYYMMDD>/<epoch:06d>-<offset:016d>.ndjson`` (layout.log_key). Each line of an
object is one record::

    {"ts": 1796400000.123, "epoch": 2, "offset": 4096, "line": "text without newline", "fields": {...}}

``ts`` is the unix time (float seconds) the line was read; ``epoch`` the log-file generation (bumped on
truncation/rotation and per new run); ``offset`` the byte offset of the line's start in that generation;
``fields`` only when the line is itself a JSON object. A batch re-shipped after a crash overwrites its
own key, and readers drop any further repeat of the same (day, epoch, offset), so delivery is
at-least-once in storage and exactly-once for readers. Records without epoch/offset are kept as they come.
"""
from __future__ import annotations

import json
import logging
import re

from daemon import layout
from daemon.jsonlog import event
from daemon.storage import ObjectStore

log = logging.getLogger("daemon.logread")

_KEY = re.compile(r"/(\d{8})/(\d+)-(\d+)\.ndjson$")
_DAY = re.compile(r"^\d{8}$")


def parse_log_key(key: str) -> tuple[str, int, int] | None:
    """(day, epoch, start offset) of a log object key, or None when the key is not one LogShip writes."""
    m = _KEY.search(key)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def log_objects(store: ObjectStore, bot_id: str, since_day: str | None = None) -> list[str]:
    """The bot's log object keys in reading order (day, epoch, offset), from ``since_day`` (YYYYMMDD) on."""
    if since_day is not None and not _DAY.match(since_day):
        raise ValueError(f"since_day {since_day!r}: use YYYYMMDD")
    keyed = []
    for key in store.list(layout.LOGS_BUCKET, layout.logs_prefix(bot_id)):
        parsed = parse_log_key(key)
        if parsed is None:
            continue
        if since_day is not None and parsed[0] < since_day:
            continue
        keyed.append((parsed, key))
    keyed.sort()
    return [k for _, k in keyed]


def _records(store: ObjectStore, key: str) -> list[dict]:
    data = store.get_bytes(layout.LOGS_BUCKET, key)
    if data is None:  # deleted between list and get
        return []
    out = []
    bad = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    if bad:
        event(log, "logs.bad_records", level=logging.WARNING, key=key, count=bad)
    return out


def _identity(day: str, rec: dict) -> tuple | None:
    epoch, offset = rec.get("epoch"), rec.get("offset")
    if isinstance(epoch, int) and isinstance(offset, int):
        return (day, epoch, offset)
    return None


def read_logs(store: ObjectStore, bot_id: str, tail: int | None = None, since_day: str | None = None) -> list[dict]:
    """The bot's log records in order, deduplicated by (day, epoch, offset); the last ``tail`` when given.

    With ``tail`` the objects are read newest first and reading stops once enough records are found.
    """
    if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
        raise ValueError(f"tail {tail!r}: use a whole number >= 0")
    if tail == 0:
        return []
    keys = log_objects(store, bot_id, since_day)
    if tail is not None:
        keys = list(reversed(keys))
    chunks: list[list[dict]] = []  # per object, in file order
    seen: set[tuple] = set()
    count = 0
    for key in keys:
        day = parse_log_key(key)[0]
        got = []
        for rec in _records(store, key):
            ident = _identity(day, rec)
            if ident is not None:
                if ident in seen:
                    continue
                seen.add(ident)
            got.append(rec)
        chunks.append(got)
        count += len(got)
        if tail is not None and count >= tail:
            break
    if tail is not None:
        chunks.reverse()
    records = [rec for got in chunks for rec in got]
    return records[-tail:] if tail is not None else records


def read_lines(store: ObjectStore, bot_id: str, tail: int | None = None, since_day: str | None = None) -> list[str]:
    """Just the text of each line (``record["line"]``), in order."""
    return [str(r.get("line", "")) for r in read_logs(store, bot_id, tail=tail, since_day=since_day)]
