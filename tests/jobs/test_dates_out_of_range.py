"""Issue 13, item 2: a date out of range already in the database (stored before the bounds,
or by hand) must not break any page, the command line or beat's tick."""

from __future__ import annotations

import datetime as dt
import io as stdio
from unittest import mock

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from batchadmin.accounts.models import UserPreference
from batchadmin.engine import tick
from batchadmin.jobs import io
from batchadmin.jobs.models import (
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    Priority,
    StatusChange,
)
from batchadmin.jobs.recurrence_forms import RecurrenceForm
from batchadmin.lib import daterange, recurrence
from tests.api.base import ApiTestCase
from tests.base import BaseTestCase
from tests.jobs.test_recurrence_forms import weekly
from tests.lib.test_recurrence import wall

# Year 10000: 9999-12-31 23:59 in Pacific/Honolulu; year 1 BC: a start of 0001-01-01 00:00
# in a zone east of UTC.
BAD_STARTS = ["10000-01-01 09:59:00+00", "0001-12-31 23:00:00+00 BC"]


class OutOfRangeRowsTest(BaseTestCase):
    def store(self, value: str) -> int:
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "T1")
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE jobs_batchjob SET scheduled_start = %s::timestamptz, "
                "started_at = %s::timestamptz WHERE id = %s",
                [value, value, job.pk],
            )
        return job.pk

    def test_it_shows_every_page(self) -> None:
        for value in BAD_STARTS:
            with self.subTest(value):
                pk = self.store(value)
                for user in (self.alice, self.dave, self.bob):
                    self.client.force_login(user)
                    for url in (
                        reverse("workspace"),
                        reverse("jobs:list"),
                        reverse("jobs:detail", args=[pk]),
                    ):
                        assert self.client.get(url).status_code == 200, (url, user)
                self.alice.is_staff = True
                self.alice.save(update_fields=["is_staff"])
                self.client.force_login(self.alice)
                for url in (
                    reverse("admin:jobs_batchjob_changelist"),
                    reverse("admin:jobs_batchjob_change", args=[pk]),
                ):
                    assert self.client.get(url).status_code == 200, url
                out = stdio.StringIO()
                call_command("batch", "show", str(pk), stdout=out)
                call_command("batch", "show", str(pk), "--json", stdout=out)
                assert f"Job {pk}" in out.getvalue()

    def test_it_shows_a_job_whose_recurrence_is_out_of_range(self) -> None:
        job = self.make_job(created_by=self.dave)
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2026, 1, 1), start_time=dt.time(22), time_zone="Asia/Tokyo"
        )
        for start, end in (("10000-01-01", "10001-01-01"), ("0002-01-01 BC", "0001-01-01 BC")):
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE jobs_batchrecurrence SET start_date = %s::date, end_by = %s::date "
                    "WHERE job_id = %s",
                    [start, end, job.pk],
                )
            self.client.force_login(self.dave)
            for url in (reverse("jobs:list"), reverse("jobs:detail", args=[job.pk])):
                assert self.client.get(url).status_code == 200, (url, start)
            out = stdio.StringIO()
            call_command("batch", "show", str(job.pk), stdout=out)
            with self.assertRaisesMessage(CommandError, "has an invalid recurrence: The start"):
                call_command("batch", "next", str(job.pk), stdout=out, stderr=out)

    def test_the_tick_withholds_the_job_once_and_goes_on(self) -> None:
        bad = [self.store(value) for value in BAD_STARTS]
        good = self.make_job(description="On time")
        self.make_task(good, "T1")
        with (
            # close_old_connections() would end the test's transaction.
            mock.patch.object(tick, "close_old_connections"),
            self.assertLogs("batchadmin.engine.tick", "WARNING") as logs,
        ):
            first = tick.tick()
            second = tick.tick()
        assert first["withheld"] == 2 and second["withheld"] == 0
        assert first["started"] == 1  # the good job started on time
        assert len(logs.records) == 2  # once per bad job, not every second
        for pk in bad:
            job = BatchJob.objects.get(pk=pk)
            assert job.status == BatchStatus.WITHHOLD
            change = StatusChange.objects.filter(job_id=pk).latest("pk")
            assert "out of range" in change.reason


