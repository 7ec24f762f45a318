"""ScheduleActor: one enabled cron schedule; fires scheduled runs, records them, keeps their history.

States: ``idle`` (no run active) and ``running`` (one run or more active; several only with
``concurrency = allow`` or while a replaced run is stopping).

A fire at scheduled time T (unix seconds, whole):

1. run id = ``layout.run_id_for(schedule id, T)``: deterministic, so a crashed actor, a restarted runtime
   or a second replica sharing the store compute the same id;
2. concurrency: ``forbid`` (default) skips the fire while a run is active and records the skip in the
   history; ``allow`` starts anyway; ``replace`` stops the active runs first;
3. ``store.claim_run`` records the run BEFORE it starts; False means it is already recorded (run by
   someone else, or already run) and nothing starts; a store error retries the claim every 5 s while
   the fire is within ``starting_deadline``;
4. ``backend.run_once``; an error is recorded as reason ``start_failed: ...``, the actor lives on.

Exits arrive as ``messages.Exited`` (routed by ``actors.directory``), complete the run record and
remove the task. An optional ``run_timeout`` stops a run (reason ``timeout``).

After downtime (on start): at most ONE catch-up run, for the latest fire time at or before now
(``prev_at_or_before``), only when it is at most ``starting_deadline`` seconds old and has no run record
(the claim decides). Older missed fires are logged (``schedule.missed``), never run. A fire time from
before the schedule existed is not "missed": when the schedule's document carries ``next_execution_time``
(the0 sets it; this actor keeps it current) later than that fire time, there is no catch-up.

The0's ``next_execution_time`` is written on start and Reconfigure, and 2 s after each fire (off the
fire's path, so 1,000 schedules due together are not slowed by 1,000 extra writes).

Timers come from ``daemon.clock`` and carry a token; a timer whose token is not current is ignored.
Long waits are armed in steps of at most an hour, and the wall clock is re-read at each step, so a host
clock change or a long sleep does not shift the fire time.

Kubernetes (``backend.capabilities.fires_schedules``): the cluster fires the CronJob; this actor calls
``backend.ensure_schedule`` on start and on Reconfigure (retrying every 30 s on error), still keeps
``next_execution_time`` current, and records exits the backend reports. The CronJob is removed by the
reconciler when the schedule is deleted, never from ``on_stop`` (a stop may be a runtime shutdown).

An actor's crash is not a run's crash: active runs keep going when the actor stops or fails; the next
incarnation adopts them (``backend.list_managed``, or the ``adopt`` callable the runtime passes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from actors.backends.base import Backend, Handle, RunSpec, TaskNotFound
from actors.cron import CronError, CronSchedule, parse_cron
from actors.messages import BotDefinition, Exited, GetStatus, Reconfigure, RunNow, Timer
from actors.stores.base import Store
from daemon.clock import Clock, TimerHandle
from daemon.jsonlog import event
from daemon.layout import run_id_for
from daemon.supervisor import Link, Supervised

log = logging.getLogger(__name__)

KIND = "scheduled"
IDLE, RUNNING = "idle", "running"

FIRE = "fire"
CLAIM_RETRY = "claim-retry"
ENSURE_RETRY = "ensure-retry"
NEXT_EXECUTION = "next-execution"
TIMEOUT_PREFIX = "timeout:"

MAX_TIMER_STEP = 3600.0  # re-read the wall clock at least hourly while waiting for a fire
EARLY_TOLERANCE = 0.01  # a fire timer this close to its time counts as on time
CLAIM_RETRY_DELAY = 5.0
ENSURE_RETRY_DELAY = 30.0
NEXT_EXECUTION_DELAY = 2.0  # after a fire, next_execution_time is written this much later (off the burst)
HISTORY_SEEN = 256  # finished run ids remembered, so a late duplicate exit is not recorded twice

SKIPPED_REASON = "skipped: previous run still active"


@dataclass(frozen=True)
class ActiveRun:
    """A run this actor started (or adopted) that has not exited yet."""

    run_id: str
    scheduled_at: float
    started_at: float
    handle: Handle
    stop_reason: str = ""  # set when this actor stops the run: "timeout", "replaced by ..."
    timeout: TimerHandle | None = None
    timeout_token: int = 0


class ScheduleActor(Supervised):
    def __init__(
        self,
        link: Link | None,
        definition: BotDefinition,
        backend: Backend,
        store: Store,
        clock: Clock,
        owner: str,
        status_sink: Callable[[str, dict], None] | None = None,
        *,
        stop_grace: float = 15.0,
        directory: Any = None,
        adopt: Callable[[str], Handle | Iterable[Handle] | None] | None = None,
    ) -> None:
        """``owner``: this runtime's instance id (written into run records). ``directory``: an
        ``actors.directory.Directory`` to register with so exits are routed here. ``adopt(schedule_id)``:
        the schedule's live run handle(s), None for none (default: filter ``backend.list_managed()``,
        one listing per actor start; with many schedules pass a callable over one shared listing).
        ``stop_grace``: seconds between SIGTERM and SIGKILL when a run is stopped (timeout, replace)."""
        super().__init__(link)
        self.defn = definition
        self.cron: CronSchedule = parse_cron(definition.schedule or "", definition.timezone)
        self.backend = backend
        self.store = store
        self.clock = clock
        self.owner = owner
        self.status_sink = status_sink
        self.stop_grace = stop_grace
        self.directory = directory
        self._adopt = adopt
        self.active: dict[str, ActiveRun] = {}
        self.next_run: float | None = None
        self.last_run: dict[str, Any] | None = None
        self.last_exit_code: int | None = None
        self.error = ""
        self._seq = 0  # source of timer tokens
        self._fire_token = 0
        self._retry_token = 0
        self._fire_timer: TimerHandle | None = None
        self._next_exec_timer: TimerHandle | None = None
        self._retry_timer: TimerHandle | None = None
        self._pending_claim: tuple[float, str] | None = None  # (scheduled_at, trigger) awaiting a store
        self._finished: list[str] = []
        self._published: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.defn.id

    @property
    def delegated(self) -> bool:
        """The platform fires this schedule itself (Kubernetes CronJob)."""
        return bool(self.backend.capabilities.fires_schedules)

    @property
    def state(self) -> str:
        return RUNNING if self.active else IDLE

    # --- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Runs in the actor's thread: adopt live runs, ensure the CronJob or catch up, arm the timer."""
        super().on_start()
        if self.directory is not None:
            self.directory.register(KIND, self.id, self.actor_ref)
        event(log, "schedule.started", bot_id=self.id, schedule=self.cron.expression, tz=self.cron.tz)
        self._adopt_runs()
        if self.delegated:
            self._ensure_schedule()
        else:
            self._catch_up()
        self._arm(self.clock.time())
        self._publish()

    def on_stop(self) -> None:
        """Runs in the actor's thread on a graceful stop: timers are cancelled, active runs keep going."""
        self._cancel_timers()
        if self.directory is not None:
            self.directory.unregister(KIND, self.id, self.actor_ref)
        event(log, "schedule.stopped", bot_id=self.id, active_runs=sorted(self.active))
        super().on_stop()

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """A bug crashed the actor: runs keep going; the replacement adopts them."""
        self._cancel_timers()
        if self.directory is not None:
            self.directory.unregister(KIND, self.id, self.actor_ref)
        super().on_failure(exc_type, exc, tb)

    # --- messages ----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetStatus):
            return self.status()
        if isinstance(message, Timer):
            self._on_timer(message)
        elif isinstance(message, Exited):
            self._on_exit(message)
        elif isinstance(message, RunNow):
            event(log, "schedule.run_now", bot_id=self.id)
            outcome = self._fire(self.clock.time(), "manual")
            self._publish()
            return outcome
        elif isinstance(message, Reconfigure):
            self._reconfigure(message.definition)
        else:
            event(log, "schedule.unknown_message", logging.WARNING, bot_id=self.id, message=repr(message)[:200])
            return None
        self._publish()
        return None

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": KIND,
            "state": self.state,
            "active_runs": sorted(self.active),
            "next_run": self.next_run,
            "last_run": dict(self.last_run) if self.last_run else None,
            "last_exit_code": self.last_exit_code,
            "restarts": 0,
            "schedule": self.cron.expression,
            "timezone": self.cron.tz,
            "concurrency": self.defn.concurrency,
            "delegated": self.delegated,
            "error": self.error,
        }

    # --- timers ------------------------------------------------------------------------------------

    def _next_token(self) -> int:
        self._seq += 1
        return self._seq

    def _on_timer(self, msg: Timer) -> None:
        """Dispatch a timer; one whose token is not the current one for its name is stale and ignored."""
        if msg.name == FIRE:
            if msg.token == self._fire_token:
                self._on_fire_timer()
        elif msg.name in (CLAIM_RETRY, ENSURE_RETRY):
            if msg.token != self._retry_token:
                return
            self._retry_timer = None
            if msg.name == ENSURE_RETRY:
                self._ensure_schedule()
            else:
                pending, self._pending_claim = self._pending_claim, None
                if pending is not None:
                    self._fire(*pending)
        elif msg.name == NEXT_EXECUTION:
            if self._next_exec_timer is not None and msg.token == self._fire_token:
                self._next_exec_timer = None
                self._write_next_execution()
        elif msg.name.startswith(TIMEOUT_PREFIX):
            run = self.active.get(msg.name[len(TIMEOUT_PREFIX):])
            if run is not None and run.timeout_token == msg.token:
                self._on_timeout(run.run_id)

    def _on_fire_timer(self) -> None:
        self._fire_timer = None
        due = self.next_run
        now = self.clock.time()
        if due is None:
            return
        if now < due - EARLY_TOLERANCE:
            self._arm_timer(due, now)  # an intermediate step of a long wait
            return
        if not self.delegated:
            late = now - due
            if late > self.defn.starting_deadline:
                event(log, "schedule.missed", logging.WARNING, bot_id=self.id, scheduled_at=due, late_s=round(late, 3))
            else:
                self._fire(due, "cron")
        self._arm(max(due, now), write_now=False)

    def _arm(self, after: float, write_now: bool = True) -> None:
        """Compute the next fire time strictly after ``after``, arm the timer, and publish it to the store:
        at once, or (after a fire) ``NEXT_EXECUTION_DELAY`` later so that a burst of fires is not slowed
        by a burst of store writes; several fires within that delay give one write."""
        self._fire_token = self._next_token()
        for t in (self._fire_timer, self._next_exec_timer):
            if t is not None:
                t.cancel()
        self._fire_timer = self._next_exec_timer = None
        try:
            self.next_run = self.cron.next_after(after)
        except CronError as e:
            self.next_run = None
            self.error = str(e)
            event(log, "schedule.no_next_fire", logging.ERROR, bot_id=self.id, error=str(e))
        if self.next_run is not None:
            self._arm_timer(self.next_run, self.clock.time())
        if write_now:
            self._write_next_execution()
        else:
            self._next_exec_timer = self.clock.call_later(
                NEXT_EXECUTION_DELAY, self.actor_ref, Timer(NEXT_EXECUTION, self._fire_token))

    def _write_next_execution(self) -> None:
        try:
            self.store.set_next_execution(self.id, self.next_run)
        except Exception as e:  # noqa: BLE001 - a store outage must not stop the schedule
            event(log, "schedule.next_execution_failed", logging.WARNING, bot_id=self.id, error=str(e))

    def _arm_timer(self, due: float, now: float) -> None:
        delay = min(max(0.0, due - now), MAX_TIMER_STEP)
        self._fire_timer = self.clock.call_later(delay, self.actor_ref, Timer(FIRE, self._fire_token))

    def _cancel_timers(self) -> None:
        for t in (self._fire_timer, self._retry_timer, self._next_exec_timer):
            if t is not None:
                t.cancel()
        for run in self.active.values():
            if run.timeout is not None:
                run.timeout.cancel()
        self._fire_timer = self._retry_timer = self._next_exec_timer = None

    # --- firing ------------------------------------------------------------------------------------

    def _fire(self, scheduled_at: float, trigger: str) -> dict[str, Any]:
        """One fire at ``scheduled_at`` (trigger: cron | catch-up | manual). Never raises for I/O errors.

        Returns what happened: ``{"run_id", "started": bool, "reason"}`` (RunNow's answer)."""
        scheduled_at = float(int(scheduled_at))
        run_id = run_id_for(self.id, scheduled_at)
        now = self.clock.time()
        if run_id in self.active:
            return _outcome(run_id, False, "already running")
        if self.active and self.defn.concurrency == "forbid":
            self._record_skip(run_id, scheduled_at, now)
            return _outcome(run_id, False, SKIPPED_REASON)
        record = {
            "run_id": run_id,
            "schedule_id": self.id,
            "scheduled_at": scheduled_at,
            "started_at": now,
            "owner": self.owner,
            "state": "starting",
            "trigger": trigger,
            "config_hash": self.defn.config_hash,
        }
        try:
            claimed = self.store.claim_run(record)
        except Exception as e:  # noqa: BLE001 - store down: retry within the starting deadline
            self._claim_failed(scheduled_at, trigger, e)
            return _outcome(run_id, False, f"store unavailable, retrying: {e}")
        if not claimed:
            event(log, "schedule.run_already_claimed", bot_id=self.id, run_id=run_id)
            return _outcome(run_id, False, "already claimed (run by this or another runtime)")
        if self.active and self.defn.concurrency == "replace":
            for active_id in list(self.active):
                self._stop_run(active_id, f"replaced by {run_id}")
        try:
            handle = self.backend.run_once(RunSpec(self.defn, run_id, scheduled_at))
        except Exception as e:  # noqa: BLE001 - a backend error never kills the schedule
            reason = f"start_failed: {e}"
            event(log, "schedule.start_failed", logging.ERROR, bot_id=self.id, run_id=run_id, error=str(e))
            self._finish(run_id, scheduled_at, now, None, reason, "failed")
            return _outcome(run_id, False, reason)
        started = self.clock.time()
        run = ActiveRun(run_id, scheduled_at, started, handle)
        if self.defn.run_timeout:
            run = self._with_timeout(run, self.defn.run_timeout)
        self.active[run_id] = run
        self.last_run = {"run_id": run_id, "scheduled_at": scheduled_at, "started_at": started, "state": "running"}
        self.error = ""
        event(log, "schedule.run_started", bot_id=self.id, run_id=run_id, trigger=trigger, scheduled_at=scheduled_at,
              delay_s=round(started - scheduled_at, 3))
        return _outcome(run_id, True, trigger)

    def _record_skip(self, run_id: str, scheduled_at: float, now: float) -> None:
        event(log, "schedule.run_skipped", bot_id=self.id, run_id=run_id, active=sorted(self.active))
        record = {"run_id": run_id, "schedule_id": self.id, "scheduled_at": scheduled_at, "started_at": None,
                  "owner": self.owner, "state": "skipped"}
        try:
            if self.store.claim_run(record):
                self.store.finish_run(run_id, {"ended_at": now, "exit_code": None, "reason": SKIPPED_REASON,
                                               "state": "skipped"})
        except Exception as e:  # noqa: BLE001 - history is best effort for a skip
            event(log, "schedule.record_failed", logging.WARNING, bot_id=self.id, run_id=run_id, error=str(e))

    def _claim_failed(self, scheduled_at: float, trigger: str, error: Exception) -> None:
        self.error = f"store: {error}"
        late = self.clock.time() - scheduled_at
        if late + CLAIM_RETRY_DELAY > self.defn.starting_deadline:
            event(log, "schedule.missed", logging.ERROR, bot_id=self.id, scheduled_at=scheduled_at,
                  error=f"cannot record the run: {error}")
            return
        event(log, "schedule.claim_retry", logging.WARNING, bot_id=self.id, scheduled_at=scheduled_at, error=str(error))
        self._pending_claim = (scheduled_at, trigger)
        self._set_retry(CLAIM_RETRY, CLAIM_RETRY_DELAY)

    def _catch_up(self) -> None:
        """At most one run for the latest missed fire, only within the starting deadline."""
        now = self.clock.time()
        prev = self.cron.prev_at_or_before(now)
        if prev is None:
            return
        planned = self.defn.document.get("next_execution_time") if self.defn.document else None
        if isinstance(planned, (int, float)) and not isinstance(planned, bool) and planned > prev:
            return  # that fire time predates the schedule (or its last change): nothing was missed
        late = now - prev
        if late <= self.defn.starting_deadline:
            self._fire(prev, "catch-up")
        else:
            event(log, "schedule.missed", bot_id=self.id, scheduled_at=prev, late_s=round(late, 3),
                  starting_deadline=self.defn.starting_deadline)

    # --- runs ending -------------------------------------------------------------------------------

    def _with_timeout(self, run: ActiveRun, seconds: float) -> ActiveRun:
        token = self._next_token()
        timer = self.clock.call_later(seconds, self.actor_ref, Timer(TIMEOUT_PREFIX + run.run_id, token))
        return replace(run, timeout=timer, timeout_token=token)

    def _on_timeout(self, run_id: str) -> None:
        if run_id in self.active:
            event(log, "schedule.run_timeout", logging.WARNING, bot_id=self.id, run_id=run_id)
            self._stop_run(run_id, "timeout")

    def _stop_run(self, run_id: str, reason: str) -> None:
        """Stop an active run; it is finished now if the backend reports the exit, else when Exited comes."""
        run = self.active[run_id]
        if run.timeout is not None:
            run.timeout.cancel()
        run = self.active[run_id] = replace(run, stop_reason=reason, timeout=None)
        try:
            result = self.backend.stop(run.handle, self.stop_grace)
        except TaskNotFound:
            self._end_run(run_id, None, "")
            return
        except Exception as e:  # noqa: BLE001 - report and wait for the exit event
            event(log, "schedule.stop_failed", logging.ERROR, bot_id=self.id, run_id=run_id, error=str(e))
            self.error = f"stop {run_id}: {e}"
            return
        if result is not None:
            self._end_run(run_id, result.code, result.reason)

    def _on_exit(self, msg: Exited) -> None:
        if msg.run_id is None or msg.bot_id != self.id:
            return
        if msg.run_id in self.active:
            self._end_run(msg.run_id, msg.code, msg.reason)
        elif msg.run_id not in self._finished:
            # A run this incarnation does not know (platform-fired CronJob, or started before a crash
            # and not adopted): complete its record if there is one, and remove its task unless the
            # platform cleans up its own Jobs.
            self._finish(msg.run_id, _scheduled_from_id(msg.run_id), None, msg.code,
                         msg.reason or _exit_reason(msg.code), "finished")
            if not self.delegated:
                self._remove_unknown(msg.run_id)

    def _remove_unknown(self, run_id: str) -> None:
        """Find a run's task by listing the backend (rare: only after an actor crash) and remove it."""
        try:
            for h in self.backend.list_managed():
                if h.bot_id == self.id and h.run_id == run_id:
                    self.backend.remove(h)
        except Exception as e:  # noqa: BLE001 - a leftover task is cleaned by the reconciler
            event(log, "schedule.remove_failed", logging.WARNING, bot_id=self.id, run_id=run_id, error=str(e))

    def _end_run(self, run_id: str, code: int | None, reason: str) -> None:
        run = self.active.pop(run_id)
        if run.timeout is not None:
            run.timeout.cancel()
        final = run.stop_reason or reason or _exit_reason(code)
        self._finish(run_id, run.scheduled_at, run.started_at, code, final, "finished")
        try:
            self.backend.remove(run.handle)
        except Exception as e:  # noqa: BLE001 - a leftover task is cleaned by the reconciler
            event(log, "schedule.remove_failed", logging.WARNING, bot_id=self.id, run_id=run_id, error=str(e))

    def _finish(self, run_id: str, scheduled_at: float | None, started_at: float | None, code: int | None,
                reason: str, state: str) -> None:
        ended = self.clock.time()
        fields = {"ended_at": ended, "exit_code": code, "reason": reason, "state": state}
        try:
            self.store.finish_run(run_id, fields)
        except Exception as e:  # noqa: BLE001 - the status keeps the outcome; the record stays "starting"
            event(log, "schedule.record_failed", logging.WARNING, bot_id=self.id, run_id=run_id, error=str(e))
        self._finished.append(run_id)
        del self._finished[:-HISTORY_SEEN]
        self.last_run = {"run_id": run_id, "scheduled_at": scheduled_at, "started_at": started_at, **fields}
        self.last_exit_code = code
        event(log, "schedule.run_finished", bot_id=self.id, run_id=run_id, exit_code=code, reason=reason)

    # --- adoption, reconfiguration, Kubernetes ------------------------------------------------------

    def _adopt_runs(self) -> None:
        try:
            if self._adopt is not None:
                found = self._adopt(self.id)
                handles = [] if found is None else [found] if isinstance(found, Handle) else list(found)
            else:
                handles = [h for h in self.backend.list_managed() if h.bot_id == self.id and h.kind == KIND]
        except Exception as e:  # noqa: BLE001 - without the list, runs are still completed by their exits
            event(log, "schedule.adopt_failed", logging.WARNING, bot_id=self.id, error=str(e))
            return
        now = self.clock.time()
        for h in handles:
            if not h.run_id or h.run_id in self.active:
                continue
            try:
                st = self.backend.inspect(h)
            except TaskNotFound:
                continue
            except Exception as e:  # noqa: BLE001
                event(log, "schedule.adopt_failed", logging.WARNING, bot_id=self.id, run_id=h.run_id, error=str(e))
                continue
            started = h.started_at or now
            run = ActiveRun(h.run_id, _scheduled_from(h), started, h)
            if st.running:
                if self.defn.run_timeout:
                    left = max(0.0, started + self.defn.run_timeout - now)
                    run = self._with_timeout(run, left)
                self.active[h.run_id] = run
                event(log, "schedule.run_adopted", bot_id=self.id, run_id=h.run_id)
            else:
                self.active[h.run_id] = run
                code = st.exit.code if st.exit else None
                self._end_run(h.run_id, code, st.exit.reason if st.exit else "exited while the runtime was away")

    def _reconfigure(self, definition: BotDefinition) -> None:
        if definition.id != self.id:
            event(log, "schedule.reconfigure_wrong_id", logging.ERROR, bot_id=self.id, other=definition.id)
            return
        try:
            cron = parse_cron(definition.schedule or "", definition.timezone)
        except CronError as e:
            self.error = f"new schedule rejected: {e}"
            event(log, "schedule.reconfigure_rejected", logging.ERROR, bot_id=self.id, error=str(e))
            return
        changed = (cron.expression, cron.tz) != (self.cron.expression, self.cron.tz)
        hash_changed = definition.config_hash != self.defn.config_hash
        self.defn, self.cron = definition, cron
        event(log, "schedule.reconfigured", bot_id=self.id, schedule=cron.expression, tz=cron.tz,
              cron_changed=changed, config_changed=hash_changed, active_runs=sorted(self.active))
        if self.delegated:
            self._ensure_schedule()
        if changed or self.next_run is None:
            self._arm(self.clock.time())

    def _ensure_schedule(self) -> None:
        try:
            self.backend.ensure_schedule(self.defn)
            self.error = ""
        except Exception as e:  # noqa: BLE001 - retried; the cluster keeps the old CronJob meanwhile
            self.error = f"ensure_schedule: {e}"
            event(log, "schedule.ensure_failed", logging.ERROR, bot_id=self.id, error=str(e))
            self._set_retry(ENSURE_RETRY, ENSURE_RETRY_DELAY)

    def _set_retry(self, name: str, delay: float) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_token = self._next_token()
        self._retry_timer = self.clock.call_later(delay, self.actor_ref, Timer(name, self._retry_token))

    # --- status ------------------------------------------------------------------------------------

    def _publish(self) -> None:
        if self.status_sink is None:
            return
        status = self.status()
        if status == self._published:
            return
        self._published = status
        try:
            self.status_sink(self.id, status)
        except Exception as e:  # noqa: BLE001 - a status sink's error is logged, never fatal
            event(log, "schedule.status_sink_failed", logging.WARNING, bot_id=self.id, error=str(e))


def _outcome(run_id: str, started: bool, reason: str) -> dict[str, Any]:
    return {"run_id": run_id, "started": started, "reason": reason}


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exited (code unknown)"
    return "completed" if code == 0 else f"exit code {code}"


def _scheduled_from_id(run_id: str) -> float | None:
    """The fire time encoded in a run id (``<schedule>-<unix seconds>``, ``layout.run_id_for``)."""
    tail = run_id.rpartition("-")[2]
    return float(tail) if tail.isdigit() else None


def _scheduled_from(handle: Handle) -> float:
    found = _scheduled_from_id(handle.run_id or "")
    return found if found is not None else handle.started_at
