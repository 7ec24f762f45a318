"""Timers for the service's actors: re-exports ``daemon.clock`` (``call_later``; ``ManualClock`` for tests)."""
from daemon.clock import Clock, ManualClock, RealClock, TimerHandle  # noqa: F401

__all__ = ["Clock", "ManualClock", "RealClock", "TimerHandle"]
