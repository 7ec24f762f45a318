"""Supervision for pykka actors: child specs, links, restart strategies and intensity (OTP semantics).

Pykka has no links or supervision. Here a supervised actor (``Supervised``) is given a ``Link`` by its
supervisor when it starts; when the actor's thread ends it tells the supervisor, through the link, that
it ended ``"normal"`` or with a ``"failure"``. The ``Supervisor`` applies the child's spec:

- restart type: ``permanent`` (always restarted), ``transient`` (restarted only after a failure),
  ``temporary`` (never restarted; its spec is dropped when it ends);
- strategy: ``one_for_one`` (restart the child), ``one_for_all`` (stop every other child in reverse
  order, then start them all in order), ``rest_for_one`` (the same for the child and those after it);
- intensity: more than ``intensity`` restarts within ``period`` seconds (``clock.monotonic()``,
  inclusive) and the supervisor gives up: it stops every child in reverse order and fails upward (its
  own supervisor sees a failure; a root supervisor calls ``on_give_up(reason)``).

Children start in list order, each one's ``on_start`` finished (or dead) before the next starts, and
stop in reverse order: ask to stop, wait ``shutdown`` seconds, then abandon it (its thread is left to
finish on its own) and log ``supervisor.child_abandoned``. Restarts are immediate; an actor that wants
backoff (BotActor) does it itself with ``daemon.clock``.

Every start of a child gets a new generation in its link, so a report from an old incarnation is
ignored, and a child the supervisor stopped itself is never restarted because of its own report.

Threads: each actor has its own; a supervisor blocks its own thread while it starts or stops children
(as an OTP supervisor does), so a child's ``on_start`` should be quick and must never ``ask`` its
supervisor (events go upward by ``tell`` only).

Lives in ``daemon`` (which ships alone into bot images and runs a small supervisor of its own);
``actors.supervisor`` re-exports it.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Sequence

import pykka
from pykka.messages import ProxyGetAttr

from daemon.clock import Clock
from daemon.jsonlog import event

__all__ = [
    "ChildExit",
    "ChildSpec",
    "Link",
    "RESTART_TYPES",
    "STRATEGIES",
    "Supervised",
    "Supervisor",
    "SupervisorGaveUp",
]

log = logging.getLogger("daemon.supervisor")

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
CHILD_TYPES = ("worker", "supervisor")

NORMAL = "normal"
FAILURE = "failure"

_POLL = 0.05  # seconds between liveness checks while waiting for a child to become ready


class SupervisorGaveUp(Exception):
    """A supervisor exceeded its restart intensity (or could not start) and stopped its children."""


# -- data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    """What a supervisor needs to know to start, restart and stop one child (OTP's child spec).

    ``start(link)`` starts the actor and returns its ref, passing ``link`` to the actor's constructor
    (``lambda link: Worker.start(link, ...)``). ``shutdown`` is how long a stop may take before the
    child is abandoned; ``None`` waits forever (OTP's ``infinity``, sensible for ``type="supervisor"``).
    """

    id: str
    start: Callable[["Link"], pykka.ActorRef]
    restart: str = "permanent"  # permanent | transient | temporary
    shutdown: float | None = 5.0
    type: str = "worker"  # worker | supervisor

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise ValueError(f"ChildSpec.id must be a non-empty string, got {self.id!r}")
        if not callable(self.start):
            raise ValueError(f"ChildSpec {self.id!r}: start must be callable(link) -> ActorRef")
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"ChildSpec {self.id!r}: restart={self.restart!r}, expected one of {RESTART_TYPES}")
        if self.type not in CHILD_TYPES:
            raise ValueError(f"ChildSpec {self.id!r}: type={self.type!r}, expected one of {CHILD_TYPES}")
        if self.shutdown is not None and not self.shutdown >= 0:
            raise ValueError(f"ChildSpec {self.id!r}: shutdown={self.shutdown!r} must be >= 0 seconds or None")


@dataclass(frozen=True)
class ChildExit:
    """Told by a child (through its link) to its supervisor when the child's thread has ended."""

    child_id: str
    generation: int
    reason: str  # "normal" | "failure"
    error: BaseException | None = None


@dataclass(frozen=True)
class Link:
    """A child's way to its supervisor: who to tell, under which child id and generation.

    ``ended`` is set when the child's thread has finished every hook, so the supervisor knows exactly
    when a stop is complete.
    """

    supervisor: pykka.ActorRef
    child_id: str
    generation: int
    ended: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def report(self, reason: str, error: BaseException | None = None) -> None:
        """Tell the supervisor this incarnation ended (never blocks; a dead supervisor is ignored).

        ``ended`` is set after the tell, so once a supervisor sees it the report is already queued.
        """
        try:
            self.supervisor.tell(ChildExit(self.child_id, self.generation, reason, error))
        except pykka.ActorDeadError:
            pass
        finally:
            self.ended.set()


@dataclass(frozen=True)
class _Retry:
    """Told by a supervisor to itself when restarting ``child_ids`` failed: try again (counts a restart)."""

    child_ids: tuple[str, ...]


# -- supervised actors ------------------------------------------------------------------------------


class Supervised(pykka.ThreadingActor):
    """Base class of every supervised actor: reports its end to its supervisor through its link.

    The report is sent once per incarnation, by ``tell``, from the actor's own thread after every hook
    has run: ``("failure", exc)`` when ``on_start``, a message sent with ``tell``, ``on_failure`` or
    ``on_stop`` raised; ``("normal")`` when the actor was stopped. Pykka 4.5 calls neither
    ``on_failure`` nor ``on_stop`` when ``on_start`` raises, so the report is not tied to those hooks:
    it is made where pykka's thread body ends (``_actor_loop``) and failures are noted where pykka
    handles them (``_handle_failure``). Both are pykka-private; tests/unit/test_supervisor.py pins
    every path, so a pykka upgrade that moves them fails loudly.

    Subclasses overriding ``__init__``, ``on_start``, ``on_stop`` or ``on_failure`` call ``super()``.
    With ``link=None`` the actor runs standalone and reports to nobody.
    """

    def __init__(self, link: Link | None = None) -> None:
        super().__init__()
        self.link = link
        self._sv_error: BaseException | None = None
        self._sv_failed = False

    def on_start(self) -> None:
        """Runs in the actor's thread before any message. If it raises, the error is logged, the actor
        stops (``on_stop`` and ``on_failure`` are not called) and its supervisor sees a failure."""

    def on_stop(self) -> None:
        """Runs in the actor's thread after a stop request, before the thread ends; not after a
        failure. If it raises, the error is logged and the supervisor sees a failure."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Runs in the actor's thread after a message sent with ``tell`` raised, before the thread ends.
        If it raises, that error is logged too. Either way the supervisor sees the original failure."""

    def on_exit(self, reason: str, error: BaseException | None) -> None:
        """Runs in the actor's thread as its very last act, after every other hook; ``reason`` is
        ``"normal"`` or ``"failure"``. Default: report to the link. If it raises, the error is logged
        and the link is still marked ended."""
        if self.link is not None:
            self.link.report(reason, error)

    # pykka 4.5 private hooks (see class docstring) -------------------------------------------------

    def _handle_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        if not self._sv_failed:
            self._sv_failed = True
            self._sv_error = exception_value
        super()._handle_failure(exception_type, exception_value, traceback)

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            reason = FAILURE if self._sv_failed else NORMAL
            try:
                self.on_exit(reason, self._sv_error)
            except Exception:  # noqa: BLE001 - the last hook must not lose the report
                log.exception("on_exit of %s raised", self)
            finally:
                if self.link is not None:
                    self.link.ended.set()


# -- the supervisor ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Child:
    """The supervisor's record of one child (mutable bookkeeping, owned by the supervisor's thread)."""

    spec: ChildSpec
    ref: pykka.ActorRef | None = None
    link: Link | None = None

    @property
    def running(self) -> bool:
        return self.ref is not None


class Supervisor(Supervised):
    """A supervised actor that starts, restarts and stops its children (OTP semantics, module doc).

    Call its methods through a proxy: ``sup.proxy().start_child(spec).get()``. Its thread blocks
    while it starts or stops children.

    ``on_give_up(reason)`` runs in the supervisor's thread when a root supervisor (no link) fails:
    restart intensity exceeded, a child that cannot be started at start-up, or a bug. It should only
    signal (set an event, tell an actor); if it raises, the error is logged.
    """

    def __init__(
        self,
        link: Link | None,
        children: Sequence[ChildSpec] = (),
        strategy: str = "one_for_one",
        intensity: int = 5,
        period: float = 30.0,
        clock: Clock | None = None,
        name: str = "supervisor",
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(link)
        if strategy not in STRATEGIES:
            raise ValueError(f"Supervisor {name!r}: strategy={strategy!r}, expected one of {STRATEGIES}")
        if not isinstance(intensity, int) or intensity < 0:
            raise ValueError(f"Supervisor {name!r}: intensity={intensity!r} must be an int >= 0")
        if not period > 0:
            raise ValueError(f"Supervisor {name!r}: period={period!r} must be > 0 seconds")
        ids = [s.id for s in children]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"Supervisor {name!r}: duplicate child ids {dupes}")
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.period = float(period)
        self.on_give_up = on_give_up
        self._clock = clock
        self._children: list[_Child] = [_Child(s) for s in children]
        self._by_id: dict[str, _Child] = {c.spec.id: c for c in self._children}  # O(1) lookups by id
        self._restarts: list[float] = []  # monotonic times of recent restarts, newest last
        self._generations = itertools.count(1)
        self._closing = False  # set when giving up or stopping: no more starts

    # -- lifecycle hooks ----------------------------------------------------------------------------

    def on_start(self) -> None:
        """Runs in the supervisor's thread: starts the children in order. If one cannot be started
        (its ``start`` raises), stops those already started in reverse order and raises
        ``SupervisorGaveUp``: the supervisor fails (its parent sees a failure; a root calls
        ``on_give_up``)."""
        super().on_start()
        for c in self._children:
            try:
                self._start(c)
            except Exception as e:
                self._closing = True
                event(log, "supervisor.start_failed", logging.ERROR, supervisor=self.name,
                      child_id=c.spec.id, error=repr(e))
                self._stop_children(self._children)
                raise SupervisorGaveUp(
                    f"supervisor {self.name!r}: child {c.spec.id!r} failed to start: {e!r}"
                ) from e
        event(log, "supervisor.started", supervisor=self.name, children=[c.spec.id for c in self._children])

    def on_stop(self) -> None:
        """Runs in the supervisor's thread when it is stopped: stops the children in reverse order,
        each within its ``shutdown`` (then abandoned and logged). Does not raise."""
        self._closing = True
        self._stop_children(self._children)
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Runs in the supervisor's thread after one of its own messages raised (a bug): stops the
        children in reverse order so none is orphaned (does not raise), then the failure goes upward."""
        self._closing = True
        self._stop_children(self._children)
        super().on_failure(exception_type, exception_value, traceback)

    def on_exit(self, reason: str, error: BaseException | None) -> None:
        """Runs in the supervisor's thread as its last act: reports to the parent; a root supervisor
        that failed calls ``on_give_up(reason)`` (if that raises, the error is logged)."""
        super().on_exit(reason, error)
        if reason == FAILURE and self.link is None and self.on_give_up is not None:
            try:
                self.on_give_up((str(error) or repr(error)) if error is not None else "failure")
            except Exception:  # noqa: BLE001 - a callback must not hide the give-up
                log.exception("on_give_up of supervisor %r raised", self.name)

    def on_receive(self, message: Any) -> Any:
        """Runs in the supervisor's thread for each told message: child exit reports and restart
        retries. If it raises (a bug), ``on_failure`` stops the children and the supervisor fails."""
        if isinstance(message, ChildExit):
            return self._child_exited(message)
        if isinstance(message, _Retry):
            return self._retry(message)
        return super().on_receive(message)

    # -- public API (through a proxy) ---------------------------------------------------------------

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef:
        """Add a dynamic child at the end of the list and start it. ``ValueError`` if the id exists;
        if its ``start`` raises, that error goes back to the caller and the spec is not kept."""
        if self._closing:
            raise RuntimeError(f"supervisor {self.name!r} is stopping; cannot start child {spec.id!r}")
        if self._find(spec.id) is not None:
            raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")
        c = _Child(spec)
        self._start(c)
        self._children.append(c)
        self._by_id[c.spec.id] = c
        return c.ref  # type: ignore[return-value]

    def terminate_child(self, child_id: str) -> bool:
        """Stop the child (within its ``shutdown``) and forget its spec. False if there is no such child."""
        c = self._find(child_id)
        if c is None:
            return False
        self._forget(c)
        self._stop_child(c)
        event(log, "supervisor.child_terminated", supervisor=self.name, child_id=child_id)
        return True

    def which_children(self) -> list[tuple[str, pykka.ActorRef | None]]:
        """``(id, ref)`` of every child in start order; ``ref`` is None for one not running."""
        return [(c.spec.id, c.ref) for c in self._children]

    def child(self, child_id: str) -> pykka.ActorRef | None:
        """The running child's ref, or None."""
        c = self._find(child_id)
        return c.ref if c is not None else None

    def restart_count(self) -> int:
        """Restarts counted within the current intensity window (for status and metrics)."""
        self._prune(self._now())
        return len(self._restarts)

    # -- internals (all on the supervisor's thread) -------------------------------------------------

    def _now(self) -> float:
        return self._clock.monotonic() if self._clock is not None else time.monotonic()

    def _find(self, child_id: str) -> _Child | None:
        return self._by_id.get(child_id)

    def _forget(self, c: _Child) -> None:
        self._children.remove(c)
        self._by_id.pop(c.spec.id, None)

    def _start(self, c: _Child) -> None:
        """Start one child with a fresh generation and wait until its ``on_start`` is over (or it died:
        its own report then arrives and is handled as any exit). Raises what ``spec.start`` raises."""
        link = Link(self.actor_ref, c.spec.id, next(self._generations))
        ref = c.spec.start(link)
        if not isinstance(ref, pykka.ActorRef):
            if hasattr(ref, "stop"):
                ref.stop()  # type: ignore[union-attr]
            raise TypeError(f"ChildSpec {c.spec.id!r}: start must return a pykka.ActorRef, got {type(ref).__name__}")
        c.ref, c.link = ref, link
        _await_started(ref, link)
        event(log, "supervisor.child_started", logging.DEBUG, supervisor=self.name, child_id=c.spec.id,
              generation=link.generation)

    def _stop_child(self, c: _Child) -> None:
        """Stop one child and wait up to its ``shutdown``; then abandon it with a log line. Its own exit
        report arrives later and is ignored (the record no longer holds that ref)."""
        ref, link = c.ref, c.link
        c.ref = None
        if ref is None:
            return
        timeout = c.spec.shutdown
        future = ref.stop(block=False)
        if issubclass(ref.actor_class, Supervised) and link is not None:
            done = link.ended.wait(timeout)
        else:  # a plain pykka actor: its stop reply is the best signal there is
            try:
                future.get(timeout=timeout)
                done = True
            except pykka.Timeout:
                done = False
        if not done:
            event(log, "supervisor.child_abandoned", logging.ERROR, supervisor=self.name,
                  child_id=c.spec.id, shutdown=timeout,
                  hint="the child did not stop within its shutdown; its thread is left running")

    def _stop_children(self, children: Sequence[_Child]) -> None:
        for c in reversed(list(children)):
            try:
                self._stop_child(c)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                event(log, "supervisor.child_stop_error", logging.ERROR, supervisor=self.name,
                      child_id=c.spec.id, error=repr(e))

    def _prune(self, now: float) -> None:
        threshold = now - self.period
        self._restarts = [t for t in self._restarts if t >= threshold]

    def _add_restart(self) -> bool:
        """Count one restart; False when that makes more than ``intensity`` within ``period``."""
        now = self._now()
        self._prune(now)
        self._restarts.append(now)
        return len(self._restarts) <= self.intensity

    def _child_exited(self, msg: ChildExit) -> None:
        c = self._find(msg.child_id)
        if c is None or not c.running or c.link is None or c.link.generation != msg.generation:
            event(log, "supervisor.stale_report", logging.DEBUG, supervisor=self.name,
                  child_id=msg.child_id, generation=msg.generation, reason=msg.reason)
            return
        c.ref = None
        restart = c.spec.restart == "permanent" or (c.spec.restart == "transient" and msg.reason == FAILURE)
        event(log, "supervisor.child_exited", logging.WARNING if msg.reason == FAILURE else logging.INFO,
              supervisor=self.name, child_id=c.spec.id, reason=msg.reason,
              error=repr(msg.error) if msg.error is not None else None, restart=restart)
        if c.spec.restart == "temporary":
            self._forget(c)
        if not restart or self._closing:
            return
        if not self._add_restart():
            return self._give_up(c.spec.id)
        self._restart_group(self._group_for(c))

    def _group_for(self, c: _Child) -> list[_Child]:
        """The children to restart (in start order) when ``c`` must be restarted; the running ones among
        them other than ``c`` are stopped first in reverse order, and temporary ones are dropped."""
        if self.strategy == "one_for_one":
            return [c]
        i = self._children.index(c)
        affected = self._children if self.strategy == "one_for_all" else self._children[i:]
        others = [o for o in affected if o is not c]
        self._stop_children([o for o in others if o.running])
        for o in others:
            if o.spec.restart == "temporary":
                self._forget(o)
        return [o for o in affected if o.spec.restart != "temporary" or o is c]

    def _restart_group(self, group: list[_Child]) -> None:
        """Start ``group`` in order. If a start raises, stop the ones started here and retry later by a
        message to itself (each retry counts as a restart, so a child that never starts escalates)."""
        started: list[_Child] = []
        for c in group:
            try:
                self._start(c)
            except Exception as e:  # noqa: BLE001 - retried, then escalated by intensity
                event(log, "supervisor.restart_failed", logging.ERROR, supervisor=self.name,
                      child_id=c.spec.id, error=repr(e))
                self._stop_children(started)
                self.actor_ref.tell(_Retry(tuple(g.spec.id for g in group)))
                return
            started.append(c)
            event(log, "supervisor.child_restarted", logging.WARNING, supervisor=self.name,
                  child_id=c.spec.id, generation=c.link.generation if c.link else None)

    def _retry(self, msg: _Retry) -> None:
        if self._closing:
            return
        group = [c for c in self._children if c.spec.id in msg.child_ids and not c.running]
        if not group:
            return
        if not self._add_restart():
            return self._give_up(group[0].spec.id)
        self._restart_group(group)

    def _give_up(self, child_id: str) -> None:
        """Intensity exceeded: stop every child in reverse order, then end as a failure (reported to
        the parent by ``on_exit``, or ``on_give_up`` at the root)."""
        reason = (f"supervisor {self.name!r} gave up: more than {self.intensity} restarts in "
                  f"{self.period:g}s (last: child {child_id!r})")
        event(log, "supervisor.give_up", logging.ERROR, supervisor=self.name, child_id=child_id,
              intensity=self.intensity, period=self.period)
        self._closing = True
        self._stop_children(self._children)
        # End as a failure without a pykka traceback: note it, then stop normally.
        self._sv_failed = True
        self._sv_error = SupervisorGaveUp(reason)
        self.stop()


def _await_started(ref: pykka.ActorRef, link: Link) -> None:
    """Wait until the actor has handled a first message (its ``on_start`` is over) or its thread ended.

    Pykka answers no message before ``on_start`` returns. A ``Supervised`` child's ``link.ended`` tells
    when it died instead; for a plain actor, ``is_alive`` does.
    """
    supervised = issubclass(ref.actor_class, Supervised)
    future = ref.ask(ProxyGetAttr(attr_path=("actor_urn",)), block=False)
    while True:
        try:
            future.get(timeout=_POLL)
            return
        except pykka.Timeout:
            pass
        except Exception:  # noqa: BLE001 - ActorDeadError: it ended before handling the message
            return
        if (supervised and link.ended.is_set()) or (not supervised and not ref.is_alive()):
            return
