"""Timers for actors: ``call_later(delay, actor_ref, message)`` from one timer thread; a manual clock for tests.

Pykka has no timers. A timer here never calls actor code: when it fires it ``tell``s the message to the
actor, so the actor handles it in its own thread like any other message. A dead actor's timer is dropped.

``ManualClock`` does not move by itself: tests call ``advance(seconds)``, which delivers every timer due
in that span in time order, so backoff and cron are tested without sleeping. ``advance`` returns after
the messages are *sent*; a test that needs them *handled* then asks the actor something (its inbox is
processed in order).
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

import pykka


class TimerHandle:
    __slots__ = ("when", "ref", "message", "cancelled")

    def __init__(self, when: float, ref: Any, message: Any):
        self.when = when
        self.ref = ref
        self.message = message
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _deliver(ref: Any, message: Any) -> None:
    try:
        if callable(ref) and not isinstance(ref, pykka.ActorRef):
            ref(message)
        else:
            ref.tell(message)
    except pykka.ActorDeadError:
        pass


class Clock:
    """Interface: wall time, monotonic time, and timers that tell a message to an actor."""

    def time(self) -> float:  # wall clock, unix seconds
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def call_later(self, delay: float, ref: Any, message: Any) -> TimerHandle:
        """After ``delay`` seconds, ``ref.tell(message)`` (``ref`` may also be a plain callable)."""
        raise NotImplementedError

    def call_at(self, when: float, ref: Any, message: Any) -> TimerHandle:
        """At wall-clock time ``when`` (unix seconds)."""
        return self.call_later(max(0.0, when - self.time()), ref, message)

    def stop(self) -> None:
        pass


class RealClock(Clock):
    """One daemon thread serves every timer of the process."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="clock", daemon=True)
        self._thread.start()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, ref: Any, message: Any) -> TimerHandle:
        h = TimerHandle(time.monotonic() + max(0.0, delay), ref, message)
        with self._cv:
            heapq.heappush(self._heap, (h.when, next(self._seq), h))
            if self._heap[0][2] is h:
                self._cv.notify()
        return h

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cv.wait(None if not self._heap else self._heap[0][0] - now)
                if self._stopped:
                    return
                _, _, h = heapq.heappop(self._heap)
            if not h.cancelled:
                _deliver(h.ref, h.message)


class ManualClock(Clock):
    """A clock that moves only when a test calls ``advance``. Starts at ``start`` (unix seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._mono = 1000.0
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def call_later(self, delay: float, ref: Any, message: Any) -> TimerHandle:
        with self._lock:
            h = TimerHandle(self._mono + max(0.0, delay), ref, message)
            heapq.heappush(self._heap, (h.when, next(self._seq), h))
        return h

    def pending(self) -> list[tuple[float, Any]]:
        """(seconds from now, message) of live timers, soonest first: lets tests read what is scheduled."""
        with self._lock:
            return [(w - self._mono, h.message) for w, _, h in sorted(self._heap) if not h.cancelled]

    def advance(self, seconds: float) -> int:
        """Move time forward, delivering due timers in order; returns how many were delivered."""
        with self._lock:
            target = self._mono + seconds
        fired = 0
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    self._now += target - self._mono
                    self._mono = target
                    return fired
                when, _, h = heapq.heappop(self._heap)
                self._now += when - self._mono
                self._mono = when
            if not h.cancelled:
                _deliver(h.ref, h.message)
                fired += 1

    def set_time(self, wall: float) -> None:
        """Jump the wall clock (not monotonic time): simulates a host clock change or runtime downtime."""
        with self._lock:
            self._now = float(wall)
