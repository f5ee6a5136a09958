"""Recurrences with a calendar: skip its dates, or move to the next working day (lib/recurrence)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import SimpleTestCase

from batchadmin.lib.recurrence import NEXT_DAY, SKIP, Rule, RuleError

UTC = dt.UTC
EASTER_2027 = frozenset({dt.date(2027, 3, 27)})  # the Saturday before Oslo's clocks go forward


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def wall(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """A wall-clock (naive) date and time, as a recurrence's start is."""
    return dt.datetime.combine(dt.date(year, month, day), dt.time(hour, minute))


def daily(**fields: object) -> Rule:
    return Rule(start=wall(2027, 3, 25, 8), time_zone="Europe/Oslo", **fields)  # type: ignore[arg-type]


class SkipTestCase(SimpleTestCase):
    def test_it_skips_a_calendar_date_across_the_dst_change(self):
        rule = daily(calendar=EASTER_2027)
        assert rule.next_runs(utc(2027, 3, 25), 4) == [
            utc(2027, 3, 25, 7),  # 08:00 CET
            utc(2027, 3, 26, 7),
            utc(2027, 3, 28, 6),  # 08:00 CEST: the 27th is skipped, the clock moved on the 28th
            utc(2027, 3, 29, 6),
        ]

    def test_it_reads_the_date_in_the_rules_zone(self):
        # 00:30 in Oslo on the 27th is still the 26th in UTC: the Oslo date counts.
        rule = Rule(start=wall(2027, 3, 25, 0, 30), time_zone="Europe/Oslo", calendar=EASTER_2027)
        runs = rule.next_runs(utc(2027, 3, 25), 3)
        assert utc(2027, 3, 26, 23, 30) not in runs
        assert runs[1] == utc(2027, 3, 27, 23, 30)  # 00:30 CET on the 28th

    def test_it_skips_elapsed_time_runs_on_the_date(self):
        rule = Rule(
            start=wall(2027, 3, 26, 20), time_zone="Europe/Oslo", unit="hours", every=6,
            calendar=EASTER_2027,
        )  # fmt: skip
        runs = rule.next_runs(utc(2027, 3, 26), 3)
        # 20:00 on the 26th; then 02:00, 08:00, 14:00 and 20:00 on the 27th are skipped;
        # 03:00 CEST on the 28th (elapsed time: the DST change moves the clock time).
        assert runs == [utc(2027, 3, 26, 19), utc(2027, 3, 28, 1), utc(2027, 3, 28, 7)]

    def test_it_refuses_a_rule_whose_every_occurrence_is_on_the_calendar(self):
        rule = daily(
            end_by=dt.date(2027, 3, 26),
            calendar=frozenset({dt.date(2027, 3, 25), dt.date(2027, 3, 26)}),
        )
        with pytest.raises(
            RuleError, match="Every occurrence falls on a date of the calendar"
        ) as exc:
            rule.check()
        assert exc.value.field == "calendar"

    def test_it_refuses_an_unknown_choice_for_calendar_dates(self):
        with pytest.raises(RuleError, match="skip or next_day"):
            daily(calendar=EASTER_2027, on_calendar_date="previous_day").check()

    def test_it_puts_the_calendar_in_words(self):
        words = daily(calendar=EASTER_2027, calendar_name="NO-HOL").describe()
        assert words == "Every day at 08:00 Europe/Oslo, except on dates of calendar NO-HOL"
        moved = daily(calendar=EASTER_2027, calendar_name="NO-HOL", on_calendar_date=NEXT_DAY)
        assert moved.describe().endswith("on dates of calendar NO-HOL the next working day")


