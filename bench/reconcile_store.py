"""Store side of the reconcile benchmark: how long each store takes to list 10,000 bot documents.

Prints one table row per figure: ``| name | value | target | ok/MISS |``. The reconcile target itself
("10,000 docs vs 10,000 live children with no changes < 1 s runtime CPU") belongs to the reconciler's
bench; the store's rows are informational (target ``-``), except how fast an outage surfaces.

MongoDB: MONGO_URI when set (fresh databases, dropped afterwards), else the Mongo wire server of
tests/servers/mongo.py (needs the 3.13 venv, see there). Run: ``.venv/bin/python -m bench.reconcile_store``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.stores.base import BOTS, Store, StoreUnavailable  # noqa: E402
from actors.stores.mongo import MongoStore  # noqa: E402
from actors.stores.sqlite import SqliteStore  # noqa: E402

OUTAGE_TARGET_S = 3.0


def bot_doc(i: int) -> dict:
    return {
        "id": f"bot-{i:05d}",
        "config": {"symbol": "BTC/USD", "interval": 60, "levels": [1, 2, 3], "enabled": True},
        "custom": {
            "version": "1.0.0",
            "filePath": f"user-{i % 97}/bot-{i:05d}/1.0.0.zip",
            "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py", "query": "query.py"}},
        },
    }


def row(name: str, value: str, target: str = "-", ok: bool | None = None) -> None:
    verdict = "-" if ok is None else ("ok" if ok else "MISS")
    print(f"| {name} | {value} | {target} | {verdict} |", flush=True)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of ``fn`` over ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def bench_list(name: str, store: Store, n: int, repeat: int, seed: Callable[[list[dict]], None]) -> None:
    docs = [bot_doc(i) for i in range(n)]
    w0 = time.perf_counter()
    seed(docs)
    row(f"{name}: write {n} bot docs (setup)", f"{time.perf_counter() - w0:.2f} s")
    got = store.list_docs(BOTS)
    assert len(got) == n, f"{name}: listed {len(got)} of {n}"
    wall, cpu = timed(lambda: store.list_docs(BOTS), repeat)
    row(f"{name}: list_docs {n} bot docs (wall)", f"{wall * 1000:.0f} ms")
    row(f"{name}: list_docs {n} bot docs (runtime CPU)", f"{cpu * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--mongo-n", type=int, default=None,
                   help="docs for MongoDB (default: -n with MONGO_URI, 1,000 on the wire server, whose every"
                        " insert scans the collection)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-mongo", action="store_true", help="only the sqlite store")
    args = p.parse_args(argv)

    print("| name | value | target | ok/MISS |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="the0-bench-store-") as tmp:
        sq = SqliteStore(Path(tmp) / "runtime.db")
        try:
            bench_list("sqlite", sq, args.n, args.repeat, lambda docs: [sq.upsert_doc(BOTS, d) for d in docs])
        finally:
            sq.close()
        if args.no_mongo:
            return 0

        from tests.servers.mongo import MongoWireServer, RelayedMongo, fresh_db_names

        if os.environ.get("MONGO_URI"):
            label, server = "mongo", RelayedMongo(os.environ["MONGO_URI"]).start()
            mongo_n = args.mongo_n or args.n
        else:
            label, server = "mongo wire server", MongoWireServer(Path(tmp) / "mongo", persistent=False).start()
            mongo_n = args.mongo_n or 1_000
        names = fresh_db_names()
        store = MongoStore(server.uri, names.bots_db, names.schedules_db)

        def seed(docs: list[dict]) -> None:  # written as the0 would: straight into its collection, in batches
            coll = store._docs[BOTS]  # noqa: SLF001 - the bench seeds the collection the store reads
            for i in range(0, len(docs), 100):
                coll.insert_many([dict(d) for d in docs[i:i + 100]])

        try:
            store.ping()  # the store's indexes exist before the documents (as in production)
            bench_list(label, store, mongo_n, args.repeat, seed)
            server.stop()
            w0 = time.perf_counter()
            try:
                store.list_docs(BOTS)
                row(f"{label}: stopped server -> StoreUnavailable", "no error raised", f"< {OUTAGE_TARGET_S:g} s", False)
            except StoreUnavailable:
                took = time.perf_counter() - w0
                row(f"{label}: stopped server -> StoreUnavailable", f"{took:.2f} s", f"< {OUTAGE_TARGET_S:g} s",
                    took < OUTAGE_TARGET_S)
            server.start()
            deadline = time.monotonic() + 60
            while True:
                try:
                    store.ping()
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)  # wait-ok: polling the restarted server
            for db in (names.bots_db, names.schedules_db):
                store._client.drop_database(db)  # noqa: SLF001 - bench cleanup on a shared server
        finally:
            store.close()
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
