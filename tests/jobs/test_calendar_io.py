"""Calendars in import and export (jobs/io.py), and `batch next`."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command

from batchadmin.jobs import io
from batchadmin.jobs.models import (
    ActivePeriod,
    BatchRecurrence,
    BatchStatus,
    Calendar,
    CalendarDate,
)
from tests.base import BaseTestCase

UTC = dt.UTC
HOLIDAYS = {
    "code": "NO-HOL",
    "description": "Norwegian holidays",
    "dates": ["2027-03-27", "2027-12-25"],
}
DAILY: dict[str, Any] = {
    "start": "2027-03-25T08:00:00",
    "timezone": "Europe/Oslo",
    "end": None,
    "pattern": {"unit": "days", "every": 1},
    "missed": "run_once",
    "overlap": "skip",
    "calendar": "NO-HOL",
    "on_calendar_date": "next_day",
}


def job_data(**recurrence: Any) -> dict[str, Any]:
    return {
        "description": "Payroll",
        "scheduled_start": "2027-03-25T07:00:00+00:00",
        "recurrence": DAILY | recurrence,
        "tasks": [{"key": "T1", "process": "demo.noop"}],
    }


class CalendarImportTestCase(BaseTestCase):
    def test_it_creates_the_calendar_and_the_recurrence_that_uses_it(self):
        [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [job_data()]})
        calendar = Calendar.objects.get(code="NO-HOL")
        assert calendar.description == "Norwegian holidays"
        assert sorted(calendar.date_set()) == [dt.date(2027, 3, 27), dt.date(2027, 12, 25)]
        recurring = BatchRecurrence.objects.get(job=job)
        assert (recurring.calendar, recurring.on_calendar_date) == (calendar, "next_day")

    def test_skip_is_the_default_and_an_existing_calendar_may_be_named(self):
        io.import_data({"calendars": [HOLIDAYS]})
        recurrence = {k: v for k, v in DAILY.items() if k != "on_calendar_date"}
        [job] = io.import_data(job_data() | {"recurrence": recurrence})
        assert job.recurrence.on_calendar_date == "skip"

    def test_without_a_start_the_first_run_follows_the_calendar(self):
        with time_machine.travel(dt.datetime(2027, 3, 26, 12, tzinfo=UTC), tick=False):
            data = job_data(on_calendar_date="skip")
            del data["scheduled_start"]
            [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [data]})
        assert job.scheduled_start == dt.datetime(2027, 3, 28, 6, tzinfo=UTC)  # the 27th skipped

    def test_a_calendar_in_the_file_replaces_the_dates_and_keeps_descriptions(self):
        calendar = Calendar.objects.create(code="NO-HOL", description="old")
        CalendarDate.objects.create(
            calendar=calendar, date=dt.date(2027, 12, 25), description="Christmas"
        )
        CalendarDate.objects.create(calendar=calendar, date=dt.date(2026, 12, 25))
        io.import_data({"calendars": [{"code": "NO-HOL", "dates": ["2027-12-25", "2027-12-26"]}]})
        calendar.refresh_from_db()
        assert calendar.description == "old"  # left out: left as it is
        assert list(calendar.dates.values_list("date", "description")) == [
            (dt.date(2027, 12, 25), "Christmas"),
            (dt.date(2027, 12, 26), ""),
        ]

    def test_bad_calendars_import_nothing(self):
        cases = [
            ({"calendars": [{"code": "bad code"}]}, "calendar 'bad code'"),
            (
                {"calendars": [{"code": "X", "dates": ["2027-02-30"]}]},
                "date '2027-02-30' is not a date",
            ),
            ({"calendars": [{"code": "X", "dates": "2027-01-01"}]}, '"dates" must be a list'),
            ({"calendars": [{"code": "X", "colour": "red"}]}, "unknown key(s) 'colour'"),
            ({"calendars": [{"code": "X"}, {"code": "X"}]}, "calendar 'X' is in the file twice"),
            ({"calendars": {"code": "X"}}, '"calendars" must be a list'),
            ({"jobs": [job_data(calendar="NOPE")]}, "unknown calendar 'NOPE'"),
            (
                {"calendars": [HOLIDAYS], "jobs": [job_data(on_calendar_date="later")]},
                "on_calendar_date 'later' is not one of skip, next_day",
            ),
            (
                {
                    "calendars": [{"code": "ALL", "dates": ["2027-03-25", "2027-03-26"]}],
                    "jobs": [
                        job_data(calendar="ALL", on_calendar_date="skip", end={"by": "2027-03-26"})
                    ],
                },
                "Every occurrence falls on a date of the calendar before the end date.",
            ),
        ]
        for data, message in cases:
            with self.subTest(message), pytest.raises(io.ImportFailure) as exc:
                io.import_data(data)
            assert message in str(exc.value)
        assert not Calendar.objects.exists()


class CalendarExportTestCase(BaseTestCase):
    def test_it_round_trips_the_job_and_its_calendar(self):
        [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [job_data()]})
        exported = io.export_file(job)
        assert exported["calendars"] == [HOLIDAYS]
        assert exported["jobs"][0]["recurrence"] == DAILY
        [copy] = io.import_data(json.loads(json.dumps(exported)))
        assert io.export_file(copy) == exported
        assert Calendar.objects.count() == 1

    def test_a_job_without_a_calendar_exports_as_before(self):
        data = job_data()
        data["recurrence"] = {
            k: v for k, v in DAILY.items() if k not in ("calendar", "on_calendar_date")
        }
        [job] = io.import_data(data)
        assert io.export_file(job) == io.export_job(job)
        assert "calendar" not in io.export_job(job)["recurrence"]

    def test_batch_export_prints_the_file(self):
        [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [job_data()]})
        out = StringIO()
        call_command("batch", "export", str(job.pk), stdout=out)
        assert json.loads(out.getvalue())["calendars"][0]["code"] == "NO-HOL"


class BatchNextTestCase(BaseTestCase):
    def next(self, *args: Any) -> tuple[str, str]:
        out, err = StringIO(), StringIO()
        call_command("batch", "next", *[str(a) for a in args], stdout=out, stderr=err)
        return out.getvalue(), err.getvalue()

    def test_it_prints_the_next_starts_one_iso_time_per_line(self):
        with time_machine.travel(dt.datetime(2027, 3, 24, 12, tzinfo=UTC), tick=False):
            [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [job_data()]})
            out, err = self.next(job.pk)
        assert out == (
            "2027-03-25T08:00:00+01:00\n"
            "2027-03-26T08:00:00+01:00\n"
            "2027-03-28T08:00:00+02:00\n"  # the 27th moved onto the 28th: one run
            "2027-03-29T08:00:00+02:00\n"
            "2027-03-30T08:00:00+02:00\n"
        )
        assert err == ""

    def test_count_end_after_and_the_active_period(self):
        period = ActivePeriod.objects.create(
            code="Day", start_time=dt.time(9), end_time=dt.time(17), time_zone="Europe/Oslo"
        )
        [job] = io.import_data({"calendars": [HOLIDAYS], "jobs": [job_data(end={"after": 2})]})
        job.active_period = period
        job.save()
        with time_machine.travel(dt.datetime(2027, 3, 24, 12, tzinfo=UTC), tick=False):
            out, _ = self.next(job.pk, "--count", 3)
        # 08:00 falls before the period opens: each start waits for 09:00; End after 2.
        assert out.splitlines() == ["2027-03-25T09:00:00+01:00", "2027-03-26T09:00:00+01:00"]

    def test_a_job_that_runs_once_or_is_withheld(self):
        job = self.make_job(scheduled_start=dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC))
        assert self.next(job.pk) == ("2027-01-02T03:04:05+00:00\n", "")
        job.status = BatchStatus.WITHHOLD
        job.save()
        assert self.next(job.pk) == ("", f"Job {job.pk} has no next start: it is Withhold.\n")

    def test_bad_input_is_a_clear_error(self):
        with pytest.raises(CommandError, match="There is no batch job 999999"):
            self.next(999999)
        job = self.make_job()
        with pytest.raises(CommandError, match="--count must be from 1 to 1000, got 0"):
            self.next(job.pk, "--count", 0)
        with pytest.raises(CommandError, match="invalid int value: 'five'"):
            self.next(job.pk, "--count", "five")
