"""Recurrence maths on the awkward cases, one table row each (batchadmin.lib.recurrence)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.test import SimpleTestCase

from batchadmin.lib.recurrence import Rule, RuleError, Window, exists, localize, zone

UTC = dt.UTC
OSLO, NEW_YORK = "Europe/Oslo", "America/New_York"
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def wall(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    """A wall-clock (naive) date and time, as a recurrence's start is."""
    return dt.datetime.combine(dt.date(year, month, day), dt.time(hour, minute, second))


def first(rule: Rule, n: int, after: dt.datetime | None = None) -> list[dt.datetime]:
    rule.check()
    return list(itertools.islice(rule.occurrences(after), n))


def local(times: list[dt.datetime], zone_name: str) -> list[str]:
    return [t.astimezone(zone(zone_name)).isoformat() for t in times]


class CalendarTestCase(SimpleTestCase):
    def test_it_skips_months_without_the_31st(self):
        rule = Rule(start=wall(2025, 1, 31, 22, 0), time_zone="UTC", unit="months")
        assert [t.date() for t in first(rule, 6)] == [
            dt.date(2025, 1, 31),
            dt.date(2025, 3, 31),
            dt.date(2025, 5, 31),
            dt.date(2025, 7, 31),
            dt.date(2025, 8, 31),
            dt.date(2025, 10, 31),
        ]

    def test_it_runs_on_the_last_weekday_of_february_in_a_leap_year(self):
        rule = Rule(
            start=wall(2024, 1, 1, 6, 0),
            time_zone="UTC",
            unit="years",
            month=2,
            nth=-1,
            weekday=THU,
        )
        assert [t.date() for t in first(rule, 5)] == [
            dt.date(2024, 2, 29),  # leap day, a Thursday
            dt.date(2025, 2, 27),
            dt.date(2026, 2, 26),
            dt.date(2027, 2, 25),
            dt.date(2028, 2, 24),  # leap year, but the 29th is a Tuesday
        ]

    def test_it_runs_on_the_29th_of_february_only_in_leap_years(self):
        rule = Rule(start=wall(2024, 2, 29, 0, 0), time_zone="UTC", unit="years", day=29)
        assert [t.year for t in first(rule, 3)] == [2024, 2028, 2032]

    def test_it_runs_on_the_nth_weekday_of_every_other_month(self):
        rule = Rule(
            start=wall(2025, 1, 1, 9, 0),
            time_zone=OSLO,
            unit="months",
            every=2,
            nth=2,
            weekday=TUE,
        )
        assert [t.astimezone(rule.tz).date() for t in first(rule, 3)] == [
            dt.date(2025, 1, 14),
            dt.date(2025, 3, 11),
            dt.date(2025, 5, 13),
        ]

    def test_it_counts_weeks_from_the_start_week(self):
        # Start on a Wednesday: Monday of that week is before the start, so not a run.
        rule = Rule(
            start=wall(2025, 3, 5, 22, 0),
            time_zone=OSLO,
            unit="weeks",
            every=2,
            weekdays=(MON, THU),
        )
        assert [t.astimezone(rule.tz).date() for t in first(rule, 4)] == [
            dt.date(2025, 3, 6),
            dt.date(2025, 3, 17),
            dt.date(2025, 3, 20),
            dt.date(2025, 3, 31),
        ]

    def test_it_never_drifts_from_the_anchor_whatever_the_previous_end(self):
        rule = Rule(start=wall(2025, 3, 1, 9, 0), time_zone="UTC", unit="minutes", every=15)
        # A run that ended at 09:37:12 is followed by 09:45, not by 09:52:12.
        assert rule.next_after(utc(2025, 3, 1, 9, 37, 12)) == utc(2025, 3, 1, 9, 45)
        assert rule.next_after(utc(2025, 3, 1, 9, 45)) == utc(2025, 3, 1, 10, 0)
        assert rule.next_after(utc(2025, 3, 1, 8, 0)) == utc(2025, 3, 1, 9, 0)
        assert rule.next_after(utc(2025, 3, 1, 9, 0), inclusive=True) == utc(2025, 3, 1, 9, 0)


