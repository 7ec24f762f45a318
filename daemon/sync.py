"""``daemon sync``: a small supervisor running StateSync and LogShip for one bot, embeddable or standalone.

Embedded (the runtime's process backend, 1,000 bots in one process): ``BotSync.start(...)`` per bot;
every BotSync shares the process's single inotify watcher and timer thread. ``stop(final=True)`` does
the final sync of state and logs within a deadline, then stops the actors.

In a container: ``python -m daemon sync`` (``main(argv)``) reads ``BOT_ID``, ``STATE_PATH``,
``LOGS_PATH``, the object store's variables (``daemon.storage.from_env``) and optionally ``NATS_URL`` (live
log lines), runs until SIGTERM/SIGINT or until ``$LOGS_PATH/.done`` appears (bootstrap.sh writes it
when the bot exits), then syncs one last time within ``SYNC_FINAL_DEADLINE`` seconds (default 10) and
exits 0. Checkpoint and digest files go to ``SYNC_WORK_DIR`` (default: ``sync`` beside the logs dir).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import pykka

from daemon import jsonlog, layout
from daemon.clock import Clock
from daemon.jsonlog import event
from daemon.log_ship import LogShip
from daemon.state_sync import StateSync, default_clock
from daemon.storage import ObjectStore
from daemon.supervisor import ChildSpec, Supervisor
from daemon.watcher import DirWatcher, shared_watcher

log = logging.getLogger("daemon.sync")

DONE_FILE = ".done"
STATE_CHILD, LOGS_CHILD = "state", "logs"


class BotSync:
    """Handle on one bot's sync supervisor (StateSync + LogShip). Build with ``BotSync.start``."""

    def __init__(self, bot_id: str, sup: pykka.ActorRef):
        self.bot_id = bot_id
        self.sup = sup

    @classmethod
    def start(
        cls,
        bot_id: str,
        state_dir: str,
        log_file: str,
        work_dir: str,
        store: ObjectStore,
        publish: Callable[[str, bytes], Any] | None = None,
        clock: Clock | None = None,
        watcher: DirWatcher | None = None,
        on_give_up: Callable[[str], None] | None = None,
        state_options: dict | None = None,
        log_options: dict | None = None,
    ) -> "BotSync":
        """Start the supervisor and both actors; returns once they run (their first sync is done).

        ``state_options`` / ``log_options`` pass tuning keywords to StateSync / LogShip (debounce,
        max_bytes, ...). ``on_give_up(reason)`` is called if the actors keep crashing (5 in 30 s).
        """
        layout.check_bot_id(bot_id)
        clock = clock or default_clock()
        watcher = watcher or shared_watcher()
        os.makedirs(work_dir, exist_ok=True)
        s_opts, l_opts = dict(state_options or {}), dict(log_options or {})

        def start_state(link):
            return StateSync.start(link, bot_id, state_dir, work_dir, store, clock=clock, watcher=watcher, **s_opts)

        def start_logs(link):
            return LogShip.start(link, bot_id, log_file, work_dir, store, publish=publish, clock=clock,
                                 watcher=watcher, **l_opts)

        def gave_up(reason: str) -> None:
            event(log, "sync.gave_up", logging.ERROR, bot_id=bot_id, reason=reason)
            if on_give_up is not None:
                on_give_up(reason)

        sup = Supervisor.start(
            None,
            children=[ChildSpec(STATE_CHILD, start_state), ChildSpec(LOGS_CHILD, start_logs)],
            clock=clock, name=f"sync-{bot_id}", on_give_up=gave_up,
        )
        return cls(bot_id, sup)

    def child(self, child_id: str) -> pykka.ActorRef | None:
        try:
            return self.sup.proxy().child(child_id).get(timeout=5)
        except pykka.ActorDeadError:
            return None

    def is_alive(self) -> bool:
        return self.sup.is_alive()

    def flush(self, final: bool = False, deadline: float = 10.0) -> dict:
        """Sync state and logs now, both at once; results by child id (None when it did not answer)."""
        t_end = time.monotonic() + deadline
        retry_for = max(0.0, deadline - 1.0)
        futures = {}
        for cid in (STATE_CHILD, LOGS_CHILD):
            ref = self.child(cid)
            if ref is None:
                continue
            try:
                if cid == STATE_CHILD:
                    futures[cid] = ref.proxy().flush(retry_for=retry_for)
                else:
                    futures[cid] = ref.proxy().flush(final=final, retry_for=retry_for)
            except pykka.ActorDeadError:
                continue
        results: dict[str, Any] = {STATE_CHILD: None, LOGS_CHILD: None}
        for cid, fut in futures.items():
            try:
                results[cid] = fut.get(timeout=max(0.01, t_end - time.monotonic()))
            except pykka.Timeout:
                event(log, "sync.flush_timeout", logging.ERROR, bot_id=self.bot_id, child=cid, deadline=deadline)
            except Exception as e:  # noqa: BLE001 - report, keep stopping
                event(log, "sync.flush_failed", logging.ERROR, bot_id=self.bot_id, child=cid, error=repr(e))
        return results

    def stop(self, final: bool = True, deadline: float = 10.0) -> dict:
        """Final sync of both (when ``final``) within ``deadline`` seconds, then stop the actors."""
        t0 = time.monotonic()
        results = self.flush(final=True, deadline=deadline) if final else {}
        try:
            self.sup.stop(timeout=max(1.0, deadline - (time.monotonic() - t0)))
        except (pykka.Timeout, pykka.ActorDeadError):
            pass
        event(log, "sync.stopped", bot_id=self.bot_id, final=final, results={k: repr(v) for k, v in results.items()},
              seconds=round(time.monotonic() - t0, 3))
        return results