class NextDayTestCase(SimpleTestCase):
    def test_it_moves_a_calendar_date_onto_the_dst_day_at_the_same_local_time(self):
        rule = Rule(
            start=wall(2027, 3, 20, 8), time_zone="Europe/Oslo", unit="weeks",
            weekdays=(5,), calendar=EASTER_2027, on_calendar_date=NEXT_DAY,
        )  # fmt: skip
        assert rule.next_runs(utc(2027, 3, 19), 3) == [
            utc(2027, 3, 20, 7),  # Saturday 08:00 CET
            utc(2027, 3, 28, 6),  # Saturday the 27th moved to Sunday, 08:00 CEST
            utc(2027, 4, 3, 6),
        ]

    def test_it_runs_once_when_a_moved_date_lands_on_an_occurrence(self):
        rule = daily(calendar=EASTER_2027, on_calendar_date=NEXT_DAY)
        assert rule.next_runs(utc(2027, 3, 26, 12), 2) == [utc(2027, 3, 28, 6), utc(2027, 3, 29, 6)]

    def test_it_moves_past_a_run_of_calendar_dates(self):
        week = frozenset(dt.date(2027, 12, 24) + dt.timedelta(days=i) for i in range(3))
        rule = Rule(
            start=wall(2027, 12, 1, 6), time_zone="Europe/Oslo", unit="months", day=25,
            calendar=week, on_calendar_date=NEXT_DAY,
        )  # fmt: skip
        assert rule.next_runs(utc(2027, 12, 2), 2) == [utc(2027, 12, 27, 5), utc(2028, 1, 25, 5)]
        # Asked from inside the run of calendar dates, the moved run is still found.
        assert rule.next_after(utc(2027, 12, 26, 12)) == utc(2027, 12, 27, 5)

    def test_it_keeps_a_moved_run_in_time_order(self):
        # Monday 08:00 and Tuesday 06:00: a Monday moved to Tuesday 08:00 comes after 06:00.
        rule = Rule(
            start=wall(2027, 3, 1), time_zone="UTC", unit="cron", cron="0 8 * * 1",
            calendar=frozenset({dt.date(2027, 3, 8)}), on_calendar_date=NEXT_DAY,
        )  # fmt: skip
        other = Rule(start=wall(2027, 3, 1), time_zone="UTC", unit="cron", cron="0 6 * * 2")
        assert rule.next_runs(utc(2027, 3, 8), 2) == [utc(2027, 3, 9, 8), utc(2027, 3, 15, 8)]
        assert other.next_after(utc(2027, 3, 8)) == utc(2027, 3, 9, 6)

    def test_it_drops_a_move_past_the_end_date(self):
        rule = daily(end_by=dt.date(2027, 3, 27), calendar=EASTER_2027, on_calendar_date=NEXT_DAY)
        assert rule.next_runs(utc(2027, 3, 25), 5) == [utc(2027, 3, 25, 7), utc(2027, 3, 26, 7)]


class PlanTestCase(SimpleTestCase):
    def test_it_marks_skipped_dates(self):
        rows = daily(calendar=EASTER_2027, on_calendar_date=SKIP).plan(utc(2027, 3, 26), 2)
        assert [(r.original, r.at) for r in rows] == [
            (utc(2027, 3, 26, 7), utc(2027, 3, 26, 7)),
            (utc(2027, 3, 27, 7), None),
            (utc(2027, 3, 28, 6), utc(2027, 3, 28, 6)),
        ]
        assert rows[1].skipped and not rows[1].moved

    def test_it_marks_moved_and_merged_dates(self):
        weekly = Rule(
            start=wall(2027, 3, 20, 8), time_zone="Europe/Oslo", unit="weeks",
            weekdays=(5,), calendar=EASTER_2027, on_calendar_date=NEXT_DAY,
        )  # fmt: skip
        [moved] = [r for r in weekly.plan(utc(2027, 3, 21), 2) if r.moved]
        assert (moved.original, moved.at, moved.merged) == (
            utc(2027, 3, 27, 7),
            utc(2027, 3, 28, 6),
            False,
        )
        rows = daily(calendar=EASTER_2027, on_calendar_date=NEXT_DAY).plan(utc(2027, 3, 27), 2)
        assert [(r.original, r.at, r.merged) for r in rows] == [
            (utc(2027, 3, 27, 7), utc(2027, 3, 28, 6), True),  # runs with the 28th's own
            (utc(2027, 3, 28, 6), utc(2027, 3, 28, 6), False),
            (utc(2027, 3, 29, 6), utc(2027, 3, 29, 6), False),
        ]

    def test_it_is_the_plain_runs_without_a_calendar(self):
        rule = daily()
        assert [r.at for r in rule.plan(utc(2027, 3, 25), 3)] == rule.next_runs(utc(2027, 3, 25), 3)
