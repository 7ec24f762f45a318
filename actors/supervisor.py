"""The generic Supervisor for the service's actors: re-exports ``daemon.supervisor`` (OTP semantics on pykka).

It lives in ``daemon`` because the in-container daemon runs a small supervisor too and never imports
``actors``. See that module for the semantics.
"""
from daemon.supervisor import (  # noqa: F401
    CHILD_TYPES,
    RESTART_TYPES,
    STRATEGIES,
    ChildExit,
    ChildSpec,
    Link,
    Supervised,
    Supervisor,
    SupervisorGaveUp,
)

__all__ = [
    "CHILD_TYPES",
    "RESTART_TYPES",
    "STRATEGIES",
    "ChildExit",
    "ChildSpec",
    "Link",
    "Supervised",
    "Supervisor",
    "SupervisorGaveUp",
]
