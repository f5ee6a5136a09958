"""The Recurrence dialog's form and the Active periods form (jobs/recurrence_forms.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import User

from batchadmin.jobs.admin import BatchRecurrenceAdminForm
from batchadmin.jobs.models import ActivePeriod, BatchRecurrence, BatchStatus
from batchadmin.jobs.recurrence_forms import ActivePeriodForm, RecurrenceForm
from tests.base import BaseTestCase

S = BatchStatus
UTC = dt.UTC
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # a Saturday


def weekly(**overrides: Any) -> dict[str, Any]:
    """What the dialog posts for every 2 weeks on Mon and Thu at 22:00 in Oslo, 7 runs."""
    data = {
        "start_date": "2025-03-03",
        "start_time": "22:00",
        "time_zone": "Europe/Oslo",
        "end": "after",
        "end_after": "7",
        "end_by": "",
        "unit": "weeks",
        "every": "2",
        "weekdays": ["mon", "thu"],
        "on": "day",
        "day": "",
        "nth": "",
        "weekday": "",
        "month": "",
        "cron": "",
        "missed": "run_once",
    }
    return dict(data, **overrides)


class RecurrenceFormTestCase(BaseTestCase):
    def form(self, data: dict[str, Any] | None, **kwargs: Any) -> RecurrenceForm:
        job = kwargs.pop("job", None) or self.make_job(scheduled_start=NOW)
        return RecurrenceForm(data, job=job, viewer_zone="America/New_York", at=NOW, **kwargs)

    def test_it_previews_the_next_five_runs_in_both_zones(self):
        form = self.form(weekly())
        runs = form.next_runs()
        assert [r.local.strftime("%a %d %H:%M %Z") for r in runs] == [
            "Mon 03 22:00 CET",
            "Thu 06 22:00 CET",
            "Mon 17 22:00 CET",
            "Thu 20 22:00 CET",
            "Mon 31 22:00 CEST",  # Oslo changed to summer time on the 30th
        ]
        assert [r.viewer.strftime("%a %d %H:%M %Z") for r in runs] == [
            "Mon 03 16:00 EST",
            "Thu 06 16:00 EST",
            "Mon 17 17:00 EDT",  # New York changed on the 9th: the gap is 5 hours for 2 weeks
            "Thu 20 17:00 EDT",
            "Mon 31 16:00 EDT",
        ]
        assert all(r.local == r.viewer for r in runs)
        assert form.describe() == "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo, 7 runs left"

    def test_it_previews_no_more_runs_than_end_after_allows(self):
        assert len(self.form(weekly(end_after="3")).next_runs()) == 3

    def test_it_previews_nothing_while_invalid(self):
        form = self.form(weekly(end_after=""))
        assert form.next_runs() == []
        assert form.describe() == ""

    def test_it_refuses_what_it_cannot_run(self):
        cases = [
            (weekly(end_after=""), "end_after", "How many runs?"),
            (weekly(end="by"), "end_by", "Until which date?"),
            (weekly(end="by", end_by="2025-01-01"), "end_by", "before the start date"),
            (weekly(weekdays=[]), "weekdays", "at least one day"),
            (weekly(unit="months", on="weekday", nth="2"), "nth", "which weekday"),
            (weekly(unit="months", on="day"), "day", "Which day of the month?"),
            (weekly(unit="years", day="30", month="2"), "day", "Feb has no day 30."),
            (weekly(unit="years", day="3"), "month", "Which month?"),
            (weekly(unit="cron"), "cron", "Enter a cron expression."),
            (weekly(unit="cron", cron="0 22 * *"), "cron", "five fields"),
            (weekly(unit="cron", cron="0 0 31 2 *"), "cron", "never occurs"),
            (weekly(time_zone="Mars/Olympus"), "time_zone", "Mars/Olympus is not a time zone"),
            (weekly(every="0"), "every", "greater than or equal to 1"),
        ]
        for data, field, message in cases:
            with self.subTest(message=message):
                form = self.form(data)
                assert not form.is_valid()
                assert message in str(form.errors.get(field, "")), form.errors

    def test_it_keeps_only_the_fields_of_the_chosen_pattern(self):
        form = self.form(
            weekly(
                unit="months",
                on="weekday",
                nth="-1",
                weekday="fri",
                day="12",
                month="4",
                cron="* * * * *",
                end="none",
            )
        )
        assert form.is_valid(), form.errors
        r = form.save()
        assert (r.unit, r.nth, r.weekday, r.day, r.month, r.weekdays, r.cron) == (
            "months",
            -1,
            "fri",
            None,
            None,
            [],
            "",
        )
        assert (r.end_after, r.end_by) == (None, None)
        assert r.describe() == "Every 2 months on the last Fri at 22:00 Europe/Oslo"

    def test_it_accepts_a_cron_expression(self):
        form = self.form(weekly(unit="cron", cron=" 0 22 * * 1,4 ", every=""))
        assert form.is_valid(), form.errors
        r = form.save()
        assert (r.cron, r.every) == ("0 22 * * 1,4", 1)

    def test_it_saves_and_reschedules_a_waiting_job(self):
        job = self.make_job(scheduled_start=NOW)
        form = self.form(weekly(), job=job)
        assert form.is_valid(), form.errors
        recurring = form.save()
        job.refresh_from_db()
        assert job.recurrence == recurring
        assert job.scheduled_start == dt.datetime(2025, 3, 3, 21, 0, tzinfo=UTC)
        assert job.status == S.WAITING

    def test_it_restarts_end_after_only_when_the_recurrence_changes(self):
        job = self.make_job(scheduled_start=NOW)
        form = self.form(weekly(), job=job)
        assert form.is_valid()
        form.save()
        BatchRecurrence.objects.filter(job=job).update(runs=4)
        job.refresh_from_db()
        unchanged = self.form(weekly(), job=job)
        assert unchanged.is_valid() and not unchanged.has_changed(), unchanged.changed_data
        assert unchanged.save().runs == 4
        changed = self.form(weekly(end_after="10"), job=job)
        assert changed.is_valid()
        assert changed.save().runs == 0

    def test_it_offers_the_jobs_start_in_the_viewers_zone_for_a_new_recurrence(self):
        job = self.make_job(scheduled_start=dt.datetime(2025, 3, 4, 23, 30, tzinfo=UTC))
        form = self.form(None, job=job)
        assert form["time_zone"].value() == "America/New_York"
        assert form["start_date"].value() == dt.date(2025, 3, 4)
        assert form["start_time"].value() == dt.time(18, 30)
        assert form["weekdays"].value() == ["tue"]
        assert form["end"].value() == "none"

    def test_it_shows_a_saved_recurrence(self):
        job = self.make_job(scheduled_start=NOW)
        BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2025, 3, 3),
            start_time=dt.time(6, 0),
            time_zone="Europe/Oslo",
            unit="years",
            month=11,
            nth=4,
            weekday="thu",
            end_by=dt.date(2030, 1, 1),
        )
        form = self.form(None, job=job)
        assert form["time_zone"].value() == "Europe/Oslo"
        assert (form["end"].value(), form["on"].value()) == ("by", "weekday")


class ActivePeriodFormTestCase(BaseTestCase):
    def test_it_saves_a_period_that_crosses_midnight(self):
        form = ActivePeriodForm(
            {
                "code": "Night",
                "name": "Overnight",
                "start_time": "18:00",
                "end_time": "08:00",
                "time_zone": "Europe/Oslo",
            }
        )
        assert form.is_valid(), form.errors
        assert form.describe() == "18:00 to 08:00 (next day) Europe/Oslo"
        period = form.save()
        assert str(period) == "Night (18:00-08:00 Europe/Oslo)"
        assert ActivePeriod.objects.get().is_open(dt.datetime(2025, 3, 3, 22, tzinfo=UTC))

    def test_it_refuses_an_unknown_zone_and_a_bad_code(self):
        form = ActivePeriodForm(
            {"code": "night shift", "start_time": "18:00", "end_time": "08:00", "time_zone": "X"}
        )
        assert not form.is_valid()
        assert set(form.errors) == {"code", "time_zone"}


class RecurrenceAdminTestCase(BaseTestCase):
    def test_it_refuses_a_rule_the_engine_cannot_compute(self):
        job = self.make_job()
        data = {
            "job": job.pk,
            "start_date": "2025-03-03",
            "start_time": "22:00",
            "time_zone": "UTC",
            "unit": "weeks",
            "every": "1",
            "weekdays": '["mon", "funday"]',
            "missed": "run_once",
        }
        form = BatchRecurrenceAdminForm(data, instance=BatchRecurrence(job=job))
        assert not form.is_valid()
        assert form.non_field_errors() == ["Unknown weekday 'funday': use mon ... sun."]
        form = BatchRecurrenceAdminForm(
            dict(data, weekdays='["mon"]'), instance=BatchRecurrence(job=job)
        )
        assert form.is_valid(), form.errors

    def test_it_lists_recurrences_in_words(self):
        admin_user = User.objects.create_superuser("root", "root@example.org", "password")
        job = self.make_job()
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2025, 3, 3), start_time=dt.time(6, 0), time_zone="UTC"
        )
        self.client.force_login(admin_user)
        response = self.client.get("/admin/jobs/batchrecurrence/")
        assert response.status_code == 200
        assert "Every day at 06:00 UTC" in response.content.decode()
        # The job's page edits its recurrence inline; active periods have their own list.
        for url in (
            f"/admin/jobs/batchjob/{job.pk}/change/",
            "/admin/jobs/activeperiod/add/",
            "/admin/jobs/missedoccurrence/",
        ):
            assert self.client.get(url).status_code == 200, url
