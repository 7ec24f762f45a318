"""daemon.logread against a real local object store: order, dedup by (day, epoch, offset), tail, days."""
from __future__ import annotations

import calendar
import json

import pytest

from daemon import layout
from daemon.logread import log_objects, parse_log_key, read_lines, read_logs
from daemon.storage_local import LocalObjectStore

DAY1 = calendar.timegm((2026, 12, 3, 10, 0, 0))
DAY2 = calendar.timegm((2026, 12, 4, 10, 0, 0))


class CountingStore(LocalObjectStore):
    """A real local store that counts object reads (to show tail reads only the newest objects)."""

    gets = 0

    def get_bytes(self, bucket, key):
        self.gets += 1
        return super().get_bytes(bucket, key)


@pytest.fixture
def store(tmp_path):
    return CountingStore(tmp_path / "objects")


def rec(epoch: int, offset: int, line: str, ts: float = DAY1) -> dict:
    return {"ts": ts, "epoch": epoch, "offset": offset, "line": line}


def ship(store, bot: str, at: float, epoch: int, lines: list[tuple[int, str]], extra: bytes = b"") -> str:
    """Write one batch the way LogShip does: one NDJSON object at layout.log_key(bot, first offset, at, epoch)."""
    key = layout.log_key(bot, lines[0][0], at=at, epoch=epoch)
    body = b"".join(json.dumps(rec(epoch, off, text, at)).encode() + b"\n" for off, text in lines) + extra
    store.put_bytes(layout.LOGS_BUCKET, key, body)
    return key


def test_keys_parse_and_sort_by_day_epoch_offset(store):
    k = layout.log_key("bot-1", 4096, at=DAY1, epoch=2)
    assert parse_log_key(k) == ("20261203", 2, 4096)
    assert parse_log_key("logs/bot-1/20261203/readme.txt") is None
    ship(store, "bot-1", DAY2, 0, [(0, "d2e0")])
    ship(store, "bot-1", DAY1, 1, [(0, "d1e1")])
    ship(store, "bot-1", DAY1, 0, [(100, "d1e0b")])
    ship(store, "bot-1", DAY1, 0, [(0, "d1e0a")])
    assert read_lines(store, "bot-1") == ["d1e0a", "d1e0b", "d1e1", "d2e0"]
    assert [parse_log_key(k)[1:] for k in log_objects(store, "bot-1")] == [(0, 0), (0, 100), (1, 0), (0, 0)]


def test_records_are_returned_whole_and_in_line_order(store):
    ship(store, "bot-1", DAY1, 0, [(0, "first"), (6, '{"level": "info"}'), (24, "third")])
    got = read_logs(store, "bot-1")
    assert [r["line"] for r in got] == ["first", '{"level": "info"}', "third"]
    assert got[0] == {"ts": DAY1, "epoch": 0, "offset": 0, "line": "first"}


def test_overlapping_batches_are_deduplicated(store):
    # A batch re-cut after a crash with other boundaries repeats lines 10 and 20: each is read once.
    ship(store, "bot-1", DAY1, 0, [(0, "a"), (10, "b"), (20, "c")])
    ship(store, "bot-1", DAY1, 0, [(10, "b"), (20, "c"), (30, "d")])
    assert read_lines(store, "bot-1") == ["a", "b", "c", "d"]
    assert read_lines(store, "bot-1", tail=3) == ["b", "c", "d"]


def test_same_offsets_in_other_epochs_or_days_are_not_doubles(store):
    ship(store, "bot-1", DAY1, 0, [(0, "run1")])
    ship(store, "bot-1", DAY1, 1, [(0, "run2 after truncation")])
    ship(store, "bot-1", DAY2, 0, [(0, "next day's first run")])
    assert read_lines(store, "bot-1") == ["run1", "run2 after truncation", "next day's first run"]


def test_tail_reads_only_the_newest_objects(store):
    for i in range(20):
        ship(store, "bot-1", DAY1, 0, [(i * 100 + j * 10, f"l{i}.{j}") for j in range(5)])
    store.gets = 0
    assert read_lines(store, "bot-1", tail=7) == ["l18.3", "l18.4"] + [f"l19.{j}" for j in range(5)]
    assert store.gets == 2
    assert len(read_logs(store, "bot-1")) == 100
    assert read_logs(store, "bot-1", tail=0) == []
    assert len(read_logs(store, "bot-1", tail=1000)) == 100


def test_since_day_and_other_bots(store):
    ship(store, "bot-1", DAY1, 0, [(0, "old")])
    ship(store, "bot-1", DAY2, 0, [(0, "new")])
    ship(store, "bot-10", DAY2, 0, [(0, "someone else")])
    assert read_lines(store, "bot-1", since_day="20261204") == ["new"]
    assert read_lines(store, "bot-1") == ["old", "new"]
    assert read_lines(store, "nobody") == []


def test_bad_lines_are_skipped_and_records_without_identity_kept(store):
    ship(store, "bot-1", DAY1, 0, [(0, "good")], extra=b"not json\n[1,2]\n\n" + json.dumps({"line": "bare"}).encode() + b"\n")
    assert read_lines(store, "bot-1") == ["good", "bare"]


@pytest.mark.parametrize("kwargs", [{"tail": -1}, {"tail": "5"}, {"since_day": "2026-12-04"}])
def test_bad_arguments_are_refused(store, kwargs):
    with pytest.raises(ValueError):
        read_logs(store, "bot-1", **kwargs)


def test_bad_bot_id_is_refused(store):
    with pytest.raises(ValueError, match="invalid bot id"):
        read_logs(store, "../etc")