class DaylightSavingTestCase(SimpleTestCase):
    """02:30 on the days the clocks change, as a daily wall-clock pattern."""

    def daily(self, zone_name: str, day: dt.date, at: dt.time = dt.time(2, 30)) -> list[str]:
        start = dt.datetime.combine(day - dt.timedelta(days=1), at)
        return local(first(Rule(start=start, time_zone=zone_name, unit="days"), 3), zone_name)

    def test_it_runs_a_time_skipped_in_spring_right_after_the_gap_in_oslo(self):
        # 2025-03-30: 02:00 CET -> 03:00 CEST; 02:30 does not exist.
        assert self.daily(OSLO, dt.date(2025, 3, 30)) == [
            "2025-03-29T02:30:00+01:00",
            "2025-03-30T03:00:00+02:00",
            "2025-03-31T02:30:00+02:00",
        ]

    def test_it_runs_a_repeated_time_in_autumn_once_in_oslo(self):
        # 2025-10-26: 03:00 CEST -> 02:00 CET; 02:30 happens twice, the job runs at the first.
        assert self.daily(OSLO, dt.date(2025, 10, 26)) == [
            "2025-10-25T02:30:00+02:00",
            "2025-10-26T02:30:00+02:00",
            "2025-10-27T02:30:00+01:00",
        ]

    def test_it_runs_a_time_skipped_in_spring_right_after_the_gap_in_new_york(self):
        # 2025-03-09: 02:00 EST -> 03:00 EDT.
        assert self.daily(NEW_YORK, dt.date(2025, 3, 9)) == [
            "2025-03-08T02:30:00-05:00",
            "2025-03-09T03:00:00-04:00",
            "2025-03-10T02:30:00-04:00",
        ]

    def test_it_runs_half_past_two_once_on_the_fall_back_day_in_new_york(self):
        # 2025-11-02: 02:00 EDT -> 01:00 EST; 02:30 exists once (after the repeat).
        assert self.daily(NEW_YORK, dt.date(2025, 11, 2)) == [
            "2025-11-01T02:30:00-04:00",
            "2025-11-02T02:30:00-05:00",
            "2025-11-03T02:30:00-05:00",
        ]

    def test_it_runs_a_repeated_time_once_in_new_york(self):
        assert self.daily(NEW_YORK, dt.date(2025, 11, 2), dt.time(1, 30)) == [
            "2025-11-01T01:30:00-04:00",
            "2025-11-02T01:30:00-04:00",  # the first of the two 01:30s
            "2025-11-03T01:30:00-05:00",
        ]

    def test_it_runs_cron_times_in_the_gap_once_after_it(self):
        rule = Rule(
            start=wall(2025, 3, 30, 1, 0),
            time_zone=OSLO,
            unit="cron",
            cron="*/30 * * * *",
        )
        assert local(first(rule, 4), OSLO) == [
            "2025-03-30T01:00:00+01:00",
            "2025-03-30T01:30:00+01:00",
            "2025-03-30T03:00:00+02:00",  # 02:00 and 02:30 do not exist; 03:00 runs once
            "2025-03-30T03:30:00+02:00",
        ]

    def test_it_keeps_elapsed_hours_across_the_change(self):
        rule = Rule(start=wall(2025, 10, 26, 0, 0), time_zone=OSLO, unit="hours")
        runs = first(rule, 5)
        assert {b - a for a, b in itertools.pairwise(runs)} == {dt.timedelta(hours=1)}
        assert local(runs, OSLO)[2:4] == ["2025-10-26T02:00:00+02:00", "2025-10-26T02:00:00+01:00"]

    def test_it_places_local_times_on_the_time_line(self):
        tz = zone(OSLO)
        assert localize(wall(2025, 3, 30, 2, 0), tz) == utc(2025, 3, 30, 1, 0)
        assert localize(wall(2025, 3, 30, 2, 59, 59), tz) == utc(2025, 3, 30, 1, 0)
        assert localize(wall(2025, 10, 26, 2, 30), tz) == utc(2025, 10, 26, 0, 30)
        assert not exists(wall(2025, 3, 30, 2, 30), tz)
        assert exists(wall(2025, 10, 26, 2, 30), tz)

    def test_it_handles_a_day_a_zone_skipped(self):
        # Samoa skipped 2011-12-30 entirely: a daily run that day happens at the next midnight.
        rule = Rule(start=wall(2011, 12, 29, 9, 0), time_zone="Pacific/Apia", unit="days")
        assert local(first(rule, 3), "Pacific/Apia") == [
            "2011-12-29T09:00:00-10:00",
            "2011-12-31T00:00:00+14:00",
            "2011-12-31T09:00:00+14:00",
        ]


