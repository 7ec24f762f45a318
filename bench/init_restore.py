"""Benchmark: ``daemon init`` (download + safe extraction + state restore) and the deterministic state tar.

Code: a 20 MB zip of 2,000 files (half random, half text); state: 10 MB in 500 files. For the local
store and the real S3 server (moto_server on a free 127.0.0.1 port, stopped again): the median of 5
``daemon.init.prepare`` runs into fresh dirs. Then ``make_state_tar`` of the state dir and a 10,000-entry
refused zip (how fast a bomb is turned away). Targets are for a 2-core CI machine.

    .venv/bin/python bench/init_restore.py
"""
from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon import init, layout  # noqa: E402
from daemon.archive import ArchiveError, extract_zip, make_state_tar  # noqa: E402
from daemon.storage_local import LocalObjectStore  # noqa: E402
from daemon.storage_s3 import S3ObjectStore  # noqa: E402
from tests.servers.s3 import S3Server  # noqa: E402

RUNS = 5


def row(name: str, value: float, target: float, unit: str = "s") -> None:
    ok = "ok" if value <= target else "MISS"
    print(f"| {name} | {value:.3f} {unit} | < {target} {unit} | {ok} |", flush=True)


def code_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("main.py", "def main(bot_id, config):\n    pass\n")
        for i in range(1999):
            data = os.urandom(10_000) if i % 2 else (b"x = %d\n" % i) * 1400
            zf.writestr(f"pkg{i % 20}/mod{i}.py", data)
    return buf.getvalue()


def state_dir(root: Path) -> Path:
    for i in range(500):
        p = root / f"d{i % 10}" / f"s{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(20_000))
    return root


def bench_prepare(name: str, store, tmp: Path, code: bytes, state_tar: bytes) -> None:
    store.put_bytes(layout.CODE_BUCKET, "bench/code.zip", code)
    store.put_bytes(layout.STATE_BUCKET, layout.state_key("bench-bot"), state_tar)
    times = []
    for i in range(RUNS):
        base = tmp / f"{name}-{i}"
        t = time.perf_counter()
        init.prepare("bench-bot", "bench/code.zip", "python3.11", "main.py", base / "bot", base / "state", store)
        times.append(time.perf_counter() - t)
    row(f"init prepare, {name} store (20 MB / 2,000-file code + 10 MB state), median", statistics.median(times), 3.0)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        code = code_zip()
        src = state_dir(tmp / "state-src")
        t = time.perf_counter()
        state_tar = make_state_tar(src)
        row("make_state_tar of 10 MB / 500 files", time.perf_counter() - t, 1.0)

        bench_prepare("local", LocalObjectStore(tmp / "objects"), tmp, code, state_tar)
        srv = S3Server(tmp).start()
        try:
            bench_prepare("s3", S3ObjectStore.from_env(srv.env), tmp, code, state_tar)
        finally:
            srv.stop()

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i in range(10_000):
                zf.writestr(f"f{i}", b"x")
        t = time.perf_counter()
        try:
            extract_zip(buf.getvalue(), tmp / "bomb")
        except ArchiveError:
            pass
        row("refuse a 10,000-entry zip", time.perf_counter() - t, 0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
