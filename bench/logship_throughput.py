"""Benchmark: LogShip throughput, bot.log -> NDJSON objects in the local store, and the daemon's memory.

Runs the real ``python -m daemon sync`` as a child process (local object store, no NATS), waits until
it runs, then appends 500,000 lines (~60 bytes each, a tenth of them JSON objects) as fast as possible
and times until the checkpoint covers the whole file (wall clock, and per CPU-second of the daemon:
the latter does not depend on what else the machine runs). Targets: > 50,000 lines/s; peak RSS of the
daemon process (VmHWM) < 40 MB. A second run publishes every line to a real nats-server (started here
on a free 127.0.0.1 port). Bounded: 2 x 500,000 lines, then everything it started is stopped.

    .venv/bin/python bench/logship_throughput.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers._util import stop_process, wait_for  # noqa: E402

LINES = 500_000


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _committed(work: Path) -> int:
    try:
        return int(json.loads((work / "logship.checkpoint.json").read_text())["offset"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def run(tmp: Path, label: str, nats_url: str | None) -> list[str]:
    base = tmp / label
    for d in ("state", "logs", "sync"):
        (base / d).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "NATS_"))}
    env.update(BOT_ID="bench", STATE_PATH=str(base / "state"), LOGS_PATH=str(base / "logs"),
               SYNC_WORK_DIR=str(base / "sync"), THE0_OBJECTS_DIR=str(base / "objects"),
               THE0_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    if nats_url:
        env["NATS_URL"] = nats_url
    errlog = open(base / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "sync"], env=env, stderr=errlog)
    try:
        log_file = base / "logs" / "bot.log"
        log_file.write_text("ready\n")
        wait_for(lambda: _committed(base / "sync") >= 6, 30, what="the daemon to ship its first line")
        body = "".join(
            (json.dumps({"level": "info", "i": i, "msg": "order filled"}) if i % 10 == 0
             else f"{i:07d} price=101.25 qty=3 side=buy venue=test pad=xxxxxxxx") + "\n"
            for i in range(LINES))
        t0, cpu0 = time.monotonic(), _cpu_seconds(proc.pid)
        with open(log_file, "a") as f:
            f.write(body)
        size = os.path.getsize(log_file)
        wait_for(lambda: _committed(base / "sync") >= size, 120, interval=0.01, what="all lines shipped")
        dt = time.monotonic() - t0
        cpu = _cpu_seconds(proc.pid) - cpu0
        rss = _peak_rss_mb(proc.pid)
    finally:
        stop_process(proc)
    rate = LINES / dt
    cpu_rate = LINES / max(cpu, 1e-3)
    return [
        f"| logship lines per daemon CPU-second ({label}) | {cpu_rate:,.0f} | > 50,000 | {'ok' if cpu_rate > 50_000 else 'MISS'} |",
        f"| logship lines/s file->store ({label}) | {rate:,.0f} | > 50,000 | {'ok' if rate > 50_000 else 'MISS'} |",
        f"| daemon sync peak RSS ({label}) | {rss:.1f} MB | < 40 MB | {'ok' if rss < 40 else 'MISS'} |",
    ]


def main() -> None:
    from tests.servers.nats import NatsServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-logship-"))
    rows = []
    nats = None
    try:
        rows += run(tmp, "local store", None)
        (tmp / "nats").mkdir()
        nats = NatsServer(tmp / "nats").start()
        rows += run(tmp, "local store + NATS publish", nats.url)
    finally:
        if nats:
            nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| name | value | target | ok/MISS |")
    print("| --- | --- | --- | --- |")
    print(f"| host load average (1 min) during the run | {os.getloadavg()[0]:.1f} | (2 cores) | info |")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