class RangeTestCase(SimpleTestCase):
    def test_it_ends_after_n_runs(self):
        rule = Rule(start=wall(2025, 3, 1, 9, 0), time_zone="UTC", end_after=3)
        assert rule.next_after(utc(2025, 1, 1), runs_done=2) == utc(2025, 3, 1, 9, 0)
        assert rule.next_after(utc(2025, 1, 1), runs_done=3) is None
        assert len(rule.next_runs(utc(2025, 1, 1), 5)) == 3
        assert len(rule.next_runs(utc(2025, 1, 1), 5, runs_done=1)) == 2

    def test_it_ends_by_a_local_date_inclusive(self):
        rule = Rule(
            start=wall(2025, 3, 1, 23, 30),
            time_zone=OSLO,
            end_by=dt.date(2025, 3, 3),
        )
        # 23:30 in Oslo is 22:30 UTC: the last run is on the 3rd local time.
        assert local(first(rule, 5), OSLO) == [
            "2025-03-01T23:30:00+01:00",
            "2025-03-02T23:30:00+01:00",
            "2025-03-03T23:30:00+01:00",
        ]

    def test_it_spans_the_occurrences_between_two_instants(self):
        rule = Rule(start=wall(2025, 3, 1, 9, 0), time_zone="UTC", unit="minutes")
        span = rule.span(utc(2025, 3, 1, 9, 0), utc(2025, 3, 1, 9, 4, 30), limit=100)
        assert span is not None
        assert (span.first, span.last, span.count) == (
            utc(2025, 3, 1, 9, 0),
            utc(2025, 3, 1, 9, 4),
            5,
        )
        capped = rule.span(utc(2025, 3, 1, 9, 0), utc(2025, 3, 2), limit=10)
        assert capped is not None and capped.count == 10
        assert rule.span(utc(2025, 3, 1, 9, 0, 1), utc(2025, 3, 1, 9, 0, 59), limit=10) is None


class CheckTestCase(SimpleTestCase):
    def assert_refused(self, rule: Rule, message: str, field: str | None) -> None:
        with pytest.raises(RuleError, match=message) as excinfo:
            rule.check()
        assert excinfo.value.field == field

    def test_it_refuses_what_the_dialog_must_refuse(self):
        start = wall(2025, 3, 1, 9, 0)
        cases = [
            (Rule(start=start, time_zone="Mars/Olympus"), "Unknown time zone", "time_zone"),
            (Rule(start=start, time_zone="localtime"), "Unknown time zone", "time_zone"),
            (Rule(start=start, time_zone="UTC", every=0), "at least every 1", "every"),
            (Rule(start=start, time_zone="UTC", unit="fortnights"), "Unknown unit", "unit"),
            (
                Rule(start=start, time_zone="UTC", end_after=2, end_by=dt.date(2026, 1, 1)),
                "not both",
                "end",
            ),
            (Rule(start=start, time_zone="UTC", end_after=0), "at least one run", "end_after"),
            (
                Rule(start=start, time_zone="UTC", end_by=dt.date(2025, 2, 1)),
                "before the start",
                "end_by",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="cron", cron="0 0 22 * * 1"),
                "five fields",
                "cron",
            ),
            (Rule(start=start, time_zone="UTC", unit="cron", cron="0 0 31 2 *"), "never", "cron"),
            (
                Rule(start=start, time_zone="UTC", unit="years", month=2, day=30),
                "Feb has no day 30",
                "day",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="months", day=3, nth=1, weekday=MON),
                "not both",
                "day",
            ),
            (Rule(start=start, time_zone="UTC", unit="months", nth=1), "which weekday", "nth"),
            (
                Rule(start=start, time_zone="UTC", unit="months", nth=5, weekday=MON),
                "first to fourth",
                "nth",
            ),
            (
                Rule(
                    start=start.replace(month=4), time_zone="UTC", unit="months", day=31, every=12
                ),
                "never occurs",
                "unit",
            ),  # every 12 months from April: the 31st of April
            (
                Rule(
                    start=start,
                    time_zone="UTC",
                    unit="years",
                    day=29,
                    month=2,
                    end_by=dt.date(2027, 12, 31),
                ),
                "before the end date",
                "end_by",
            ),
        ]
        for rule, message, field in cases:
            with self.subTest(message=message):
                self.assert_refused(rule, message, field)