def _env_paths(env) -> tuple[str, str, str, str]:
    bot_id = env.get("BOT_ID", "")
    layout.check_bot_id(bot_id)
    state = env.get("STATE_PATH") or layout.STATE_PATH
    logs = env.get("LOGS_PATH") or layout.LOGS_PATH
    work = env.get("SYNC_WORK_DIR") or os.path.join(os.path.dirname(os.path.abspath(logs).rstrip("/")), "sync")
    return bot_id, state, logs, work


def main(argv: list[str] | None = None, env: dict | None = None) -> int:
    """``python -m daemon sync``: run until SIGTERM or the done-file, final sync, exit 0."""
    argparse.ArgumentParser(prog="daemon sync", description=__doc__.split("\n")[0]).parse_args(
        [a for a in (argv or []) if a != "sync"])
    env = os.environ if env is None else env
    if not logging.getLogger().handlers:
        jsonlog.setup(env.get("THE0_LOG_LEVEL", "INFO").upper())
    try:
        bot_id, state_dir, logs_dir, work_dir = _env_paths(env)
        from daemon.storage import from_env

        store = from_env(env)
        deadline = float(env.get("SYNC_FINAL_DEADLINE", "10"))
    except (ValueError, KeyError) as e:
        print(f"daemon sync: bad configuration: {e}", file=sys.stderr)
        return 2
    os.makedirs(logs_dir, exist_ok=True)
    publisher = None
    if env.get("NATS_URL"):
        from daemon.publish import Publisher

        publisher = Publisher(env["NATS_URL"], name=f"the0-sync-{bot_id}").start()

    stop = threading.Event()
    why: list[str] = []

    def on_signal(signum, _frame):
        why.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done_file = os.path.join(os.path.realpath(logs_dir), DONE_FILE)
    watcher = shared_watcher()

    def on_logs_change(ev) -> None:
        if ev.overflow or done_file in ev.paths:
            if os.path.exists(done_file):
                why.append("done-file")
                stop.set()

    gave_up: list[str] = []

    def on_give_up(reason: str) -> None:
        gave_up.append(reason)
        stop.set()

    watcher.register(logs_dir, on_logs_change)
    bs = BotSync.start(bot_id, state_dir, os.path.join(logs_dir, layout.BOT_LOG_FILE), work_dir, store,
                       publish=publisher, watcher=watcher, on_give_up=on_give_up)
    event(log, "sync.running", bot_id=bot_id, state_dir=state_dir, logs_dir=logs_dir, work_dir=work_dir)
    while not stop.wait(0.5):
        if os.path.exists(done_file):
            why.append("done-file")
            break
    event(log, "sync.final", bot_id=bot_id, reason=why[0] if why else "gave-up", deadline=deadline)
    code = 0
    if gave_up:
        code = 1
    else:
        res = bs.stop(final=True, deadline=deadline)
        ok_state = res.get(STATE_CHILD) is not None and res[STATE_CHILD].outcome in ("uploaded", "unchanged", "rejected")
        ok_logs = res.get(LOGS_CHILD) is not None and res[LOGS_CHILD].ok
        if not (ok_state and ok_logs):
            event(log, "sync.final_incomplete", logging.ERROR, bot_id=bot_id, state=repr(res.get(STATE_CHILD)),
                  logs=repr(res.get(LOGS_CHILD)))
    watcher.unregister(logs_dir, on_logs_change)
    if publisher is not None:
        publisher.close(2.0)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
