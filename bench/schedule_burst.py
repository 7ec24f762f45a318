"""1,000 schedules due in the same second: how late is each run launched?

1,000 ScheduleActors with the real RealClock (one timer thread) all fire at the same whole second T.
Launch delay = when ``backend.run_once`` is called minus T. The backend is a no-op fake (starting 1,000
containers is not what is measured). Each actor records its run with ``store.claim_run`` before the
launch; the run is measured twice: with an in-memory store (the actors' own cost) and with the real
SqliteStore (every claim a committed write). Target: max delay under 1000 ms.

Usage: .venv/bin/python bench/schedule_burst.py [--store memory|sqlite|both] [-n 1000]
Prints one table row per figure: | name | value | target | ok/MISS |
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pykka  # noqa: E402

from actors.backends.base import Backend, ExitResult, Handle, RunSpec, TaskNotFound, TaskState  # noqa: E402
from actors.messages import SCHEDULED, BotDefinition, GetStatus, Reconfigure  # noqa: E402
from actors.schedule import ScheduleActor  # noqa: E402
from actors.stores.base import SCHEDULES, Store  # noqa: E402
from daemon.clock import RealClock  # noqa: E402
from tests.fakes import MemoryStore  # noqa: E402

LEAD = 3.0  # seconds between re-arming the actors and the burst


class NoopBackend(Backend):
    """Launches nothing; notes when each run would have been launched."""

    name = "noop"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.launched: list[tuple[float, float]] = []  # (time.time() at run_once, scheduled_at)

    def run_once(self, spec: RunSpec) -> Handle:
        now = time.time()
        with self.lock:
            self.launched.append((now, spec.scheduled_at or 0.0))
        return Handle(spec.bot.id, "scheduled", f"noop-{spec.run_id}", spec.bot.config_hash, spec.run_id, now)

    def start(self, spec: RunSpec) -> Handle:
        raise NotImplementedError

    def stop(self, handle: Handle, grace: float) -> ExitResult | None:
        return ExitResult(code=0)

    def remove(self, handle: Handle) -> None:
        pass

    def inspect(self, handle: Handle) -> TaskState:
        raise TaskNotFound(handle.ref)

    def list_managed(self) -> list[Handle]:
        return []

    def logs(self, handle: Handle, tail: int = 100) -> list[str]:
        return []

    def watch(self, on_exit) -> None:
        pass


def document(i: int, cron: str) -> dict[str, Any]:
    return {
        "id": f"burst-{i:04d}",
        "next_execution_time": 9_999_999_999,  # nothing missed: no catch-up run at start
        "config": {"schedule": cron},
        "custom": {"version": "1", "filePath": "bots/b.zip",
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }


def definition(i: int, cron: str) -> BotDefinition:
    return BotDefinition.from_document(document(i, cron), SCHEDULED)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def burst(n: int, store: Store, label: str) -> None:
    clock = RealClock()
    backend = NoopBackend()
    # Start every actor on a schedule that is not due (Jan 1st), then point all of them at the same
    # whole second a few seconds ahead with Reconfigure: start-up cost stays out of the measurement.
    t0 = time.perf_counter()
    refs = [ScheduleActor.start(None, definition(i, "0 0 0 1 1 *"), backend, store, clock, "bench")
            for i in range(n)]
    for r in refs:
        r.ask(GetStatus(), timeout=120)
    started = time.perf_counter() - t0
    due = math.ceil(time.time() + LEAD)
    when = datetime.fromtimestamp(due, timezone.utc)
    cron = f"{when.second} {when.minute} {when.hour} {when.day} {when.month} *"
    futures = [r.ask(Reconfigure(definition(i, cron)), block=False) for i, r in enumerate(refs)]
    for f in futures:
        f.get(timeout=120)
    if time.time() >= due:
        print(f"| {label}: actors re-armed after the due second; raise LEAD | - | - | MISS |")
    while time.time() < due - 0.2:
        time.sleep(0.05)  # wait-ok: benchmark waiting for the burst
    cpu0 = time.process_time()
    deadline = due + 30
    while time.time() < deadline:
        with backend.lock:
            if len(backend.launched) >= n:
                break
        time.sleep(0.05)  # wait-ok: benchmark polling for the burst to complete
    burst_cpu = time.process_time() - cpu0
    with backend.lock:
        delays = [(at - sched) * 1000 for at, sched in backend.launched]
    claimed = sum(1 for i in range(n) if store.list_runs(f"burst-{i:04d}", limit=1))
    for r in refs:
        r.stop(block=False)
    pykka.ActorRegistry.stop_all(timeout=30)
    clock.stop()
    if len(delays) < n:
        print(f"| {label}: launched | {len(delays)}/{n} | {n}/{n} | MISS |")
        return
    worst = max(delays)
    print(f"| {n} schedules due in the same second ({label}): max launch delay | {worst:.0f} ms | < 1000 ms | "
          f"{'ok' if worst < 1000 else 'MISS'} |")
    print(f"| {n} schedules due in the same second ({label}): launch delay p50 | {percentile(delays, 50):.0f} ms | - | - |")
    print(f"| {n} schedules due in the same second ({label}): launch delay p99 | {percentile(delays, 99):.0f} ms | - | - |")
    print(f"| {n} schedules due in the same second ({label}): process CPU during the burst | {burst_cpu * 1000:.0f} ms | - | - |")
    print(f"| {n} ScheduleActors started and armed ({label}) | {started:.2f} s | - | - |")
    print(f"| {n} runs claimed in the store ({label}) | {claimed}/{n} | {n}/{n} | {'ok' if claimed == n else 'MISS'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=("memory", "sqlite", "both"), default="both")
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    threading.stack_size(256 * 1024)
    if args.store in ("memory", "both"):
        burst(args.n, MemoryStore(), "in-memory store, no-op backend")
    if args.store in ("sqlite", "both"):
        from actors.stores.sqlite import SqliteStore

        tmp = Path(tempfile.mkdtemp(prefix="the0-bench-"))
        store = SqliteStore(tmp / "runtime.sqlite")
        for i in range(args.n):  # the schedules' documents, so next_execution_time has a home
            store.create_doc(SCHEDULES, document(i, "0 0 0 1 1 *"))
        try:
            burst(args.n, store, "sqlite store, no-op backend")
        finally:
            store.close()


if __name__ == "__main__":
    main()
