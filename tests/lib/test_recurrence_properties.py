"""Property tests of the recurrence maths over random patterns and zones (hypothesis).

Each property is checked against definitions written here independently of the code under
test (what day a pattern means, what a DST gap is), not against dateutil or the code itself.
Starts are drawn near the zone's DST changes and at night, where the awkward cases live.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import functools
import itertools

from croniter import croniter
from django.test import SimpleTestCase
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from batchadmin.lib.recurrence import (
    CRON,
    DAYS,
    ELAPSED_UNITS,
    MONTHS,
    WEEKS,
    YEARS,
    Rule,
    exists,
    localize,
    zone,
)

ZONES = [
    "UTC",
    "Europe/Oslo",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Santiago",  # southern hemisphere, changes at midnight
    "America/Havana",  # changes at midnight
    "Europe/Dublin",  # "negative" DST in the tz database
    "Africa/Casablanca",  # DST suspended for Ramadan
    "Pacific/Chatham",  # UTC+12:45
    "America/St_Johns",  # UTC-3:30
    "Asia/Kolkata",  # no DST
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]
OCCURRENCES = 25
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # CI runs the same examples every time
    database=None,  # and keeps no example database in the work tree
)
CRON_TEMPLATES = [
    "{m} {h} * * *",
    "*/{k} * * * *",
    "{m} */{k} * * *",
    "{m} {h} {d} * *",
    "{m} {h} * * {w}",
    "{m} {h},{h2} * * 1-5",
]


@functools.cache
def transitions(zone_name: str, year: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """The zone's UTC offset changes in ``year``, as the local times they skip or repeat.

    Each is (first, last) local time of the gap (clocks forward) or of the repeated stretch
    (clocks back), as naive datetimes.
    """
    tz = zone(zone_name)
    noon = dt.datetime(year, 1, 1, 12, tzinfo=dt.UTC)
    found = []
    for i in range(366):
        lo, hi = noon + dt.timedelta(days=i), noon + dt.timedelta(days=i + 1)
        if lo.astimezone(tz).utcoffset() == hi.astimezone(tz).utcoffset():
            continue
        while hi - lo > dt.timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                lo = mid
            else:
                hi = mid
        before = lo.astimezone(tz).replace(tzinfo=None) + dt.timedelta(seconds=1)
        after = hi.astimezone(tz).replace(tzinfo=None)
        found.append((min(before, after), max(before, after)))
    return found


@st.composite
def rules(draw: st.DrawFn, *, ends: tuple[str, ...] = ("none", "after", "by")) -> Rule:
    zone_name = draw(st.sampled_from(ZONES))
    year = draw(st.integers(2000, 2035))
    near = transitions(zone_name, year)
    awkward = None  # a local time the clocks skip or repeat, on or a few days after the start
    aim_at_dst = draw(st.integers(0, 3)) > 0
    if near and aim_at_dst:
        first, last = draw(st.sampled_from(near))
        minutes = int((last - first).total_seconds() // 60)
        awkward = first + dt.timedelta(minutes=draw(st.integers(0, minutes)))
        day = awkward.date() - dt.timedelta(days=draw(st.integers(0, 6)))
        hour, minute, second = awkward.hour, awkward.minute, 0
    else:
        day = draw(st.dates(dt.date(year, 1, 1), dt.date(year, 12, 31)))
        hour = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 23]), st.integers(0, 23)))
        minute = draw(st.sampled_from([0, 15, 30, 45, 59]))
        second = draw(st.sampled_from([0, 0, 0, 30]))
    start = dt.datetime.combine(day, dt.time(hour, minute, second))
    unit = draw(st.sampled_from([*ELAPSED_UNITS, DAYS, WEEKS, MONTHS, YEARS, CRON]))
    # Near a DST change, often aim the pattern at the awkward day itself.
    aim = awkward is not None and draw(st.booleans())
    fields: dict[str, object] = {}
    if unit == "minutes":
        fields["every"] = draw(st.sampled_from([1, 5, 7, 15, 30, 45, 90, 1440]))
    elif unit == "hours":
        fields["every"] = draw(st.integers(1, 30))
    elif unit == CRON:
        template = draw(st.sampled_from(CRON_TEMPLATES))
        h = awkward.hour if aim and awkward else draw(st.integers(0, 23))
        fields["cron"] = template.format(
            m=awkward.minute if aim and awkward else draw(st.sampled_from([0, 15, 30, 59])),
            h=h,
            h2=(h + draw(st.integers(1, 23))) % 24,
            k=draw(st.sampled_from([2, 5, 15, 30])),
            d=awkward.day if aim and awkward else draw(st.integers(1, 31)),
            w=(awkward.weekday() + 1) % 7 if aim and awkward else draw(st.integers(0, 6)),
        )
    else:
        fields["every"] = 1 if aim else draw(st.integers(1, 4))
    if unit == WEEKS:
        weekdays = draw(st.sets(st.integers(0, 6), min_size=1))
        if aim and awkward:
            weekdays.add(awkward.weekday())
        fields["weekdays"] = tuple(sorted(weekdays))
    if unit in (MONTHS, YEARS):
        if unit == YEARS:
            fields["month"] = awkward.month if aim and awkward else draw(st.integers(1, 12))
        if aim and awkward:
            fields["day"] = awkward.day
        elif draw(st.booleans()):
            fields["nth"] = draw(st.sampled_from([1, 2, 3, 4, -1]))
            fields["weekday"] = draw(st.integers(0, 6))
        else:
            month = fields.get("month", 1)
            longest = 29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31
            fields["day"] = draw(st.integers(1, 31 if unit == MONTHS else longest))
    end = draw(st.sampled_from(ends))
    if end == "after":
        fields["end_after"] = draw(st.integers(1, 12))
    elif end == "by":
        fields["end_by"] = day + dt.timedelta(days=draw(st.integers(0, 400)))
    rule = Rule(start=start, time_zone=zone_name, unit=unit, **fields)  # type: ignore[arg-type]
    assume(rule.next_after(rule.anchor(), inclusive=True) is not None)  # e.g. April 31st
    rule.check()
    return rule


def occurrences(rule: Rule, n: int = OCCURRENCES) -> list[dt.datetime]:
    return list(itertools.islice(rule.occurrences(), n))


def wall(t: dt.datetime, rule: Rule) -> dt.datetime:
    return t.astimezone(rule.tz).replace(tzinfo=None)


def on_pattern_day(rule: Rule, d: dt.date) -> bool:
    """Whether the calendar pattern runs on local date ``d`` (its definition, from the issue)."""
    s = rule.start.date()
    if d < s:
        return False
    if rule.unit == DAYS:
        return (d - s).days % rule.every == 0
    if rule.unit == WEEKS:
        weeks = ((d - dt.timedelta(days=d.weekday())) - (s - dt.timedelta(days=s.weekday()))).days
        return d.weekday() in rule.weekdays and (weeks // 7) % rule.every == 0
    months = (d.year - s.year) * 12 + d.month - s.month
    if rule.unit == MONTHS and months % rule.every != 0:
        return False
    if rule.unit == YEARS and ((d.year - s.year) % rule.every != 0 or d.month != rule.month):
        return False
    if rule.nth is None:
        return d.day == rule.day
    last_day = calendar.monthrange(d.year, d.month)[1]
    nth_ok = d.day + 7 > last_day if rule.nth == -1 else (d.day - 1) // 7 + 1 == rule.nth
    return d.weekday() == rule.weekday and nth_ok


def requested(rule: Rule, t: dt.datetime) -> dt.datetime:
    """The local time the pattern asked for that ran at ``t``.

    Either the wall clock showed it at ``t``, or it lies in the DST gap the clock jumped over
    just before ``t``: it does not exist, and ``t`` is the first instant after the gap.
    """
    shown = wall(t, rule)
    if rule.unit == CRON:
        if croniter.match(rule.cron, shown):
            return shown
        asked = croniter(rule.cron, wall(t - dt.timedelta(microseconds=1), rule)).get_next(
            dt.datetime
        )
    else:
        if shown.time() == rule.start.time():
            return shown
        candidates = [
            dt.datetime.combine(shown.date() - dt.timedelta(days=days), rule.start.time())
            for days in (0, 1)
        ]
        asked = next(c for c in candidates if wall(t - dt.timedelta(microseconds=1), rule) < c)
    # Not shown: only allowed for a time that does not exist, run right after the gap.
    assert wall(t - dt.timedelta(microseconds=1), rule) < asked < shown, (t, asked)
    assert not exists(asked, rule.tz), asked
    assert localize(asked, rule.tz) == t
    return asked


class RecurrencePropertiesTestCase(SimpleTestCase):
    @PROPERTY_SETTINGS
    @given(rules())
    def test_it_lists_strictly_increasing_occurrences_from_the_anchor(self, rule):
        runs = occurrences(rule)
        assert runs, rule
        assert all(a < b for a, b in itertools.pairwise(runs))
        assert runs[0] >= rule.anchor()
        assert all(t.tzinfo is not None for t in runs)

    @PROPERTY_SETTINGS
    @given(rules())
    def test_it_never_drifts_from_the_anchor(self, rule):
        runs = occurrences(rule)
        if rule.unit in ELAPSED_UNITS:
            step = ELAPSED_UNITS[rule.unit] * rule.every
            assert runs[0] == rule.anchor()
            assert all(b - a == step for a, b in itertools.pairwise(runs))
            return
        asked = [requested(rule, t) for t in runs]
        if rule.unit == CRON:
            assert all(a >= rule.start for a in asked)
            return
        # Every run is on a day of the pattern at the start's time of day, and no day of the
        # pattern between the start and the last run is left out.
        assert all(on_pattern_day(rule, a.date()) for a in asked), asked
        if rule.unit != YEARS:
            days = (asked[-1].date() - rule.start.date()).days
            expected = [
                d
                for d in (rule.start.date() + dt.timedelta(days=i) for i in range(days + 1))
                if on_pattern_day(rule, d)
                and dt.datetime.combine(d, rule.start.time()) >= rule.start
            ]
            assert [a.date() for a in asked] == expected

    @PROPERTY_SETTINGS
    @given(rules(), st.floats(0, 1, exclude_max=True))
    def test_it_finds_the_same_next_run_from_any_moment(self, rule, fraction):
        """Computing from a run's end, however late, gives the pattern's next occurrence."""
        runs = occurrences(rule, 12)
        for a, b in itertools.pairwise(runs):
            assert rule.next_after(a) == b
            moment = min(a + (b - a) * fraction, b - dt.timedelta(microseconds=1))
            assert rule.next_after(moment) == b
            assert rule.next_after(b, inclusive=True) == b

    @PROPERTY_SETTINGS
    @given(rules())
    def test_it_respects_end_after(self, rule):
        done, after, starts = 0, rule.anchor() - dt.timedelta(seconds=1), []
        while (following := rule.next_after(after, runs_done=done)) is not None:
            starts.append(following)
            done, after = done + 1, following
            if len(starts) > 20:
                break
        if rule.end_after is None:
            assert len(starts) == 21 or rule.end_by is not None
        else:
            assert starts == occurrences(rule, rule.end_after)
            assert len(rule.next_runs(rule.anchor(), 50)) == len(starts)

    @PROPERTY_SETTINGS
    @given(rules(ends=("by",)))
    def test_it_respects_end_by(self, rule):
        assert rule.end_by is not None
        bounded = occurrences(rule, 400)
        assume(len(bounded) < 400)
        assert all(wall(t, rule).date() <= rule.end_by for t in bounded)
        unbounded = dataclasses.replace(rule, end_by=None)
        everything = list(itertools.islice(unbounded.occurrences(), len(bounded) + 1))
        assert everything[: len(bounded)] == bounded  # a prefix: nothing dropped before the end
        if len(everything) > len(bounded):
            assert wall(everything[-1], rule).date() > rule.end_by
