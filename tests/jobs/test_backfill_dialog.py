"""The Backfill dialog on the job page: managers only, a preview before anything starts."""

from __future__ import annotations

import datetime as dt

import time_machine

from batchadmin.jobs.models import BatchJob, BatchRecurrence, QueuedRun
from tests.jobs.form_base import FormTestCase

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)


@time_machine.travel(NOW, tick=False)
class BackfillDialogTestCase(FormTestCase):
    def make_daily(self) -> BatchJob:
        job = self.make_job(
            created_by=self.dave, scheduled_start=dt.datetime(2025, 3, 11, 2, 0, tzinfo=dt.UTC)
        )
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2025, 3, 1), start_time=dt.time(2, 0), time_zone="UTC",
            unit=BatchRecurrence.Unit.DAYS, every=1,
        )  # fmt: skip
        self.make_task(job, "T1")
        return job

    def test_it_previews_then_starts(self):
        job = self.make_daily()
        self.login(self.alice)
        url = f"/jobs/{job.pk}/backfill/"
        assert "Backfill…" in self.client.get(f"/jobs/{job.pk}/").content.decode()
        r = self.client.get(url, headers=self.htmx("dialog"))
        assert r.status_code == 200
        assert "<html" not in r.content.decode()
        data = {"first_day": "2025-03-07", "last_day": "2025-03-09", "preview": "1"}
        html = self.client.post(url, data, headers=self.htmx("dialog")).content.decode()
        assert "<strong>3 runs</strong> will start, one after the other" in html
        assert "Start 3 runs" in html
        assert not QueuedRun.objects.exists()
        del data["preview"]
        r = self.client.post(url, data, headers=self.htmx("dialog"))
        assert r.status_code == 200
        assert "dialog-close" in r["HX-Trigger"]
        assert QueuedRun.objects.filter(job=job).count() == 3

    def test_it_is_for_managers_only(self):
        job = self.make_daily()
        self.login(self.dave)  # the job's creator, a Batch user
        assert "Backfill…" not in self.client.get(f"/jobs/{job.pk}/").content.decode()
        r = self.client.post(
            f"/jobs/{job.pk}/backfill/", {"first_day": "2025-03-07", "last_day": "2025-03-09"}
        )
        assert r.status_code == 403
        assert not QueuedRun.objects.exists()

    def test_it_says_what_is_wrong_with_the_range(self):
        job = self.make_daily()
        self.login(self.alice)
        html = self.client.post(
            f"/jobs/{job.pk}/backfill/",
            {"first_day": "2025-03-09", "last_day": "2025-03-07", "preview": "1"},
            headers=self.htmx("dialog"),
        ).content.decode()
        assert "The range ends (2025-03-07) before it starts (2025-03-09)." in html
