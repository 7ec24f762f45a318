"""actors.cron: parsing, next/previous fire times, and the DST rules (2026 change days).

US: spring forward Sun Mar 8 (02:00 EST -> 03:00 EDT), fall back Sun Nov 1 (02:00 EDT -> 01:00 EST).
UK: spring forward Sun Mar 29 (01:00 GMT -> 02:00 BST), fall back Sun Oct 25 (02:00 BST -> 01:00 GMT).
"""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from actors.cron import CronError, parse_cron

LONDON = "Europe/London"
NEW_YORK = "America/New_York"


def ts(tz: str, *parts: int, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


def fires(expr: str, tz: str, start: float, n: int) -> list[float]:
    sched = parse_cron(expr, tz)
    out, t = [], start
    for _ in range(n):
        t = sched.next_after(t)
        out.append(t)
    return out


# --- basics --------------------------------------------------------------------------------------


def test_every_minute_is_strictly_after():
    s = parse_cron("* * * * *")
    assert s.next_after(utc(2026, 1, 1, 0, 0)) == utc(2026, 1, 1, 0, 1)
    assert s.next_after(utc(2026, 1, 1, 0, 0) + 0.5) == utc(2026, 1, 1, 0, 1)
    assert s.next_after(utc(2026, 1, 1, 0, 0) - 0.5) == utc(2026, 1, 1, 0, 0)


def test_lists_ranges_steps_and_names():
    s = parse_cron("5,35 9-17/4 * JAN-mar mon-FRI")
    got = fires("5,35 9-17/4 * JAN-mar mon-FRI", "UTC", utc(2026, 1, 2, 12, 0), 4)  # Fri Jan 2
    assert got == [utc(2026, 1, 2, 13, 5), utc(2026, 1, 2, 13, 35), utc(2026, 1, 2, 17, 5), utc(2026, 1, 2, 17, 35)]
    assert s.hours == (9, 13, 17)
    assert s.weekdays == (1, 2, 3, 4, 5)
    assert fires("0 0 * * *", "UTC", utc(2026, 1, 2, 17, 40), 1) == [utc(2026, 1, 3)]


def test_weekday_seven_is_sunday_and_step_from_a_value():
    assert parse_cron("0 0 * * 7").weekdays == (0,)
    assert parse_cron("10/20 * * * *").minutes == (10, 30, 50)


def test_day_of_month_or_day_of_week_when_both_restricted():
    # Vixie semantics: the 13th OR any Friday.
    got = fires("0 12 13 * 5", "UTC", utc(2026, 2, 1), 4)
    assert got == [utc(2026, 2, 6, 12), utc(2026, 2, 13, 12), utc(2026, 2, 20, 12), utc(2026, 2, 27, 12)]
    # A '*'-led day field means AND: Fridays in the odd days 1,3,5..
    got = fires("0 12 */2 * 5", "UTC", utc(2026, 2, 1), 2)
    assert got == [utc(2026, 2, 13, 12), utc(2026, 2, 27, 12)]


def test_six_fields_have_seconds_first():
    s = parse_cron("*/15 * * * * *")
    assert s.seconds == (0, 15, 30, 45)
    assert fires("*/15 * * * * *", "UTC", utc(2026, 5, 1, 10, 0, 50), 3) == [
        utc(2026, 5, 1, 10, 1, 0), utc(2026, 5, 1, 10, 1, 15), utc(2026, 5, 1, 10, 1, 30)]
    assert fires("30 0 9 * * *", "UTC", utc(2026, 5, 1), 1) == [utc(2026, 5, 1, 9, 0, 30)]


@pytest.mark.parametrize("desc,start,expected", [
    ("@yearly", utc(2026, 3, 1), utc(2027, 1, 1)),
    ("@annually", utc(2026, 3, 1), utc(2027, 1, 1)),
    ("@monthly", utc(2026, 3, 1), utc(2026, 4, 1)),
    ("@weekly", utc(2026, 3, 4), utc(2026, 3, 8)),  # next Sunday
    ("@daily", utc(2026, 3, 1, 5), utc(2026, 3, 2)),
    ("@midnight", utc(2026, 3, 1, 5), utc(2026, 3, 2)),
    ("@hourly", utc(2026, 3, 1, 5, 1), utc(2026, 3, 1, 6)),
    ("@HOURLY", utc(2026, 3, 1, 5, 1), utc(2026, 3, 1, 6)),
])
def test_descriptors(desc, start, expected):
    assert parse_cron(desc).next_after(start) == expected


def test_leap_day_only_schedule():
    assert fires("0 0 29 2 *", "UTC", utc(2026, 1, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_prev_at_or_before():
    s = parse_cron("*/5 * * * *")
    assert s.prev_at_or_before(utc(2026, 1, 1, 10, 7, 3)) == utc(2026, 1, 1, 10, 5)
    assert s.prev_at_or_before(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 5)  # at: inclusive
    y = parse_cron("@yearly")
    assert y.prev_at_or_before(utc(2026, 6, 1)) == utc(2026, 1, 1)


# --- DST: spring forward -------------------------------------------------------------------------


def test_london_spring_forward_skipped_time_fires_once_after_the_gap():
    # 01:30 does not exist on Mar 29 (01:00 GMT -> 02:00 BST): fires at 02:00 BST = 01:00 UTC.
    got = fires("30 1 * * *", LONDON, ts(LONDON, 2026, 3, 28, 12), 3)
    assert got == [utc(2026, 3, 29, 1, 0), ts(LONDON, 2026, 3, 30, 1, 30), ts(LONDON, 2026, 3, 31, 1, 30)]


def test_new_york_spring_forward_skipped_times_fire_once():
    # 02:00, 02:20, 02:40 do not exist on Mar 8: ONE run at 03:00 EDT (07:00 UTC), then normal days.
    got = fires("*/20 2 * * *", NEW_YORK, ts(NEW_YORK, 2026, 3, 7, 12), 5)
    assert got == [ts(NEW_YORK, 2026, 3, 8, 3, 0), ts(NEW_YORK, 2026, 3, 9, 2, 0), ts(NEW_YORK, 2026, 3, 9, 2, 20),
                   ts(NEW_YORK, 2026, 3, 9, 2, 40), ts(NEW_YORK, 2026, 3, 10, 2, 0)]
    assert got[0] == utc(2026, 3, 8, 7, 0)


def test_new_york_spring_forward_prev_sees_the_gap_fire():
    s = parse_cron("30 2 * * *", NEW_YORK)
    assert s.prev_at_or_before(utc(2026, 3, 8, 7, 10)) == utc(2026, 3, 8, 7, 0)


def test_hourly_keeps_every_real_hour_over_spring_forward():
    for tz, start in ((LONDON, utc(2026, 3, 28, 22)), (NEW_YORK, utc(2026, 3, 8, 4))):
        got = fires("30 * * * *", tz, start, 6)
        assert [b - a for a, b in zip(got, got[1:])] == [3600.0] * 5, tz
        assert got[0] == start + 1800


def test_times_outside_the_gap_are_untouched_on_change_day():
    assert fires("0 12 * * *", NEW_YORK, ts(NEW_YORK, 2026, 3, 8, 0), 1) == [utc(2026, 3, 8, 16)]
    assert fires("0 12 * * *", LONDON, ts(LONDON, 2026, 3, 29, 0), 1) == [utc(2026, 3, 29, 11)]


# --- DST: fall back ------------------------------------------------------------------------------


def test_london_fall_back_repeated_time_fires_once():
    # 01:30 happens twice on Oct 25 (BST then GMT): one run, at the first (00:30 UTC).
    got = fires("30 1 * * *", LONDON, ts(LONDON, 2026, 10, 24, 12), 3)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]


def test_new_york_fall_back_repeated_times_fire_once():
    got = fires("*/30 1 * * *", NEW_YORK, ts(NEW_YORK, 2026, 10, 31, 12), 4)
    assert got == [utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 0), utc(2026, 11, 2, 6, 30)]


def test_fall_back_prev_does_not_return_the_second_showing():
    s = parse_cron("30 1 * * *", NEW_YORK)
    # 01:45 EST (second 01:xx hour): the last fire is still the first 01:30 (EDT).
    assert s.prev_at_or_before(ts(NEW_YORK, 2026, 11, 1, 1, 45, fold=1)) == utc(2026, 11, 1, 5, 30)


def test_hourly_keeps_every_real_hour_over_fall_back():
    for tz, start in ((LONDON, utc(2026, 10, 24, 22)), (NEW_YORK, utc(2026, 11, 1, 3))):
        got = fires("@hourly", tz, start, 6)
        assert [b - a for a, b in zip(got, got[1:])] == [3600.0] * 5, tz
    # Both 01:30s of New York's Nov 1 fire for a job whose hour is '*'.
    got = fires("30 * * * *", NEW_YORK, ts(NEW_YORK, 2026, 11, 1, 0, 45), 2)
    assert got == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)]


