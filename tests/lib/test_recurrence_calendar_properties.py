"""Property tests of recurrences with a calendar (hypothesis), over the same random patterns and
zones as test_recurrence_properties.py, with calendars of dates near the start: single days,
runs of days, and the days of DST changes.

The expectations are written from the definition (skip the date, or move to the next date not
in the calendar at the same local time), not from the code under test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

from django.test import SimpleTestCase
from hypothesis import assume, given
from hypothesis import strategies as st

from batchadmin.lib.recurrence import NEXT_DAY, SKIP, Rule, localize
from tests.lib.test_recurrence_properties import PROPERTY_SETTINGS, rules, transitions, wall

PLAIN = 60  # occurrences of the pattern looked at


@st.composite
def calendar_rules(draw: st.DrawFn, *, mode: str | None = None) -> Rule:
    rule = draw(rules(ends=("none", "by")))
    first = rule.start.date()
    days: set[dt.date] = set()
    # Runs of consecutive days, some long (a holiday week, a month-end freeze).
    for _ in range(draw(st.integers(1, 6))):
        begin = first + dt.timedelta(days=draw(st.integers(0, 90)))
        length = draw(st.sampled_from([1, 1, 1, 2, 3, 7, 12]))
        days |= {begin + dt.timedelta(days=i) for i in range(length)}
    if draw(st.booleans()):
        # The days the clocks change, where a moved time is most likely to be awkward.
        for year in (first.year, first.year + 1):
            days |= {start.date() for start, _ in transitions(rule.time_zone, year)}
    calendar = frozenset(days)
    on = mode or draw(st.sampled_from([SKIP, NEXT_DAY]))
    with_calendar = dataclasses.replace(rule, calendar=calendar, on_calendar_date=on)
    assume(with_calendar.next_after(with_calendar.anchor(), inclusive=True) is not None)
    return with_calendar


def plain(rule: Rule, n: int = PLAIN) -> list[dt.datetime]:
    return list(itertools.islice(dataclasses.replace(rule, calendar=frozenset()).occurrences(), n))


def next_working_day(rule: Rule, t: dt.datetime) -> dt.datetime:
    local = wall(t, rule)
    day = local.date()
    if day not in rule.calendar:
        return t  # itself (the second of a repeated local time is not its wall time again)
    while day in rule.calendar:
        day += dt.timedelta(days=1)
    return localize(dt.datetime.combine(day, local.time()), rule.tz)


class CalendarPropertiesTestCase(SimpleTestCase):
    @PROPERTY_SETTINGS
    @given(calendar_rules(mode=SKIP))
    def test_it_never_runs_on_a_skipped_date(self, rule):
        pattern = plain(rule)
        assume(pattern)
        last = pattern[-1]
        runs = list(itertools.takewhile(lambda t: t <= last, rule.occurrences()))
        assert all(wall(t, rule).date() not in rule.calendar for t in runs)
        # Exactly the pattern's occurrences on other dates: nothing else dropped or added.
        assert runs == [t for t in pattern if wall(t, rule).date() not in rule.calendar]

    @PROPERTY_SETTINGS
    @given(calendar_rules(mode=NEXT_DAY))
    def test_it_moves_calendar_dates_without_duplicating_an_occurrence(self, rule):
        pattern = plain(rule)
        assume(pattern)
        last = pattern[-1]
        runs = list(itertools.takewhile(lambda t: t <= last, rule.occurrences()))
        # Strictly increasing: a moved date never duplicates an occurrence.
        assert all(a < b for a, b in itertools.pairwise(runs))
        assert all(wall(t, rule).date() not in rule.calendar for t in runs)
        expected = set()
        for t in pattern:
            moved = next_working_day(rule, t)
            if rule.end_by is not None and wall(moved, rule).date() > rule.end_by:
                continue  # moved past the last date: dropped
            if moved <= last:
                expected.add(moved)
        assert set(runs) == expected

    @PROPERTY_SETTINGS
    @given(calendar_rules(), st.floats(0, 1, exclude_max=True))
    def test_it_finds_the_same_next_run_from_any_moment(self, rule, fraction):
        runs = list(itertools.islice(rule.occurrences(), 12))
        for a, b in itertools.pairwise(runs):
            assert rule.next_after(a) == b
            moment = min(a + (b - a) * fraction, b - dt.timedelta(microseconds=1))
            assert rule.next_after(moment) == b

    @PROPERTY_SETTINGS
    @given(calendar_rules())
    def test_its_preview_lists_the_runs_and_marks_the_rest(self, rule):
        at = rule.anchor()
        runs = rule.next_runs(at, 5)
        rows = rule.plan(at, 5)
        ran = [p.at for p in rows if p.at is not None and not p.merged]
        assert ran == runs
        assert all(p.at in runs for p in rows if p.merged)
        for p in rows:
            on_calendar = wall(p.original, rule).date() in rule.calendar
            assert on_calendar == (p.skipped or p.moved)
            if p.moved:
                assert rule.on_calendar_date == NEXT_DAY
                assert p.at == next_working_day(rule, p.original)
            if p.skipped and rule.on_calendar_date == NEXT_DAY:
                assert rule.end_by is not None
                assert wall(next_working_day(rule, p.original), rule).date() > rule.end_by
