"""Cron expressions in an IANA time zone: parsing, and the next/previous fire time in unix seconds.

``parse_cron(expr, tz)`` returns a frozen ``CronSchedule`` or raises ``CronError`` (a ValueError) with a
message fit for an operator. Accepted forms:

- 5 fields ``minute hour day-of-month month day-of-week``;
- 6 fields with seconds first ``second minute hour day-of-month month day-of-week``;
- descriptors ``@yearly @annually @monthly @weekly @daily @midnight @hourly`` (``@reboot`` is refused:
  the runtime has no "boot" a schedule could follow).

Each field is a comma list of ``*``, ``N``, ``N-M``, each optionally ``/STEP`` (``N/STEP`` means from N
to the field's maximum). Months and weekdays also take names (``JAN``..``DEC``, ``SUN``..``SAT``);
weekday 7 is Sunday; ``?`` is ``*`` in the day fields. As in Vixie cron, when both day fields are
restricted (neither starts with ``*``) a day matches if EITHER matches; otherwise both must match.

Daylight saving time (why croniter is not used: it fires a daily 01:30 job twice on a fall-back day).
The schedule matches *local wall time* in its zone, with these rules (Vixie cron's, refined):

- A job with a fixed hour (the hour field does not start with ``*``; e.g. ``30 1 * * *``):
  - spring forward: a local time that does not exist (01:30 in a 01:00->02:00 gap) fires ONCE at the
    first instant after the gap (02:00 new time); several skipped times still fire once;
  - fall back: a local time that occurs twice fires once, at its first occurrence.
- A job whose hour field starts with ``*`` (``@hourly``, ``*/15 * * * *``, ``0 */2 * * *``) follows
  real time: it fires whenever the wall clock shows a matching time, so an hourly job fires every real
  hour on both change days (no extra run after the gap, both 01:30s on the fall-back day).

Vixie also counts a ``*`` minute field as "wildcard"; here ``* 1 * * *`` (every minute of 1 a.m.) is a
fixed-hour job, so its hour runs once a day whatever the clock does.

Times are whole seconds; ``next_after(ts)`` is strictly after ``ts``; ``prev_at_or_before(ts)`` may equal it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXPRESSION_LENGTH = 256

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}

# name -> (minimum, maximum, names)
_FIELDS = {
    "second": (0, 59, None),
    "minute": (0, 59, None),
    "hour": (0, 23, None),
    "day-of-month": (1, 31, None),
    "month": (1, 12, _MONTHS),
    "day-of-week": (0, 7, _DAYS),
}
_FIELD_ORDER = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")

_EPOCH = datetime(1970, 1, 1)
_SEARCH_YEARS = 10  # any satisfiable expression fires within 8 years (Feb 29 across 2100)
_PROBE = 3 * 3600  # zone offsets are probed this often to find DST transitions
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression bound to an IANA zone. Field values are sorted tuples."""

    expression: str
    tz: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday .. 6 = Saturday
    days_star: bool  # day-of-month field starts with '*' (or '?')
    weekdays_star: bool
    hours_star: bool  # real-time DST semantics (module docstring)

    # --- public ---------------------------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)

    def next_after(self, ts: float) -> float:
        """The first fire time strictly after ``ts`` (unix seconds)."""
        u = math.floor(ts) + 1
        zone = self.zone
        limit = u + _SEARCH_YEARS * 366 * 86400
        while u < limit:
            off = _offset(zone, u)
            local = _local(u, off)
            match = self._next_local(local)
            if match is None:
                break
            cand = _seconds(match) - off
            seg_end = _next_transition(zone, u, cand, off)
            if seg_end is None:
                # No offset change between u and cand: cand is a real instant showing `match`.
                if not self.hours_star and _earlier_occurrence(zone, match, cand):
                    u = cand + 1  # second showing of an ambiguous time: a fixed-hour job already ran
                    continue
                return float(cand)
            # The offset changes at seg_end before the candidate: nothing matched before it in this
            # stretch. A forward jump hides local times [seg_end+off, seg_end+new_off).
            new_off = _offset(zone, seg_end)
            if new_off > off and not self.hours_star:
                hidden = self._next_local(_local(seg_end, off))
                if hidden is not None and _seconds(hidden) < seg_end + new_off:
                    return float(seg_end)
            u = seg_end
        raise CronError(f"cron {self.expression!r} has no fire time within {_SEARCH_YEARS} years")

    def prev_at_or_before(self, ts: float) -> float | None:
        """The last fire time at or before ``ts``, or None when there is none within the search horizon."""
        t = math.floor(ts)
        if self.next_after(t - 1) == t:
            return float(t)
        # A window (lo, t] holding a fire: twice the gap between the next two fires, widened as needed.
        try:
            first = self.next_after(t)
            window = max(60, int(2 * (self.next_after(first) - first)))
        except CronError:
            return None
        horizon = _SEARCH_YEARS * 366 * 86400
        while True:
            fire = self.next_after(t - window)
            if fire <= t:
                break
            if window >= horizon:
                return None
            window = min(window * 8, horizon)
        # Invariant: `fire` <= hi is a fire time, and no fire lies in (hi, t]. Each round either finds
        # that the fire after `fire` is past hi (then `fire` is the answer) or halves (fire, hi].
        hi = t
        while True:
            after = self.next_after(fire)
            if after > hi:
                return fire
            fire = after
            mid = (int(fire) + hi) // 2
            probe = self.next_after(mid)
            if probe <= hi:
                fire = probe
            else:
                hi = mid

    def matches_local(self, when: datetime) -> bool:
        """Whether a naive local wall time matches every field."""
        return (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self._day_ok(when)
        )

    # --- local wall-time search ------------------------------------------------------------------

    def _day_ok(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = (t.weekday() + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow

    def _next_day(self, t: datetime) -> datetime:
        """Midnight of the first later day that may match the day fields (a safe jump, never past one)."""
        day = datetime(t.year, t.month, t.day)
        nxt = _first_ge(self.days, t.day + 1)
        if nxt is not None and nxt <= _month_len(t.year, t.month):
            by_dom = day.replace(day=nxt)
        else:
            by_dom = datetime(t.year + 1, 1, 1) if t.month == 12 else datetime(t.year, t.month + 1, 1)
        cur = (t.weekday() + 1) % 7
        by_dow = day + timedelta(days=min((w - cur) % 7 or 7 for w in self.weekdays))
        if self.days_star or self.weekdays_star:
            return max(by_dom, by_dow)  # both must match: no day before the later bound can
        return min(by_dom, by_dow)  # either may match

    def _next_local(self, t: datetime) -> datetime | None:
        """The first naive local time >= ``t`` matching every field, or None within the horizon."""
        t = t.replace(microsecond=0)
        end_year = t.year + _SEARCH_YEARS
        while t.year <= end_year:
            if t.month not in self.months:
                nxt = _first_ge(self.months, t.month + 1)
                t = datetime(t.year, nxt, 1) if nxt is not None else datetime(t.year + 1, self.months[0], 1)
                continue
            if not self._day_ok(t):
                t = self._next_day(t)
                continue
            if t.hour not in self.hours:
                nxt = _first_ge(self.hours, t.hour + 1)
                day = datetime(t.year, t.month, t.day)
                t = day.replace(hour=nxt) if nxt is not None else day + timedelta(days=1)
                continue
            if t.minute not in self.minutes:
                nxt = _first_ge(self.minutes, t.minute + 1)
                hour = t.replace(minute=0, second=0)
                t = hour.replace(minute=nxt) if nxt is not None else hour + timedelta(hours=1)
                continue
            if t.second not in self.seconds:
                nxt = _first_ge(self.seconds, t.second + 1)
                minute = t.replace(second=0)
                t = minute.replace(second=nxt) if nxt is not None else minute + timedelta(minutes=1)
                continue
            return t
        return None


def parse_cron(expr: str, tz: str = "UTC") -> CronSchedule:
    """Parse a cron expression in IANA zone ``tz``. Raises CronError."""
    if not isinstance(expr, str):
        raise CronError(f"cron expression must be a string, got {type(expr).__name__}")
    text = expr.strip()
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CronError(f"cron expression is {len(text)} characters, over the {MAX_EXPRESSION_LENGTH} limit")
    if not text:
        raise CronError("cron expression is empty")
    tz = tz or "UTC"
    _zone(tz)  # validate now
    if text.startswith("@"):
        key = text.lower()
        if key == "@reboot":
            raise CronError("'@reboot' is not supported: schedules fire on time, use a realtime bot to run at start")
        if key not in DESCRIPTORS:
            raise CronError(f"unknown cron descriptor {text!r}; use one of {', '.join(DESCRIPTORS)}")
        fields = DESCRIPTORS[key].split()
    else:
        fields = text.split()
    if len(fields) == 5:
        values = ["0"] + fields
    elif len(fields) == 6:
        values = fields
    else:
        raise CronError(
            f"cron {text!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month day-of-week) "
            "or 6 (second first)"
        )
    parsed = [_parse_field(v, n) for v, n in zip(values, _FIELD_ORDER)]
    seconds, minutes, hours, days, months, weekdays = parsed
    weekdays = tuple(sorted({d % 7 for d in weekdays}))
    day_f, dow_f = values[3], values[5]
    sched = CronSchedule(
        expression=text,
        tz=tz,
        seconds=seconds,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=weekdays,
        days_star=day_f.startswith(("*", "?")),
        weekdays_star=dow_f.startswith(("*", "?")),
        hours_star=values[2].startswith("*"),
    )
    if sched.weekdays_star and not any(d <= _MAX_DAYS[m - 1] for m in months for d in days):
        raise CronError(f"cron {text!r} never fires: no month in it has day {', '.join(map(str, days))}")
    return sched


# --- helpers -------------------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or len(tz) > 64:
        raise CronError(f"unknown time zone {tz!r}: use an IANA name such as 'Europe/London' or 'UTC'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise CronError(f"unknown time zone {tz!r}: use an IANA name such as 'Europe/London' or 'UTC'") from None


def _parse_field(text: str, name: str) -> tuple[int, ...]:
    lo, hi, names = _FIELDS[name]
    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{name} field {text!r} has an empty list item")
        base, slash, step_s = item.partition("/")
        step = 1
        if slash:
            step = _number(step_s, name, item, None)
            if step < 1:
                raise CronError(f"{name} field: step in {item!r} must be at least 1")
        if base == "*" or (base == "?" and name in ("day-of-month", "day-of-week")):
            start, end = lo, hi
            if name == "day-of-week":
                end = 6
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, name, item, names), _number(b, name, item, names)
            if start > end:
                raise CronError(f"{name} field: range {item!r} runs backwards; write it as two ranges")
        else:
            start = _number(base, name, item, names)
            end = hi if slash else start
        for v in (start, end):
            if not lo <= v <= hi:
                raise CronError(f"{name} field: {v} in {item!r} is out of range {lo}-{hi}")
        out.update(range(start, end + 1, step))
    return tuple(sorted(out))


def _number(s: str, name: str, item: str, names: dict[str, int] | None) -> int:
    if names and s.lower() in names:
        return names[s.lower()]
    if not s.isascii() or not s.isdigit() or len(s) > 4:
        hint = ""
        if any(c in s.upper() for c in "LW#"):
            hint = " ('L', 'W' and '#' are not supported)"
        elif names:
            hint = f" (names: {', '.join(k.upper() for k in names)})"
        raise CronError(f"{name} field: {s!r} in {item!r} is not a number{hint}")
    return int(s)


def _month_len(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return _MAX_DAYS[month - 1]


def _first_ge(values: tuple[int, ...], v: int) -> int | None:
    for x in values:
        if x >= v:
            return x
    return None


def _offset(zone: ZoneInfo, u: int) -> int:
    off = datetime.fromtimestamp(u, zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _local(u: int, off: int) -> datetime:
    return _EPOCH + timedelta(seconds=u + off)


def _seconds(local: datetime) -> int:
    return (local - _EPOCH) // timedelta(seconds=1)


def _next_transition(zone: ZoneInfo, u: int, until: int, off: int) -> int | None:
    """The first instant in (u, until] where the zone's offset differs from ``off``, else None."""
    if zone.key == "UTC":
        return None
    a = u
    while a < until:
        b = min(a + _PROBE, until)
        if _offset(zone, b) != off:
            while b - a > 1:  # offset(a) == off, offset(b) != off
                mid = (a + b) // 2
                if _offset(zone, mid) == off:
                    a = mid
                else:
                    b = mid
            return b
        a = b
    return None


def _earlier_occurrence(zone: ZoneInfo, local: datetime, u: int) -> bool:
    """Whether the wall time ``local`` also occurred at an instant before ``u`` (fall-back overlap)."""
    first = int(local.replace(tzinfo=zone, fold=0).timestamp())
    return first < u


__all__ = ["CronError", "CronSchedule", "DESCRIPTORS", "parse_cron"]