def test_six_field_seconds_in_a_zone_over_fall_back():
    got = fires("15 0 1 * * *", LONDON, ts(LONDON, 2026, 10, 24, 12), 2)
    assert got == [utc(2026, 10, 25, 0, 0, 15), utc(2026, 10, 26, 1, 0, 15)]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr,fragment", [
    ("* * * *", "4 fields"),
    ("* * * * * * *", "7 fields"),
    ("", "empty"),
    ("   ", "empty"),
    ("60 * * * *", "out of range"),
    ("* 24 * * *", "out of range"),
    ("* * 0 * *", "out of range"),
    ("* * 32 * *", "out of range"),
    ("* * * 13 *", "out of range"),
    ("* * * * 8", "out of range"),
    ("*/0 * * * *", "step"),
    ("5-1 * * * *", "backwards"),
    ("a b c d e", "not a number"),
    ("1,,2 * * * *", "empty list item"),
    ("* * * * MON#2", "not supported"),
    ("* * L * *", "not supported"),
    ("0 0 30 2 *", "never fires"),
    ("-1 * * * *", "not a number"),
    ("* * * FOO *", "names"),
    ("@reboot", "@reboot"),
    ("@fortnightly", "unknown cron descriptor"),
    ("1" * 5000, "over the 256"),
    (" ".join(["*"] * 200), "over the 256"),
    ("99999999999999999999 * * * *", "not a number"),
    ("٣ * * * *", "not a number"),  # a non-ASCII digit
])
def test_bad_expressions(expr, fragment):
    with pytest.raises(CronError, match=fragment):
        parse_cron(expr)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Europe", "x" * 500])
