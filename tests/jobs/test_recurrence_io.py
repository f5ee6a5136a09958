"""Import and export of "recurrence" and "active_period" (batchadmin.jobs.io)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine

from batchadmin.jobs import io
from batchadmin.jobs.models import ActivePeriod, BatchJob, BatchRecurrence
from tests.base import BaseTestCase

UTC = dt.UTC
WEEKLY: dict[str, Any] = {
    "start": "2025-03-03T22:00:00",
    "timezone": "Europe/Oslo",
    "end": {"after": 7},
    "pattern": {"unit": "weeks", "every": 2, "weekdays": ["mon", "thu"]},
    "missed": "run_once",
    "overlap": "skip",
}


def wall(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """A wall-clock (naive) date and time, as a recurrence's start is."""
    return dt.datetime.combine(dt.date(year, month, day), dt.time(hour, minute))


def job_data(recurrence: Any = WEEKLY, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "description": "Replenishment",
        "scheduled_start": "2025-03-03T21:00:00+00:00",
        "recurrence": recurrence,
        "tasks": [{"key": "T1", "process": "demo.noop"}],
    }
    return dict(data, **overrides)


class RecurrenceImportTestCase(BaseTestCase):
    def test_it_imports_a_recurrence(self):
        [job] = io.import_data(job_data())
        r = job.recurrence
        assert (r.start_date, r.start_time, r.time_zone) == (
            dt.date(2025, 3, 3),
            dt.time(22, 0),
            "Europe/Oslo",
        )
        assert (r.unit, r.every, r.weekdays, r.end_after, r.end_by) == (
            "weeks",
            2,
            ["mon", "thu"],
            7,
            None,
        )
        assert r.missed == BatchRecurrence.Missed.RUN_ONCE
        assert r.describe() == "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo, 7 runs left"

    def test_it_reads_a_start_with_an_offset_in_the_recurrence_zone(self):
        [job] = io.import_data(job_data(dict(WEEKLY, start="2025-03-03T21:00:00Z")))
        assert job.recurrence.start() == wall(2025, 3, 3, 22, 0)

    def test_it_schedules_the_first_occurrence_from_now_when_no_start_is_given(self):
        data = job_data()
        del data["scheduled_start"]
        with time_machine.travel(dt.datetime(2025, 3, 4, 12, 0, tzinfo=UTC), tick=False):
            [job] = io.import_data(data)
        assert job.scheduled_start == dt.datetime(2025, 3, 6, 21, 0, tzinfo=UTC)  # Thu 22:00

    def test_it_fills_in_what_the_pattern_takes_from_the_start(self):
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"unit": "weeks"}, {"weekdays": ["mon"]}),
            ({"unit": "months", "every": 3}, {"day": 3}),
            ({"unit": "years"}, {"month": 3, "day": 3}),
        ]
        for pattern, expected in cases:
            with self.subTest(pattern=pattern):
                [job] = io.import_data(job_data(dict(WEEKLY, pattern=pattern)))
                exported = io.export_job(job)["recurrence"]["pattern"]
                assert (
                    exported
                    == {"unit": pattern["unit"], "every": pattern.get("every", 1)} | expected
                )

    def test_it_defaults_the_zone_to_the_sites(self):
        data = dict(WEEKLY)
        del data["timezone"]
        [job] = io.import_data(job_data(data))
        assert job.recurrence.time_zone == "UTC"

    def test_it_imports_an_active_period(self):
        night = ActivePeriod.objects.create(
            code="Night", start_time=dt.time(18), end_time=dt.time(8)
        )
        [job] = io.import_data(job_data(active_period="Night"))
        assert job.active_period == night


