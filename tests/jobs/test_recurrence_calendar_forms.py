"""A recurrence with a calendar in the Recurrence dialog: the form, its preview, the engine."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from batchadmin.engine import transitions
from batchadmin.jobs.models import BatchRecurrence, BatchStatus, Calendar, CalendarDate
from batchadmin.jobs.recurrence_forms import RecurrenceForm
from tests.base import BaseTestCase
from tests.jobs.test_recurrence_forms import weekly

S = BatchStatus
UTC = dt.UTC
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # a Saturday


def daily(**overrides: Any) -> dict[str, Any]:
    """Every day at 08:00 in Oslo, from Monday 3 March 2025."""
    return weekly(
        **{"unit": "days", "every": "1", "start_time": "08:00", "end": "none"} | overrides
    )


class CalendarRecurrenceFormTestCase(BaseTestCase):
    calendar: ClassVar[Calendar]

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.calendar = Calendar.objects.create(code="NO-HOL", description="Norwegian holidays")
        CalendarDate.objects.create(
            calendar=cls.calendar, date=dt.date(2025, 3, 4), description="Shrove"
        )
        CalendarDate.objects.create(calendar=cls.calendar, date=dt.date(2025, 3, 5))

    def form(self, data: dict[str, Any] | None, **kwargs: Any) -> RecurrenceForm:
        job = kwargs.pop("job", None) or self.make_job(scheduled_start=NOW)
        return RecurrenceForm(data, job=job, viewer_zone="Europe/Oslo", at=NOW, **kwargs)

    def test_it_previews_skipped_dates_without_counting_them(self):
        form = self.form(daily(calendar=str(self.calendar.pk), on_calendar_date="skip"))
        rows = form.next_runs()
        assert [(r.local.strftime("%a %d %H:%M"), r.number, r.skipped) for r in rows] == [
            ("Mon 03 08:00", 1, False),
            ("Tue 04 08:00", None, True),
            ("Wed 05 08:00", None, True),
            ("Thu 06 08:00", 2, False),
            ("Fri 07 08:00", 3, False),
            ("Sat 08 08:00", 4, False),
            ("Sun 09 08:00", 5, False),
        ]
        assert rows[1].note == "Shrove"
        assert (
            form.describe() == "Every day at 08:00 Europe/Oslo, except on dates of calendar NO-HOL"
        )

    def test_it_previews_moved_dates(self):
        form = self.form(
            weekly(
                weekdays=["tue"],
                every="1",
                end="none",
                calendar=str(self.calendar.pk),
                on_calendar_date="next_day",
            )
        )
        rows = form.next_runs(2)
        assert [(r.local.strftime("%a %d"), r.number) for r in rows] == [
            ("Thu 06", 1),
            ("Tue 11", 2),
        ]
        assert rows[0].moved_from is not None
        assert rows[0].moved_from.strftime("%a %d %H:%M") == "Tue 04 22:00"
        assert rows[0].note == "Shrove" and not rows[0].merged

    def test_it_marks_a_moved_date_that_lands_on_a_run(self):
        form = self.form(daily(calendar=str(self.calendar.pk), on_calendar_date="next_day"))
        rows = form.next_runs(2)
        assert [(r.local.strftime("%a %d"), r.number, r.merged) for r in rows] == [
            ("Mon 03", 1, False),
            ("Thu 06", None, True),  # Tuesday's, moved
            ("Thu 06", None, True),  # Wednesday's, moved
            ("Thu 06", 2, False),
        ]

    def test_it_ignores_the_choice_without_a_calendar(self):
        form = self.form(daily(on_calendar_date="next_day"))
        assert form.is_valid(), form.errors
        assert form.save().on_calendar_date == BatchRecurrence.OnCalendarDate.SKIP

    def test_it_refuses_a_pattern_that_only_falls_on_calendar_dates(self):
        form = self.form(
            daily(
                end="by",
                end_by="2025-03-05",
                start_date="2025-03-04",
                calendar=str(self.calendar.pk),
            )
        )
        assert not form.is_valid()
        assert form.errors["calendar"] == [
            "Every occurrence falls on a date of the calendar before the end date."
        ]

    def test_the_engine_skips_the_date_it_previews(self):
        job = self.make_job(scheduled_start=NOW)
        form = self.form(daily(calendar=str(self.calendar.pk)), job=job)
        assert form.is_valid(), form.errors
        form.save()
        job.refresh_from_db()
        assert job.scheduled_start == dt.datetime(2025, 3, 3, 7, tzinfo=UTC)
        # After the run on Monday, the next one is Thursday: the calendar is read from the row.
        recurring = BatchRecurrence.objects.get(job=job)
        assert recurring.next_occurrence(job.scheduled_start) == dt.datetime(
            2025, 3, 6, 7, tzinfo=UTC
        )
        assert recurring.describe().endswith("except on dates of calendar NO-HOL")
        assert transitions.reschedule_job(job_id=job.pk, at=dt.datetime(2025, 3, 3, 12, tzinfo=UTC))
        job.refresh_from_db()
        assert job.scheduled_start == dt.datetime(2025, 3, 6, 7, tzinfo=UTC)

    def test_it_reads_the_calendar_once_per_row(self):
        recurring = BatchRecurrence.objects.create(
            job=self.make_job(), start_date=dt.date(2025, 3, 3), start_time=dt.time(8),
            time_zone="UTC", calendar=self.calendar,
        )  # fmt: skip
        recurring = BatchRecurrence.objects.select_related("calendar").get(pk=recurring.pk)
        with self.assertNumQueries(1):
            for _ in range(3):
                recurring.rule()


class CalendarPreviewPageTestCase(BaseTestCase):
    def test_the_dialog_marks_skipped_and_moved_dates(self):
        calendar = Calendar.objects.create(code="NO-HOL")
        CalendarDate.objects.create(
            calendar=calendar, date=dt.date(2030, 1, 1), description="New Year"
        )
        job = self.make_job(created_by=self.alice)
        self.client.force_login(self.alice)
        data = daily(start_date="2029-12-31", calendar=str(calendar.pk), on_calendar_date="skip")
        html = self.client.post(
            f"/jobs/{job.pk}/recurrence/preview/", data, headers={"HX-Request": "true"}
        ).content.decode()
        assert "Calendar NO-HOL" in html
        assert 'class="run-skipped"' in html and "skipped</span>: New Year" in html
        html = self.client.post(
            f"/jobs/{job.pk}/recurrence/preview/",
            dict(data, on_calendar_date="next_day"),
            headers={"HX-Request": "true"},
        ).content.decode()
        assert 'class="run-merged"' in html and "moved here</span> (New Year); it runs once" in html