def test_unknown_time_zone(tz):
    with pytest.raises(CronError, match="unknown time zone"):
        parse_cron("* * * * *", tz)


def test_empty_time_zone_means_utc():
    assert parse_cron("* * * * *", "").tz == "UTC"


def test_cron_error_is_a_value_error_and_non_strings_are_rejected():
    assert issubclass(CronError, ValueError)
    with pytest.raises(CronError, match="string"):
        parse_cron(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("expr,tz", [
    ("*/7 3 * * 1-5", NEW_YORK),
    ("30 1 * * *", LONDON),
    ("*/20 2 * * *", NEW_YORK),
    ("13 */5 * * *", LONDON),
    ("0 0 1,15 * 3", "UTC"),
    ("45 30 1 * * *", LONDON),
])
def test_prev_and_next_agree_at_random_times_over_a_year(expr, tz):
    import random

    s = parse_cron(expr, tz)
    rng = random.Random(7)
    for _ in range(100):
        x = utc(2026, 1, 1) + rng.randrange(0, 366 * 86400)
        p = s.prev_at_or_before(x)
        assert p <= x and s.next_after(p - 1) == p and s.next_after(p) > x, (x, p)


@pytest.mark.parametrize("expr", [
    "0 12 13 * 5", "0 0 */10 * 1-3", "0 6 1,15,31 * *", "0 0 * * 6,0", "0 */5 29-31 2,4,6 *",
    "0 3 * 2 1", "0 0 31 * 2", "0 23 * * *",
])
def test_next_after_matches_a_brute_force_hour_scan_in_utc(expr):
    import random

    s = parse_cron(expr)
    rng = random.Random(expr)
    for _ in range(15):
        start = utc(2026, 1, 1) + rng.randrange(0, 365 * 24) * 3600
        t = start + 3600
        while not s.matches_local(datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)):
            t += 3600
        assert s.next_after(start) == t, datetime.fromtimestamp(start, timezone.utc)
