"""kill -9 of ``python -m daemon sync`` at random points while a bot writes 100,000 numbered lines.

A writer process appends the lines in paced bursts; the daemon is killed (SIGKILL) five times at random
points of its progress and started again each time; at the end bootstrap's done-file asks the last
daemon for its final sync. The log reader (daemon.logread) must then return every line exactly once, in
order: nothing lost, nothing doubled. Local object store (real files).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from daemon.logread import read_logs
from daemon.storage_local import LocalObjectStore
from tests.servers._util import wait_for

BOT = "killme"
LINES = 100_000

WRITER = r"""
import sys, time
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "a", buffering=1 << 16) as f:
    for start in range(0, n, 500):
        f.write("".join(f"line {i:06d} of the bot\n" for i in range(start, min(n, start + 500))))
        f.flush()
        time.sleep(0.02)  # wait-ok: paces the writer so kills land while it writes
"""


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "NATS_"))}
    env.update(BOT_ID=BOT, STATE_PATH=str(tmp / "state"), LOGS_PATH=str(tmp / "logs"),
               SYNC_WORK_DIR=str(tmp / "sync"), THE0_OBJECTS_DIR=str(tmp / "objects"),
               THE0_LOG_LEVEL="WARNING", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return env


def _committed(tmp: Path) -> int:
    try:
        with open(tmp / "sync" / "logship.checkpoint.json") as f:
            return int(json.load(f)["offset"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _daemon(tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daemon", "sync"], env=_env(tmp), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "ab"))


def test_every_line_exactly_once_after_repeated_kill_9(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    (tmp_path / "state").mkdir()
    (tmp_path / "logs").mkdir()
    log_file = tmp_path / "logs" / "bot.log"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log_file), str(LINES)])
    kills = 0
    procs = []
    try:
        for _ in range(5):
            d = _daemon(tmp_path)
            procs.append(d)
            target = _committed(tmp_path) + rng.randint(1, 400_000)
            # kill at a random point of its progress (or soon after the writer is done)
            wait_for(lambda: _committed(tmp_path) >= target or writer.poll() is not None, 60,
                     what="the daemon to make progress")
            if writer.poll() is not None:
                wait_for(lambda: _committed(tmp_path) >= target or d.poll() is not None
                         or _committed(tmp_path) >= os.path.getsize(log_file) - 1, 30, what="catch-up")
            d.send_signal(signal.SIGKILL)
            d.wait(10)
            kills += 1
        assert writer.wait(120) == 0
        final = _daemon(tmp_path)
        procs.append(final)
        (tmp_path / "logs" / ".done").touch()
        assert final.wait(60) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        for p in procs + [writer]:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert kills == 5
    records = read_logs(LocalObjectStore(tmp_path / "objects"), BOT)
    lines = [r["line"] for r in records]
    expected = [f"line {i:06d} of the bot" for i in range(LINES)]
    assert len(lines) == len(expected), f"{len(lines)} lines read back, {LINES} written"
    assert lines == expected
    # one epoch, offsets strictly increasing: re-shipped batches overwrote themselves
    assert {r["epoch"] for r in records} == {0}
    offs = [r["offset"] for r in records]
    assert offs == sorted(set(offs))
    # and in storage too: every object holds distinct lines (a re-ship hit the same key and boundaries)
    store = LocalObjectStore(tmp_path / "objects")
    raw = sum(len(store.get_bytes("bot-logs", k).splitlines()) for k in store.list("bot-logs", f"logs/{BOT}/"))
    assert raw == LINES
