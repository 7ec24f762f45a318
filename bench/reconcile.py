"""Full reconcile of 10,000 bot documents against 10,000 live children with no changes: runtime CPU.

Target (issue 4): under 1 s of CPU for one full pass. Real SqliteStore and real BotActors under a real
Supervisor; the backend is the in-memory FakeBackend (starting 10,000 processes is not what is measured).
Prints one table row per figure: | name | value | target | ok/MISS |
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.bot import BotActor  # noqa: E402
from actors.config import RestartDefaults  # noqa: E402
from actors.directory import Directory  # noqa: E402
from actors.messages import REALTIME  # noqa: E402
from actors.reconciler import ReconcileNow, Reconciler  # noqa: E402
from actors.status import StatusBoard  # noqa: E402
from actors.stores.base import BOTS  # noqa: E402
from actors.stores.sqlite import SqliteStore  # noqa: E402
from daemon.clock import ManualClock  # noqa: E402
from daemon.supervisor import ChildSpec, Supervisor  # noqa: E402
from tests.fakes import FakeBackend, bot_doc  # noqa: E402

N = int(os.environ.get("BENCH_BOTS", "10000"))


def main() -> None:
    threading.stack_size(256 * 1024)
    tmp = Path(tempfile.mkdtemp())
    store = SqliteStore(tmp / "db.sqlite")
    for i in range(N):
        store.create_doc(BOTS, bot_doc(f"bot-{i:05d}", symbol="BTC"))
    clock = ManualClock()
    backend = FakeBackend()
    board, directory = StatusBoard(), Directory()
    bots = Supervisor.start(None, [], clock=clock, intensity=50, name="bots")
    scheds = Supervisor.start(None, [], clock=clock, intensity=50, name="schedules")

    def spec(kind, d, adopt):
        return ChildSpec(d.id, lambda link: BotActor.start(link, d, backend, clock, RestartDefaults(), board,
                                                           directory, adopt=adopt))

    rec = Reconciler.start(None, store, backend, clock, 3600.0, lambda k: bots if k == REALTIME else scheds, spec)
    t0 = time.perf_counter()
    first = rec.ask(ReconcileNow(), timeout=600)
    t_first = time.perf_counter() - t0
    assert first["started"] == N, first
    cpu0, wall0 = time.process_time(), time.perf_counter()
    again = rec.ask(ReconcileNow(), timeout=600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert again == {"started": 0, "stopped": 0, "reconfigured": 0}, again
    print(f"| reconcile {N} docs vs {N} live children, no changes: CPU | {cpu:.3f} s | < 1 s | {'ok' if cpu < 1 else 'MISS'} |")
    print(f"| reconcile {N} docs, no changes: wall | {wall:.3f} s | - | - |")
    print(f"| first pass spawning {N} BotActors (fake backend): wall | {t_first:.1f} s | - | - |")
    rec.stop()
    for sup in (bots, scheds):  # supervisors first, so their children are not restarted on the way down
        sup.stop(timeout=600)
    store.close()


if __name__ == "__main__":
    main()
