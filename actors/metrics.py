"""A small thread-safe metrics registry (counters and gauges with labels) in Prometheus text format.

No external package: actors update metrics from their own threads, ``actors.http`` renders them on
``GET /metrics`` from an HTTP thread. Exposition format 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/

    registry = Registry()
    restarts = registry.counter("the0_bot_restarts_total", "Bot container restarts.", ["bot_id"])
    restarts.inc(bot_id="b1")
    bots = registry.gauge("the0_bots", "Bots by state.", ["state"])
    bots.set_function(lambda: {("running",): 3, ("backoff",): 1})   # read at scrape time
    text = registry.render()
"""
from __future__ import annotations

import logging
import math
import re
import threading
from typing import Callable, Mapping, Sequence, Union

from daemon.jsonlog import event

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Registry"]

log = logging.getLogger("actors.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]
GaugeFunction = Callable[[], Union[float, Mapping[LabelValues, float]]]


class _Metric:
    """One metric family: a name, a help text, label names, and a value per label-value tuple."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for ln in labelnames:
            if not _LABEL.match(ln) or ln.startswith("__"):
                raise ValueError(f"metric {name}: label name {ln!r} is not valid ([a-zA-Z_][a-zA-Z0-9_]*, no '__')")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric {name}: duplicate label names in {list(labelnames)}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[ln]) for ln in self.labelnames)

    def value(self, **labels: object) -> float:
        """The current value of one series (0 if it was never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def remove(self, **labels: object) -> None:
        """Drop one series (e.g. a deleted bot's), so it is no longer rendered."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def samples(self) -> list[tuple[LabelValues, float]]:
        with self._lock:
            return sorted(self._values.items())


class Counter(_Metric):
    """A value that only goes up (name it ``..._total``)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only go up; got inc({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down; or, with ``set_function``, one read at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, help, labelnames)
        self._function: GaugeFunction | None = None

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set_function(self, fn: GaugeFunction) -> None:
        """Read the value at scrape time, in the HTTP thread: ``fn()`` returns a number (no labels) or
        a mapping label-values tuple -> number. If it raises, the gauge is left out of that scrape and
        the error is logged. It must be quick and thread-safe (never ``ask`` an actor without a timeout)."""
        with self._lock:
            self._function = fn

    def samples(self) -> list[tuple[LabelValues, float]]:
        with self._lock:
            fn = self._function
        if fn is None:
            return super().samples()
        got = fn()
        if isinstance(got, Mapping):
            out = []
            for key, v in got.items():
                key = tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))
                if len(key) != len(self.labelnames):
                    raise ValueError(f"gauge {self.name}: function gave labels {key} for {list(self.labelnames)}")
                out.append((key, float(v)))
            return sorted(out)
        if self.labelnames:
            raise ValueError(f"gauge {self.name} has labels {list(self.labelnames)}: its function must return a mapping")
        return [((), float(got))]


class Registry:
    """The set of metrics one process exposes. Get-or-create: asking twice for the same name and
    kind returns the same metric (so a restarted actor keeps counting); a clash raises ValueError."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._get_or_create(Counter, name, help, labelnames)  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._get_or_create(Gauge, name, help, labelnames)  # type: ignore[return-value]

    def get(self, name: str) -> _Metric | None:
        with self._lock:
            return self._metrics.get(name)

    def _get_or_create(self, cls: type[_Metric], name: str, help: str, labelnames: Sequence[str]) -> _Metric:
        with self._lock:
            m = self._metrics.get(name)
            if m is None:
                m = cls(name, help, labelnames)
                self._metrics[name] = m
                return m
        if type(m) is not cls or m.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name} already registered as a {m.kind} with labels {list(m.labelnames)}; "
                             f"asked for a {cls.kind} with labels {list(labelnames)}")
        return m

    def render(self) -> str:
        """The whole registry in Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for m in metrics:
            try:
                samples = m.samples()
            except Exception as e:  # noqa: BLE001 - one broken gauge function must not hide the rest
                event(log, "metrics.collect_failed", logging.WARNING, metric=m.name, error=repr(e))
                continue
            lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for key, v in samples:
                lines.append(f"{m.name}{_labels(m.labelnames, key)} {_number(v)}")
        return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)) + "}"


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)
