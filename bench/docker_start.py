"""Benchmark: what DockerBackend adds on top of dockerd when starting containers.

1. start latency: ``backend.start(spec)`` (call -> container running, handle returned) against the same
   create+start done directly with the docker SDK and the identical container settings; p50 of each,
   and the backend's overhead p50 (target < 50 ms).
2. 100 bots at once: 100 ``backend.start`` calls from a pool of 16 threads against dockerd starting the
   same 100 containers alone (same pool); the ratio of wall times (target < 2x).

Bounded (20 + 20 sequential starts, 2 x 100 concurrent) and it removes every container it made. Needs
dockerd (started here when none answers, stopped again) and the python3.11 runtime image (built with
images/build.sh --base local when missing). The containers' object store does not resolve and their
network is "none": the daemon inside fails fast, which does not matter here, only the start does.

    .venv/bin/python bench/docker_start.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docker.types import LogConfig  # noqa: E402

from actors.backends.base import RunSpec  # noqa: E402
from actors.backends.docker import DockerBackend  # noqa: E402
from actors.config import load  # noqa: E402
from actors.messages import REALTIME, BotDefinition  # noqa: E402
from tests.servers.docker import DockerDaemon, build_test_images  # noqa: E402

SEQUENTIAL = 20
BURST = 100
POOL = 16
PREFIX = f"bench{uuid.uuid4().hex[:6]}"


def row(name: str, value: str, target: str, ok: bool) -> None:
    print(f"| {name} | {value} | {target} | {'ok' if ok else 'MISS'} |", flush=True)


def bot(i: int | str) -> BotDefinition:
    return BotDefinition.from_document({
        "id": f"{PREFIX}-{i}",
        "config": {},
        "custom": {"version": "1", "filePath": "bench/code.zip",
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }, REALTIME)


def plain_start(client, backend: DockerBackend, spec: RunSpec, name: str) -> str:
    """What `docker run -d` makes dockerd do: create + start of the same container, nothing else."""
    kw = backend.create_kwargs(spec)
    kw["name"] = name
    kw["labels"] = {"the0.bench": PREFIX}
    api = client.api
    host = api.create_host_config(
        read_only=True, tmpfs=kw["tmpfs"], cap_drop=kw["cap_drop"], security_opt=kw["security_opt"],
        mem_limit=kw["mem_limit"], memswap_limit=kw["memswap_limit"], nano_cpus=kw["nano_cpus"],
        pids_limit=kw["pids_limit"], network_mode=kw["network_mode"],
        log_config=LogConfig(type=kw["log_config"]["type"], config=kw["log_config"]["config"]),
    )
    cid = api.create_container(image=kw["image"], command=kw["command"], name=name, labels=kw["labels"],
                               environment=kw["environment"], user=kw["user"], host_config=host)["Id"]
    api.start(cid)
    return cid


def main() -> int:
    daemon = DockerDaemon(Path(tempfile.mkdtemp(prefix="bench-dockerd-"))).ensure()
    try:
        build_test_images(("python3.11",))
        cfg = load(env={
            "THE0_BACKEND": "docker", "THE0_DOCKER_NETWORK": "none",
            "MINIO_ENDPOINT": "minio.invalid:9000", "MINIO_ACCESS_KEY": "bench", "MINIO_SECRET_KEY": "bench",
        })
        backend = DockerBackend(cfg)
        client = daemon.client()
        try:
            return run(backend, client)
        finally:
            backend.close()
            for c in client.containers.list(all=True, filters={"label": f"the0.bench={PREFIX}"}):
                c.remove(force=True)
            for h in backend.list_managed():
                if h.bot_id.startswith(PREFIX):
                    backend.remove(h)
    finally:
        daemon.stop()


def run(backend: DockerBackend, client) -> int:
    spec0 = RunSpec(bot("warm"))
    backend.remove(backend.start(spec0))  # warm caches (image, network) before measuring

    plain, ours = [], []
    for i in range(SEQUENTIAL):
        spec = RunSpec(bot(f"seq{i}"))

        def do_plain() -> None:
            t = time.perf_counter()
            cid = plain_start(client, backend, spec, f"{PREFIX}-plain-{i}")
            plain.append(time.perf_counter() - t)
            client.api.remove_container(cid, force=True)

        def do_ours() -> None:
            t = time.perf_counter()
            h = backend.start(spec)
            ours.append(time.perf_counter() - t)
            backend.remove(h)

        for step in ((do_plain, do_ours) if i % 2 == 0 else (do_ours, do_plain)):  # alternate: no order bias
            step()
    p50_plain, p50_ours = statistics.median(plain), statistics.median(ours)
    overhead_ms = (p50_ours - p50_plain) * 1000
    row("docker start p50, plain SDK create+start", f"{p50_plain * 1000:.0f} ms", "-", True)
    row("docker start p50, backend.start", f"{p50_ours * 1000:.0f} ms", "-", True)
    row("docker backend overhead p50 (start -> running)", f"{overhead_ms:.1f} ms", "< 50 ms", overhead_ms < 50)

    with ThreadPoolExecutor(POOL) as pool:
        t = time.perf_counter()
        ids = list(pool.map(lambda i: plain_start(client, backend, RunSpec(bot(f"b{i}")), f"{PREFIX}-pb-{i}"),
                            range(BURST)))
        plain_wall = time.perf_counter() - t
        list(pool.map(lambda cid: client.api.remove_container(cid, force=True), ids))

        t = time.perf_counter()
        handles = list(pool.map(lambda i: backend.start(RunSpec(bot(f"b{i}"))), range(BURST)))
        ours_wall = time.perf_counter() - t
        list(pool.map(backend.remove, handles))
    ratio = ours_wall / plain_wall
    row(f"{BURST} containers at once, dockerd alone", f"{plain_wall:.1f} s", "-", True)
    row(f"{BURST} bots at once, backend.start", f"{ours_wall:.1f} s", "-", True)
    row(f"{BURST} bots at once vs dockerd alone", f"{ratio:.2f}x", "< 2x", ratio < 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
