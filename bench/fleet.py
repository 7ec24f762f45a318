"""1,000 realtime bots under one runtime (process backend, state sync and log shipping on).

Targets (issue 2): one process per bot and no more; runtime RSS < 300 MB; `ctl list` reply p99 < 100 ms;
idle CPU of the runtime < 5 % of a core. Each bot is a trivial long-running command (a script that execs
sleep). Bounded: creates BENCH_BOTS bots (default 1000), measures, stops them all.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from _runtime import (nats_request, pct, proc_cpu_seconds, proc_rss_mb, row,
                      sleeper_doc, start_sleeper_world)


N = int(os.environ.get("BENCH_BOTS", "1000"))
IDLE_WINDOW = float(os.environ.get("BENCH_IDLE_SECONDS", "20"))


def fleet_pids(prefix: str) -> list[int]:
    """Every process whose environment has a BOT_ID starting with ``prefix`` (one /proc scan)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"BOT_ID={prefix}".encode() in (p / "environ").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def main() -> None:
    nats, rt = start_sleeper_world("30")
    try:
        t0 = time.perf_counter()
        for i in range(N):
            nats_request(nats.url, "the0.bot.created", sleeper_doc(f"fleet-{i:04d}"))
        deadline = time.monotonic() + 900
        running = 0
        while time.monotonic() < deadline:
            bots = nats_request(nats.url, "the0.runtime.ctl.list", {})["bots"]
            running = sum(1 for b in bots if b["state"] == "running")
            if running >= N:
                break
            time.sleep(1)
        row(f"{N} bots created -> all running", f"{time.perf_counter() - t0:.1f} s", "-", running >= N)
        procs = len(fleet_pids("fleet-"))
        row(f"bot processes for {N} bots", str(procs), f"== {N}", procs == N)
        rss = proc_rss_mb(rt.proc.pid)
        row(f"runtime RSS with {N} bots", f"{rss:.0f} MB", "< 300 MB", rss < 300)
        lat = []
        for _ in range(100):
            t = time.perf_counter()
            nats_request(nats.url, "the0.runtime.ctl.list", {})
            lat.append((time.perf_counter() - t) * 1000)
        row("ctl list reply p50", f"{pct(lat, 50):.1f} ms", "-", None)
        row("ctl list reply p99", f"{pct(lat, 99):.1f} ms", "< 100 ms", pct(lat, 99) < 100)
        c0, w0 = proc_cpu_seconds(rt.proc.pid), time.monotonic()
        time.sleep(IDLE_WINDOW)
        idle = (proc_cpu_seconds(rt.proc.pid) - c0) / (time.monotonic() - w0) * 100
        row(f"runtime idle CPU with {N} bots", f"{idle:.1f} % of a core", "< 5 %", idle < 5)
    finally:
        rt.stop()
        nats.stop()
        for pid in fleet_pids("fleet-"):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
