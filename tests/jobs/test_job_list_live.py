from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any
from unittest import mock

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now
from openpyxl import load_workbook

from batchadmin.engine import transitions
from batchadmin.jobs import list_views
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, SavedJobFilter
from tests.base import BaseTestCase

S = BatchStatus
POLL = {"HX-Request": "true", "HX-Target": "job-table"}


def streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode("utf-8-sig")


def version_of(html: str) -> str:
    return html.split("&amp;v=", 1)[1].split('"', 1)[0]


class LiveListTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.client.force_login(self.alice)

    def test_it_polls_whatever_the_jobs_statuses(self):
        self.make_job(description="Held", status=S.WITHHOLD)
        html = self.client.get("/jobs/").content.decode()
        assert html.count("hx-trigger=\"every 3s [document.visibilityState == 'visible']") == 1
        assert 'id="job-table"' in html and "&amp;poll=1&amp;v=" in html

    def test_it_answers_204_until_something_changes(self):
        job = self.make_job(description="Nightly", status=S.WAITING)
        version = version_of(self.client.get("/jobs/").content.decode())
        # Opaque: the page does not tell how many jobs there are or their ids.
        assert len(version) == 16 and int(version, 16) >= 0
        r = self.client.get(f"/jobs/?poll=1&v={version}", headers=POLL)
        assert r.status_code == 204
        transitions.change_status(job_id=job.pk, to=S.WITHHOLD, by_id=self.alice.pk)
        r = self.client.get(f"/jobs/?poll=1&v={version}", headers=POLL)
        assert r.status_code == 200 and b"<html" not in r.content
        assert b"status-withhold" in r.content
        assert version_of(r.content.decode()) != version

    def test_a_job_created_after_the_page_appears_in_the_next_poll(self):
        version = version_of(self.client.get("/jobs/").content.decode())
        self.make_job(description="Born later")
        r = self.client.get(f"/jobs/?poll=1&v={version}", headers=POLL)
        assert r.status_code == 200 and b">Born later<" in r.content

    def test_the_poll_keeps_the_filter_and_the_page(self):
        self.make_job(description="Payroll run", status=S.WAITING)
        html = self.client.get("/jobs/?description=payroll").content.decode()
        assert "?description=payroll&amp;page=1&amp;poll=1&amp;v=" in html
        version = version_of(html)
        self.make_job(description="Invoices", status=S.WAITING)
        r = self.client.get(f"/jobs/?description=payroll&page=1&poll=1&v={version}", headers=POLL)
        assert b">Payroll run<" in r.content and b">Invoices<" not in r.content

    def test_an_unchanged_poll_costs_one_query_beyond_the_session(self):
        for n in range(10):
            self.make_job(description=f"Job {n}")
        version = version_of(self.client.get("/jobs/").content.decode())
        with CaptureQueriesContext(connection) as ctx:
            assert self.client.get(f"/jobs/?poll=1&v={version}", headers=POLL).status_code == 204
        ours = [q["sql"] for q in ctx.captured_queries if "django_session" not in q["sql"]]
        ours = [sql for sql in ours if "auth_user" not in sql and "accounts_" not in sql]
        assert len(ours) == 1, ours

    def test_a_refresh_runs_as_many_queries_for_50_rows_as_for_10(self):
        def count() -> int:
            with CaptureQueriesContext(connection) as ctx:
                r = self.client.get("/jobs/?poll=1&v=stale", headers=POLL)
                assert r.status_code == 200
            return len(ctx.captured_queries)

        for n in range(10):
            job = self.make_job(description=f"Job {n}", run_as=self.bob)
            self.make_run(job, S.ERROR)
        count()
        ten = count()
        for n in range(40):
            job = self.make_job(description=f"More {n}", created_by=self.dave, run_as=self.bob)
            self.make_run(job, S.ENDED)
        assert count() == ten

    def make_run(self, job: BatchJob, status: str, **kw: Any) -> BatchJobRun:
        started = kw.pop("started_at", now() - dt.timedelta(minutes=5))
        return BatchJobRun.objects.create(
            job=job,
            status=status,
            scheduled_start=started,
            started_at=started,
            ended_at=kw.pop("ended_at", started + dt.timedelta(seconds=90)),
        )


class LastRunTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.client.force_login(self.alice)
        # A recurring job whose run failed is back in Waiting for its next occurrence.
        self.recurring = self.make_job(description="Recurring settle", status=S.WAITING)
        earlier = now() - dt.timedelta(hours=2)
        BatchJobRun.objects.create(
            job=self.recurring,
            status=S.ENDED,
            scheduled_start=earlier,
            started_at=earlier,
            ended_at=earlier + dt.timedelta(minutes=1),
        )
        failed_at = now() - dt.timedelta(hours=1)
        BatchJobRun.objects.create(
            job=self.recurring,
            status=S.ERROR,
            scheduled_start=failed_at,
            started_at=failed_at,
            ended_at=failed_at + dt.timedelta(seconds=75),
        )
        self.fine = self.make_job(description="Fine and waiting", status=S.WAITING)

    def test_it_shows_the_last_runs_status_end_and_duration(self):
        html = self.client.get("/jobs/").content.decode()
        row = html.split(f'id="job-{self.recurring.pk}"', 1)[1].split("</tr>", 1)[0]
        assert "status-waiting" in row and "status-error" in row
        assert "1m 15s" in row or "1 min" in row or "75" in row, row

    def test_has_errors_finds_a_waiting_job_whose_last_run_failed(self):
        html = self.client.get("/jobs/?has_errors=on").content.decode()
        assert ">Recurring settle<" in html and ">Fine and waiting<" not in html

    def test_the_error_status_filter_finds_it_too(self):
        html = self.client.get("/jobs/?status=error").content.decode()
        assert ">Recurring settle<" in html and ">Fine and waiting<" not in html
        html = self.client.get("/jobs/?last_run=error").content.decode()
        assert ">Recurring settle<" in html and ">Fine and waiting<" not in html

    def test_sorting_by_status_follows_the_lifecycle(self):
        BatchJob.objects.all().delete()
        for status in (S.CANCELED, S.ENDED, S.WAITING, S.ERROR, S.EXECUTING, S.WITHHOLD):
            self.make_job(description=f"Job {status}", status=status)
        html = self.client.get("/jobs/?o=status").content.decode()
        order = ("withhold", "waiting", "executing", "error", "ended", "canceled")
        positions = [html.index(f">Job {s}<") for s in order]
        assert positions == sorted(positions)
        html = self.client.get("/jobs/?o=-status").content.decode()
        positions = [html.index(f">Job {s}<") for s in order]
        assert positions == sorted(positions, reverse=True)


class BulkConfirmTestCase(BaseTestCase):
    def test_it_asks_before_it_cancels_and_says_what_will_happen(self):
        a = self.make_job(status=S.EXECUTING)
        b = self.make_job(status=S.EXECUTING)
        waiting = self.make_job(status=S.WAITING)
        self.client.force_login(self.alice)
        data = {"action": "cancel", "job": [a.pk, b.pk, waiting.pk]}
        r = self.client.post("/jobs/bulk-status/", data, headers={"HX-Request": "true"})
        html = r.content.decode()
        assert r.status_code == 200 and "<html" not in html
        assert "2 executing jobs will be canceled" in html
        assert "1 job is Waiting: not changed" in html
        assert 'name="confirm" value="1"' in html and "Cancel 2 jobs" in html
        assert set(BatchJob.objects.values_list("status", flat=True)) == {S.EXECUTING, S.WAITING}
        self.client.post("/jobs/bulk-status/", data | {"confirm": "1"})
        a.refresh_from_db()
        waiting.refresh_from_db()
        # Without running tasks a canceled job ends Canceled at once.
        assert a.status in (S.CANCELING, S.CANCELED) and waiting.status == S.WAITING

    def test_it_tells_finished_jobs_run_again(self):
        jobs = [self.make_job(status=status) for status in (S.ENDED, S.ERROR, S.CANCELED)]
        held = self.make_job(status=S.WITHHOLD, scheduled_start=now() + dt.timedelta(hours=1))
        for job in [*jobs, held]:
            self.make_task(job, "T1")
        self.client.force_login(self.alice)
        data = {"action": "waiting", "job": [job.pk for job in [*jobs, held]]}
        html = self.client.post("/jobs/bulk-status/", data).content.decode()
        assert "3 finished jobs will run again" in html
        assert "1 held job will wait for the scheduled start" in html

    def test_it_applies_to_every_job_matching_the_filter(self):
        for n in range(3):
            self.make_job(description=f"Night {n}", status=S.WAITING)
        other = self.make_job(description="Day", status=S.WAITING)
        self.client.force_login(self.alice)
        data = {"action": "withhold", "scope": "all", "query": "description=night"}
        html = self.client.post("/jobs/bulk-status/", data).content.decode()
        assert "3 waiting jobs will be held" in html and "matching the filter" in html
        self.client.post("/jobs/bulk-status/", data | {"confirm": "1"})
        nights = BatchJob.objects.filter(description__startswith="Night")
        assert set(nights.values_list("status", flat=True)) == {S.WITHHOLD}
        other.refresh_from_db()
        assert other.status == S.WAITING

    def test_it_refuses_more_jobs_than_it_changes_at_once(self):
        for n in range(3):
            self.make_job(description=f"Night {n}", status=S.WAITING)
        self.client.force_login(self.alice)
        data = {"action": "withhold", "scope": "all", "query": "description=night", "confirm": "1"}
        with mock.patch.object(list_views, "BULK_MAX", 2):
            r = self.client.post("/jobs/bulk-status/", data, follow=True)
        assert b"More than 2 jobs match the filter" in r.content
        assert not BatchJob.objects.filter(status=S.WITHHOLD).exists()

    def test_a_viewer_sees_no_bulk_control_and_is_refused(self):
        job = self.make_job(status=S.EXECUTING)
        self.client.force_login(self.bob)
        html = self.client.get("/jobs/").content.decode()
        assert "bulk-form" not in html and 'name="job"' not in html
        for confirm in ("", "1"):
            r = self.client.post(
                "/jobs/bulk-status/", {"action": "cancel", "job": [job.pk], "confirm": confirm}
            )
            assert r.status_code == 403
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_a_manager_sees_the_bulk_controls(self):
        self.make_job()
        self.client.force_login(self.alice)
        html = self.client.get("/jobs/").content.decode()
        assert 'id="bulk-form"' in html and 'value="all"' in html


class ExportTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.make_job(description='=HYPERLINK("http://evil")', status=S.WAITING)
        self.make_job(description="Plain invoices", status=S.ENDED)

    def test_it_exports_the_filtered_list_as_csv_safe_from_formulas(self):
        self.client.force_login(self.bob)  # a Viewer may take what they see
        r = self.client.get("/jobs/export.csv?status=waiting&description=http")
        assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
        text = streamed(r)
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0][:3] == ["Job ID", "Description", "Status"]
        assert len(rows) == 2
        assert rows[1][1] == '\'=HYPERLINK("http://evil")' and rows[1][2] == "Waiting"

    def test_it_exports_excel(self):
        self.client.force_login(self.alice)
        r = self.client.get(f"/jobs/export.xlsx?o=-id&created_by={self.alice.pk}")
        assert r.status_code == 200 and "spreadsheetml" in r["Content-Type"]
        sheet = load_workbook(io.BytesIO(r.content))["Batch jobs"]
        values = [[cell.value for cell in row] for row in sheet.iter_rows()]
        assert values[0][0] == "Job ID" and len(values) == 3
        assert values[2][1] == '\'=HYPERLINK("http://evil")'  # text, not a formula
        assert values[1][2] == "Ended"

    def test_it_refuses_a_user_without_a_role(self):
        self.client.force_login(self.charlie)
        assert self.client.get("/jobs/export.csv").status_code == 403
        assert self.client.get("/jobs/export.xlsx").status_code == 403

    def test_a_batch_user_exports_only_their_jobs(self):
        self.make_job(description="Dave's own", created_by=self.dave)
        self.client.force_login(self.dave)
        text = streamed(self.client.get("/jobs/export.csv"))
        assert "Dave's own" in text and "Plain invoices" not in text


class SavedFilterTestCase(BaseTestCase):
    def test_it_saves_lists_and_deletes_a_users_filter(self):
        self.client.force_login(self.bob)
        r = self.client.post(
            "/jobs/filters/", {"name": "Failed", "query": "status=error&page=3&v=1"}
        )
        assert r.status_code == 302 and r["Location"] == "/jobs/?status=error"
        saved = SavedJobFilter.objects.get(user=self.bob)
        assert (saved.name, saved.query) == ("Failed", "status=error")
        html = self.client.get("/jobs/").content.decode()
        assert 'href="/jobs/?status=error">Failed</a>' in html
        self.client.force_login(self.alice)
        assert ">Failed</a>" not in self.client.get("/jobs/").content.decode()
        assert self.client.post(f"/jobs/filters/{saved.pk}/delete/").status_code == 404
        self.client.force_login(self.bob)
        self.client.post(f"/jobs/filters/{saved.pk}/delete/")
        assert not SavedJobFilter.objects.exists()

    def test_it_needs_a_name(self):
        self.client.force_login(self.bob)
        r = self.client.post("/jobs/filters/", {"name": " ", "query": "status=error"}, follow=True)
        assert b"Give the filter a name" in r.content
        assert not SavedJobFilter.objects.exists()
