"""Benchmark: the process backend with real python3.11 bots.

1. start latency: ``backend.start(spec)`` from call to handle (code download + extract, state restore,
   exec, task.json, BotSync start) for N bots one after another; p50 and p95.
2. processes per bot: live processes carrying the bot's BOT_ID (target exactly 1).
3. adoption: a second backend instance over the same data dir (a restarted runtime) adopts all N bots
   with one ``list_managed()``; wall time.
4. stop: all N bots stopped at once (8 threads): wall time including each bot's final sync.

Bounded (default N = 30) and it stops every bot it starts (SIGKILL by process group as a last resort).

    .venv/bin/python bench/process_backend.py [N]
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.backends.base import RunSpec  # noqa: E402
from actors.backends.proc_reaper import is_alive, parse_ref  # noqa: E402
from actors.backends.process import ProcessBackend  # noqa: E402
from actors.messages import BotDefinition  # noqa: E402
from daemon.layout import CODE_BUCKET  # noqa: E402
from daemon.storage_local import LocalObjectStore  # noqa: E402

BOT = r'''
import json, os, time
def main(bot_id, config):
    n = 0
    while True:
        n += 1
        with open(os.path.join(os.environ["STATE_DIR"], "state.json"), "w") as f:
            json.dump({"n": n}, f)
        print("tick", n, flush=True)
        time.sleep(1)
'''


def bot_pids(bot_id: str) -> list[int]:
    needle = f"BOT_ID={bot_id}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if needle in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                    out.append(int(d))
            except OSError:
                pass
    return out


def main(n: int = 30) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="the0-bench-process-"))
    store = LocalObjectStore(tmp / "objects")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("main.py", BOT)
    store.put_bytes(CODE_BUCKET, "bench/bot.zip", buf.getvalue())
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    defs = [BotDefinition.from_document({"id": f"{prefix}-{i}", "config": {}, "custom": {
        "version": "1", "filePath": "bench/bot.zip",
        "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}}}, "realtime") for i in range(n)]
    b1 = ProcessBackend(tmp / "data", store, stop_grace=5.0)
    handles = []
    b2 = None
    try:
        lat = []
        for d in defs:
            t = time.perf_counter()
            handles.append(b1.start(RunSpec(d)))
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        p50, p95 = statistics.median(lat), lat[max(0, int(len(lat) * 0.95) - 1)]
        per_bot = max(len(bot_pids(d.id)) for d in defs)
        b1.close()
        b2 = ProcessBackend(tmp / "data", store, stop_grace=5.0)
        t = time.perf_counter()
        adopted = b2.list_managed()
        adopt_s = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda h: b2.stop(h, 5.0), adopted))
        stop_s = time.perf_counter() - t
        stopped = sum(1 for r in results if r is not None)
        rows = [
            (f"start p50 (ms), {n} bots in turn", round(p50, 1), "< 250", p50 < 250),
            (f"start p95 (ms), {n} bots in turn", round(p95, 1), "< 500", p95 < 500),
            ("processes per bot", per_bot, "1", per_bot == 1),
            (f"adopt {n} bots, one list_managed (s)", round(adopt_s, 2), "< 5", adopt_s < 5 and len(adopted) == n),
            (f"stop {n} bots incl. final sync (s)", round(stop_s, 2), "< 15", stop_s < 15 and stopped == n),
        ]
        print("| name | value | target | ok/MISS |")
        print("|---|---|---|---|")
        for name, value, target, ok in rows:
            print(f"| {name} | {value} | {target} | {'ok' if ok else 'MISS'} |")
    finally:
        for h in handles:
            pid, ticks = parse_ref(h.ref)
            if is_alive(pid, ticks):  # never signal a pid that now names another process
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        b1.close()
        if b2 is not None:
            b2.close()
        import pykka

        pykka.ActorRegistry.stop_all(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
