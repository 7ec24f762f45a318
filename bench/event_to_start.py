"""NATS created event -> bot process started (embedded process backend), p50 and p99.

Target (issue 2): p50 < 50 ms, p99 < 200 ms. The real service runs as a child process with a real
nats-server; "started" is when the backend's task record appears, written right after the bot's exec.
"""
from __future__ import annotations

import os
import signal
import time

from _runtime import bot_pids, nats_request, pct, row, sleeper_doc, start_sleeper_world


N = int(os.environ.get("BENCH_EVENTS", "60"))


def main() -> None:
    nats, rt = start_sleeper_world("3600")
    data = rt.data_dir
    lat = []
    try:
        for i in range(N):
            bot_id = f"ev-{i}"
            record = data / "bots" / bot_id / "task.json"
            t0 = time.perf_counter()
            nats_request(nats.url, "the0.bot.created", sleeper_doc(bot_id))
            deadline = t0 + 10
            while not record.exists() and time.perf_counter() < deadline:
                time.sleep(0.0005)
            lat.append((time.perf_counter() - t0) * 1000)
        p50, p99 = pct(lat, 50), pct(lat, 99)
        row("NATS created event -> bot process started: p50", f"{p50:.1f} ms", "< 50 ms", p50 < 50)
        row("NATS created event -> bot process started: p99", f"{p99:.1f} ms", "< 200 ms", p99 < 200)
    finally:
        rt.stop()
        nats.stop()
        for i in range(N):
            for pid in bot_pids(f"ev-{i}"):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