class DatesAtInputTest(BaseTestCase):
    """Every way in refuses a date out of range, naming the field, and stores nothing."""

    def test_the_job_form_refuses_year_9999_in_honolulu(self) -> None:
        UserPreference.objects.create(user=self.dave, time_zone="Pacific/Honolulu")
        self.client.force_login(self.dave)
        jobs = BatchJob.objects.count()
        r = self.client.post(
            reverse("jobs:create"),
            {
                "description": "Far away",
                "scheduled_start": "9999-12-31 23:59",
                "priority": str(Priority.NORMAL.value),
                "save_history": "always",
            },
        )
        assert r.status_code == 200
        assert f"Enter a date {daterange.RANGE_TEXT}." in r.content.decode()
        assert BatchJob.objects.count() == jobs

    def test_the_recurrence_rule_refuses_dates_out_of_range(self) -> None:
        rule = recurrence.Rule(start=wall(9999, 12, 31, 23, 59), time_zone="UTC")
        with self.assertRaisesMessage(recurrence.RuleError, "Start on a date from 2000"):
            rule.check()
        rule = recurrence.Rule(start=wall(2026, 1, 1), time_zone="UTC", end_by=dt.date(9500, 1, 1))
        with self.assertRaisesMessage(recurrence.RuleError, "End by a date from 2000"):
            rule.check()
        rule = recurrence.Rule(start=wall(2026, 1, 1), time_zone="UTC", every=10**20)
        with self.assertRaisesMessage(recurrence.RuleError, "Repeat at most every"):
            rule.check()

    def test_the_cli_import_refuses_year_1_bc_and_9999(self) -> None:
        for start, message in (
            ("0001-01-01T00:00:00+01:00", "scheduled_start 0001-01-01T00:00:00+01:00 is out"),
            ("9999-12-31T23:59:00-10:00", "scheduled_start 9999-12-31T23:59:00-10:00 is out"),
        ):
            with self.subTest(start):
                data = {"description": "Far", "scheduled_start": start, "tasks": []}
                with self.assertRaisesMessage(io.ImportFailure, message):
                    io.import_data(data)
        assert not BatchJob.objects.filter(description="Far").exists()

    def test_the_job_list_filter_takes_a_far_date(self) -> None:
        UserPreference.objects.create(user=self.dave, time_zone="Asia/Tokyo")
        self.client.force_login(self.dave)
        for query in ("scheduled_after=9999-12-31", "scheduled_before=0001-01-01"):
            r = self.client.get(reverse("jobs:list") + "?" + query)
            assert r.status_code in (200, 400), query


class ApiDatesTest(ApiTestCase):
    def test_the_api_copy_refuses_a_start_out_of_range(self) -> None:
        job = self.make_job(created_by=self.dave)
        jobs = BatchJob.objects.count()  # the database holds seeded jobs too
        r = self.call(
            "POST",
            f"/api/v1/jobs/{job.pk}/copy",
            as_user=self.dave,
            body={"scheduled_start": "9999-12-31T23:59:00-10:00"},
        )
        assert r.status_code == 400
        assert "scheduled_start 9999-12-31T23:59:00-10:00 is out of range" in r.data["message"]
        assert BatchJob.objects.count() == jobs

    def test_the_api_import_refuses_duplicate_keys_and_nul(self) -> None:
        jobs = BatchJob.objects.count()
        for body, message in (
            (
                '{"description": "a", "description": "b"}',
                "Key 'description' is in one object twice",
            ),
            ('{"description": "a\\u0000b"}', "description: contains a NUL character"),
        ):
            r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=body)
            assert r.status_code == 400, body
            assert message in r.data["message"], r.data
        assert BatchJob.objects.count() == jobs


class RecurrenceDialogDatesTest(BaseTestCase):
    def test_the_dialog_refuses_dates_out_of_range_at_their_fields(self) -> None:
        job = self.make_job()
        for field, data in (
            ("start_date", weekly(start_date="9999-12-31", time_zone="Pacific/Honolulu")),
            ("end_by", weekly(end="by", end_after="", end_by="9500-01-01")),
            ("every", weekly(unit="minutes", every=str(10**9))),
        ):
            form = RecurrenceForm(data, job=job, viewer_zone="UTC", at=timezone.now())
            assert not form.is_valid()
            assert field in form.errors, (field, form.errors)
