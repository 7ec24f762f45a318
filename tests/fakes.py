"""Test doubles shared by unit tests.

``FakeBackend`` is an in-memory stand-in for the Backend interface that records every call, so unit
tests can count exactly how many times a task was started or stopped. The real backends run against real
processes, dockerd and a kube-apiserver in tests/integration.
"""
from __future__ import annotations

import threading

from actors.backends.base import Backend, BackendError, Capabilities, ExitResult, Handle, TaskState
from actors.messages import BotDefinition


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