class WordsTestCase(SimpleTestCase):
    def test_it_says_the_rule_in_words(self):
        start = wall(2025, 3, 3, 22, 0)
        cases = [
            (
                Rule(
                    start=start,
                    time_zone=OSLO,
                    unit="weeks",
                    every=2,
                    weekdays=(THU, MON),
                    end_after=10,
                ),
                3,
                "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo, 7 runs left",
            ),
            (Rule(start=start, time_zone="UTC"), 0, "Every day at 22:00 UTC"),
            (
                Rule(start=start, time_zone="UTC", unit="minutes", every=15),
                0,
                "Every 15 minutes from 22:00 UTC",
            ),
            (Rule(start=start, time_zone="UTC", unit="hours"), 0, "Every hour from 22:00 UTC"),
            (
                Rule(
                    start=start,
                    time_zone="UTC",
                    unit="months",
                    day=31,
                    end_by=dt.date(2025, 12, 31),
                ),
                0,
                "Every month on the 31st at 22:00 UTC, until 31 Dec 2025",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="months", every=3, nth=-1, weekday=FRI),
                0,
                "Every 3 months on the last Fri at 22:00 UTC",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="years", month=2, day=29),
                0,
                "Every year on 29 Feb at 22:00 UTC",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="years", month=11, nth=4, weekday=THU),
                0,
                "Every year on the fourth Thu of Nov at 22:00 UTC",
            ),
            (
                Rule(start=start, time_zone=OSLO, unit="cron", cron="0 22 * * 1,4", end_after=1),
                0,
                "At 22:00, only on Monday and Thursday (Europe/Oslo), 1 run left",
            ),
            (
                Rule(start=start, time_zone="UTC", unit="days", every=3, end_after=2),
                2,
                "Every 3 days at 22:00 UTC, no runs left",
            ),
            (
                Rule(start=start.replace(second=30), time_zone="UTC", unit="days"),
                0,
                "Every day at 22:00:30 UTC",
            ),
        ]
        for rule, runs_done, words in cases:
            with self.subTest(words=words):
                rule.check()
                assert rule.describe(runs_done=runs_done) == words


class WindowTestCase(SimpleTestCase):
    def test_it_opens_and_closes_across_midnight(self):
        night = Window(dt.time(18, 0), dt.time(8, 0), OSLO)  # UTC+1 in March
        assert night.is_open(utc(2025, 3, 3, 17, 0))  # 18:00 local
        assert night.is_open(utc(2025, 3, 4, 6, 59))  # 07:59 local
        assert not night.is_open(utc(2025, 3, 4, 7, 0))  # 08:00 local
        assert not night.is_open(utc(2025, 3, 3, 16, 59))

    def test_it_finds_the_next_opening(self):
        night = Window(dt.time(18, 0), dt.time(8, 0), OSLO)
        assert night.next_opening(utc(2025, 3, 3, 12, 0)) == utc(2025, 3, 3, 17, 0)
        assert night.next_opening(utc(2025, 3, 3, 20, 0)) == utc(2025, 3, 3, 20, 0)  # open
        day = Window(dt.time(9, 0), dt.time(17, 0), "UTC")
        assert day.next_opening(utc(2025, 3, 3, 17, 0)) == utc(2025, 3, 4, 9, 0)

    def test_it_follows_the_zones_daylight_saving_time(self):
        night = Window(dt.time(18, 0), dt.time(8, 0), OSLO)
        assert night.next_opening(utc(2025, 3, 31, 12, 0)) == utc(2025, 3, 31, 16, 0)  # CEST
        # An opening inside the DST gap opens right after it.
        early = Window(dt.time(2, 30), dt.time(4, 0), OSLO)
        assert early.next_opening(utc(2025, 3, 29, 12, 0)) == utc(2025, 3, 30, 1, 0)

    def test_it_is_always_open_when_start_equals_end(self):
        always = Window(dt.time(0, 0), dt.time(0, 0), "UTC")
        assert always.is_open(utc(2025, 3, 3, 12, 34))