class RecurrenceRefusalTestCase(BaseTestCase):
    def assert_refused(self, data: dict[str, Any], message: str) -> None:
        jobs = BatchJob.objects.count()  # the database may hold seeded jobs
        with pytest.raises(io.ImportFailure) as excinfo:
            io.import_data(data)
        assert message in str(excinfo.value)
        assert BatchJob.objects.count() == jobs

    def test_it_refuses_bad_recurrences_and_names_the_culprit(self):
        where = "job 1 ('Replenishment'), recurrence"
        cases = [
            (dict(WEEKLY, timezone="Mars/Olympus"), f"{where}: Unknown time zone 'Mars/Olympus'."),
            (dict(WEEKLY, start="tomorrow"), f"{where}: start 'tomorrow' is not an ISO-8601"),
            (dict(WEEKLY, end={"after": 0}), f"{where}: end after must be a whole number"),
            (dict(WEEKLY, end={"by": "soon"}), f"{where}: end by 'soon' is not a date"),
            (dict(WEEKLY, end={"after": 2, "by": "2026-01-01"}), f"{where}: end is"),
            (dict(WEEKLY, end={"by": "2025-01-01"}), "The end date is before the start date."),
            (dict(WEEKLY, missed="replay"), f"{where}: missed 'replay' is not one of"),
            (dict(WEEKLY, every=2), f"{where}: unknown key(s) 'every'."),
            (dict(WEEKLY, pattern={"unit": "fortnights"}), f"{where}: unit 'fortnights'"),
            (
                dict(WEEKLY, pattern={"unit": "days", "weekdays": ["mon"]}),
                f"{where}, days pattern: unknown key(s) 'weekdays'.",
            ),
            (
                dict(WEEKLY, pattern={"unit": "weeks", "weekdays": ["mon", "funday"]}),
                f"{where}: weekday 'funday' is not one of",
            ),
            (dict(WEEKLY, pattern={"unit": "weeks", "every": 0}), f"{where}: every must be"),
            (
                dict(WEEKLY, pattern={"unit": "months", "nth": 5, "weekday": "mon"}),
                f"{where}: nth is 1, 2, 3, 4 or -1",
            ),
            (
                dict(WEEKLY, pattern={"unit": "months", "nth": 1, "weekday": "mon", "day": 3}),
                "not both",
            ),
            (
                dict(WEEKLY, pattern={"unit": "years", "month": 2, "day": 30}),
                "Feb has no day 30.",
            ),
            (dict(WEEKLY, pattern={"cron": "0 22 * *"}), "A cron expression has five fields"),
            (dict(WEEKLY, pattern={"cron": "0 22 * * *", "unit": "days"}), "unknown key(s)"),
            (dict(WEEKLY, pattern="daily"), f"{where}: pattern is"),
            (dict(WEEKLY, pattern={"unit": ["weeks"]}), f"{where}: unit ['weeks'] is not one of"),
            ("weekly", f"{where}: must be an object."),
        ]
        for recurrence, message in cases:
            with self.subTest(message=message):
                self.assert_refused(job_data(recurrence), message)

    def test_it_refuses_an_unknown_active_period(self):
        self.assert_refused(
            job_data(active_period="Lunch"),
            "job 1 ('Replenishment'): unknown active period 'Lunch'.",
        )


class RecurrenceExportTestCase(BaseTestCase):
    def test_it_exports_the_recurrence_and_active_period(self):
        ActivePeriod.objects.create(code="Night", start_time=dt.time(18), end_time=dt.time(8))
        [job] = io.import_data(job_data(active_period="Night"))
        data = io.export_job(job)
        assert data["active_period"] == "Night"
        assert data["recurrence"] == WEEKLY
        assert list(data)[-3:] == ["active_period", "recurrence", "tasks"]

    def test_it_exports_a_job_without_them_as_before(self):
        job = self.make_job()
        assert "recurrence" not in io.export_job(job)
        assert "active_period" not in io.export_job(job)

    def test_it_imports_what_it_exports_as_an_equal_job(self):
        cases: list[dict[str, Any]] = [
            WEEKLY,
            dict(WEEKLY, end=None, pattern={"unit": "minutes", "every": 15}),
            dict(WEEKLY, end={"by": "2026-06-30"}, pattern={"unit": "hours", "every": 6}),
            dict(WEEKLY, pattern={"unit": "days", "every": 3}, missed="skip"),
            dict(WEEKLY, overlap="buffer_one"),
            dict(WEEKLY, overlap="cancel_running"),
            dict(WEEKLY, pattern={"unit": "months", "every": 1, "day": 31}),
            dict(WEEKLY, pattern={"unit": "months", "every": 3, "nth": -1, "weekday": "fri"}),
            dict(WEEKLY, pattern={"unit": "years", "every": 1, "month": 2, "day": 29}),
            dict(
                WEEKLY,
                pattern={"unit": "years", "every": 2, "month": 11, "nth": 4, "weekday": "thu"},
            ),
            dict(WEEKLY, start="2025-03-30T02:30:00", pattern={"cron": "30 2 * * 0"}),
        ]
        for recurrence in cases:
            with self.subTest(pattern=recurrence["pattern"]):
                [job] = io.import_data(job_data(recurrence))
                exported = io.export_job(job)
                assert exported["recurrence"] == recurrence
                [copy] = io.import_data(exported)
                assert io.export_job(copy) == exported
