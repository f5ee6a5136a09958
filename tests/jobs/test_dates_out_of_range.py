"""Issue 13, item 2: a date out of range already in the database (stored before the bounds,
or by hand) must not break any page, the command line or beat's tick."""

from __future__ import annotations

import io
from unittest import mock

from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from batchadmin.engine import tick
from batchadmin.jobs.models import BatchJob, BatchStatus, StatusChange
from tests.base import BaseTestCase

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
                out = io.StringIO()
                call_command("batch", "show", str(pk), stdout=out)
                call_command("batch", "show", str(pk), "--json", stdout=out)
                assert f"Job {pk}" in out.getvalue()

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
