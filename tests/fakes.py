"""Test doubles shared by unit tests.

``MemoryStore`` keeps scheduled-run records in a dict (thread-safe) for actor unit tests and benches that
must not measure a database; the real stores pass one contract suite in tests/integration.
``FakeBackend`` is an in-memory stand-in for the Backend interface that records every call, so unit
tests can count exactly how many times a task was started or stopped. The real backends run against real
processes, dockerd and a kube-apiserver in tests/integration.
"""
from __future__ import annotations

import threading
from typing import Any

from actors.backends.base import Backend, BackendError, Capabilities, ExitResult, Handle, RunSpec, TaskState
from actors.messages import BotDefinition
from actors.stores.base import Store


def bot_doc(bot_id="b1", **config):
    return {
        "id": bot_id,
        "config": dict(config),
        "custom": {"version": "1", "filePath": f"{bot_id}/code.zip",
                   "config": {"runtime": "python3.11", "entrypoints": {"bot": "main.py"}}},
    }


def defn(bot_id="b1", **config) -> BotDefinition:
    return BotDefinition.from_document(bot_doc(bot_id, **config), "realtime")


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, restarts_bots=False, fail_starts=0):
        self.capabilities = Capabilities(restarts_bots=restarts_bots)
        self.lock = threading.Lock()
        self.started: list[RunSpec] = []
        self.stopped: list[Handle] = []
        self.removed: list[Handle] = []
        self.running: dict[str, Handle] = {}
        self.fail_starts = fail_starts
        self.n = 0

    def start(self, spec):
        with self.lock:
            if self.fail_starts:
                self.fail_starts -= 1
                raise BackendError("image missing")
            if spec.bot.id in self.running:
                return self.running[spec.bot.id]
            self.n += 1
            h = Handle(spec.bot.id, "realtime", f"task-{self.n}", spec.bot.config_hash)
            self.started.append(spec)
            self.running[spec.bot.id] = h
            return h

    def run_once(self, spec):
        raise NotImplementedError

    def stop(self, handle, grace):
        with self.lock:
            self.stopped.append(handle)
            self.running.pop(handle.bot_id, None)
        return ExitResult(143)

    def remove(self, handle):
        self.removed.append(handle)

    def inspect(self, handle):
        return TaskState(running=handle.bot_id in self.running)

    def list_managed(self):
        return list(self.running.values())

    def logs(self, handle, tail=100):
        return []

    def watch(self, on_exit):
        pass

    def die(self, bot_id):
        """The task ends by itself (the test then tells the actor, as the event watcher would)."""
        with self.lock:
            return self.running.pop(bot_id)


class MemoryStore(Store):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, dict[str, Any]] = {}
        self.next_execution: dict[str, float | None] = {}
        self.claim_error: Exception | None = None

    def claim_run(self, run: dict[str, Any]) -> bool:
        with self.lock:
            if self.claim_error is not None:
                raise self.claim_error
            if run["run_id"] in self.runs:
                return False
            self.runs[run["run_id"]] = dict(run)
            return True

    def finish_run(self, run_id: str, fields: dict[str, Any]) -> None:
        with self.lock:
            if run_id in self.runs:
                self.runs[run_id].update(fields)

    def list_runs(self, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            runs = [dict(r) for r in self.runs.values() if r["schedule_id"] == schedule_id]
        return sorted(runs, key=lambda r: r["scheduled_at"], reverse=True)[:limit]

    def set_next_execution(self, schedule_id: str, when: float | None) -> None:
        with self.lock:
            self.next_execution[schedule_id] = when

    def list_docs(self, collection):
        return []

    def get_doc(self, collection, doc_id):
        return None

    def create_doc(self, collection, doc):
        return True

    def upsert_doc(self, collection, doc):
        pass

    def delete_doc(self, collection, doc_id):
        return False

    def put_status(self, bot_id, status):
        pass

    def get_status(self, bot_id):
        return None

    def delete_status(self, bot_id):
        pass

    def ping(self):
        pass
