"""Leader election over a coordination.k8s.io/v1 Lease, so several runtime replicas can run at once.

One thread per elector tries every ``retry_period`` to acquire or renew the Lease ``name``:
- absent -> create it holding it;
- held by us, free (no holder), or expired (renewTime + leaseDurationSeconds < now) -> replace it with
  us as holder, sending the resourceVersion read, so of two racing replicas exactly one wins (the other
  gets 409 Conflict);
- held by someone else and not expired -> wait.
A leader that cannot renew for ``renew_deadline`` seconds, or sees another holder, stops leading at once
(``on_stopped_leading``). ``stop()`` releases a held Lease (holder cleared), so a clean shutdown hands
over without waiting for expiry. Callbacks run in the elector's thread and must not block.

Times in the Lease are wall-clock (MicroTime, RFC 3339 with microseconds); replicas need roughly synced
clocks, as with any Lease-based election.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from actors.backends.kubernetes import api_request
from daemon.jsonlog import event

log = logging.getLogger("the0.leader")

LEADING = "leading"
FOLLOWING = "following"
STOPPED = "stopped"


class _WallClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class LeaderElector:
    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        clock: Any = None,
    ):
        if not (lease_duration > renew_deadline > retry_period > 0):
            raise ValueError(
                f"leader election needs lease_duration > renew_deadline > retry_period > 0, got "
                f"{lease_duration} / {renew_deadline} / {retry_period}")
        from kubernetes import client as k8s

        self._k8s = k8s
        self.api = api_client
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock or _WallClock()
        self.state = FOLLOWING
        self._last_renew = 0.0  # monotonic time of the last successful renew
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self.state == LEADING

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> "LeaderElector":
        if self._thread is not None:
            return self
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"leader-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True, timeout: float = 10.0) -> None:
        """Stop trying; when leading call on_stopped_leading and (``release``) clear the Lease's holder.

        ``release=False`` is a crash as others see it: the Lease stays held until it expires.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        was_leader = self.state == LEADING
        self.state = STOPPED
        if was_leader:
            if release:
                self._release()
            self._call(self.on_stopped_leading, "leader.stopped_leading", reason="stopped")

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                ok = self._try_acquire_or_renew()
            except Exception as e:  # noqa: BLE001 - API down, timeouts: retried, bounded by renew_deadline
                event(log, "leader.renew_error", logging.WARNING, lease=self.name, identity=self.identity,
                      error=f"{type(e).__name__}: {getattr(e, 'reason', e)}")
                ok = False
            if self._stopping.is_set():
                return
            now = self.clock.monotonic()
            if ok:
                self._last_renew = now
                if self.state != LEADING:
                    self.state = LEADING
                    event(log, "leader.started_leading", lease=self.name, identity=self.identity)
                    self._call(self.on_started_leading, "leader.started_callback")
            elif self.state == LEADING and (self._lost or now - self._last_renew >= self.renew_deadline):
                self.state = FOLLOWING
                reason = "lease taken" if self._lost else f"no renew for {self.renew_deadline}s"
                self._call(self.on_stopped_leading, "leader.stopped_leading", reason=reason)
            self._wake.wait(self.retry_period)
            self._wake.clear()

    _lost = False

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        return api_request(self.api, method, path, body, timeout=timeout or max(self.retry_period * 2, 2.0))

    def _try_acquire_or_renew(self) -> bool:
        self._lost = False
        now = self.clock.time()
        try:
            lease = self._request("GET", f"{self._path}/{self.name}")
        except self._k8s.ApiException as e:
            if e.status != 404:
                raise
            try:
                self._request("POST", self._path, self._body(None, now, transitions=0, acquire=now))
            except self._k8s.ApiException as e2:
                if e2.status == 409:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            renew = _epoch(spec.get("renewTime") or spec.get("acquireTime"))
            duration = spec.get("leaseDurationSeconds") or self.lease_duration
            if renew + duration >= now:
                self._lost = self.state == LEADING
                return False
        transitions = spec.get("leaseTransitions") or 0
        acquire = now
        if holder == self.identity and spec.get("acquireTime"):
            acquire = _epoch(spec["acquireTime"])
        if holder != self.identity:
            transitions += 1
        body = self._body(lease["metadata"]["resourceVersion"], now, transitions, acquire)
        try:
            self._request("PUT", f"{self._path}/{self.name}", body)
        except self._k8s.ApiException as e:
            if e.status == 409:
                self._lost = self.state == LEADING and holder != self.identity
                return False  # someone else wrote first: they won this round
            raise
        return True

    def _body(self, resource_version: str | None, now: float, transitions: int, acquire: float) -> dict:
        meta: dict = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, int(round(self.lease_duration))),
                "acquireTime": _micro(acquire),
                "renewTime": _micro(now),
                "leaseTransitions": transitions,
            },
        }

    def _release(self) -> None:
        try:
            lease = self._request("GET", f"{self._path}/{self.name}", timeout=5)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"leaseDurationSeconds": 1, "renewTime": _micro(self.clock.time()),
                         "leaseTransitions": spec.get("leaseTransitions") or 0},
            }
            self._request("PUT", f"{self._path}/{self.name}", body, timeout=5)
            event(log, "leader.released", lease=self.name, identity=self.identity)
        except Exception as e:  # noqa: BLE001 - best effort: the Lease expires anyway
            event(log, "leader.release_failed", logging.WARNING, lease=self.name, error=str(e))

    def _call(self, cb: Callable[[], None], name: str, **fields: Any) -> None:
        event(log, name, lease=self.name, identity=self.identity, **fields)
        try:
            cb()
        except Exception:  # noqa: BLE001 - a callback's bug must not kill the elector
            log.exception("leader.callback_failed")


def _micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(dt: Any) -> float:
    if dt is None:
        return 0.0
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
