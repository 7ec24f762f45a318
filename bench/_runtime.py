"""Helpers for benchmarks that run the real service as a child process (see tests/integration)."""
from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_runtime_process import RuntimeProcess, bot_pids, nats_request  # noqa: E402,F401
from tests.servers.nats import NatsServer  # noqa: E402,F401


def sleeper_zip() -> bytes:
    """A 'compiled' bot that is one process doing nothing: a script that execs sleep."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("bot")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\nexec sleep 100000\n")
    return buf.getvalue()


def sleeper_doc(bot_id: str, file_path: str = "sleeper/code.zip") -> dict:
    return {"id": bot_id, "config": {}, "custom": {"version": "1", "filePath": file_path,
            "config": {"runtime": "cpp", "entrypoints": {"bot": "bot"}}}}


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def row(name: str, value: str, target: str, ok: bool | None) -> None:
    print(f"| {name} | {value} | {target} | {'-' if ok is None else ('ok' if ok else 'MISS')} |", flush=True)


def start_sleeper_world(reconcile_interval: str) -> tuple[NatsServer, RuntimeProcess]:
    """A nats-server and the service (child process) with the sleeper bot's code in its local store."""
    import tempfile

    from daemon import layout
    from daemon.storage_local import LocalObjectStore

    tmp = Path(tempfile.mkdtemp())
    (tmp / "nats").mkdir()
    nats = NatsServer(tmp / "nats").start()
    data = tmp / "the0"
    LocalObjectStore(str(data / "objects")).put_bytes(layout.CODE_BUCKET, "sleeper/code.zip", sleeper_zip())
    rt = RuntimeProcess(data, nats.url, {"THE0_RECONCILE_INTERVAL": reconcile_interval,
                                         "THE0_LOG_LEVEL": "WARNING"}).start()
    return nats, rt
