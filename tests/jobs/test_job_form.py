from __future__ import annotations

import datetime as dt

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.engine import transitions
from batchadmin.jobs import forms
from batchadmin.jobs.models import BatchJob, BatchStatus, Priority, SaveHistory
from tests.base import start
from tests.jobs.form_base import FormTestCase

S = BatchStatus


class JobPageTestCase(FormTestCase):
    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/"

    def header_data(self, **overrides: str) -> dict[str, str]:
        data = {
            "description": "Nightly settlement USMF",
            "scheduled_start": "2030-01-02T03:04",
            "run_as": "",
            "priority": str(Priority.HIGH.value),
            "company": str(self.usmf.pk),
            "save_history": "always",
        }
        return data | overrides

    def test_it_shows_the_header_the_tasks_and_the_diagram(self):
        job, _ = self.make_walkthrough(created_by=self.dave)
        self.login(self.dave)
        r = self.client.get(self.url(job))
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" in html
        assert 'id="job-header"' in html
        assert 'value="D365 walkthrough"' in html
        assert html.count('class="task-line"') == 7
        assert "<svg" in html
        assert 'data-shortcut="new-task"' in html
        assert "Save header" in html

    def test_it_returns_each_section_to_htmx_by_target(self):
        job, _ = self.make_walkthrough(created_by=self.dave)
        self.login(self.dave)
        for target in ("job-header", "job-alerts", "task-grid", "job-diagram"):
            r = self.client.get(self.url(job), headers=self.htmx(target))
            html = r.content.decode()
            assert r.status_code == 200, target
            assert "<html" not in html, target
            assert f'id="{target}"' in html, target

    def test_it_saves_the_header_for_htmx(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        r = self.client.post(self.url(job), self.header_data(), headers=self.htmx("job-header"))
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" not in html
        assert "Saved." in html
        job.refresh_from_db()
        assert job.description == "Nightly settlement USMF"
        assert job.priority == Priority.HIGH
        assert job.scheduled_start == dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
        assert job.status == S.WITHHOLD

    def test_it_saves_the_header_and_redirects_without_htmx(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        r = self.client.post(self.url(job), self.header_data(description="Other"))
        self.assertRedirects(r, self.url(job))
        job.refresh_from_db()
        assert job.description == "Other"

    def test_it_shows_errors_at_the_field_and_keeps_the_input(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD, description="Before")
        self.login(self.dave)
        data = self.header_data(description="", scheduled_start="not a date", priority="99")
        r = self.client.post(self.url(job), data, headers=self.htmx("job-header"))
        html = r.content.decode()
        assert html.count('class="field invalid') == 3
        assert "This field is required." in html
        assert "Enter a date and time as 2026-12-03 18:30." in html
        assert 'value="not a date"' in html  # what the user typed stays
        job.refresh_from_db()
        assert job.description == "Before"

    def test_a_batch_user_cannot_change_run_by(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        r = self.client.post(self.url(job), self.header_data(run_as=str(self.alice.pk)))
        assert r.status_code == 302
        job.refresh_from_db()
        assert job.run_as is None
        page = self.client.get(self.url(job)).content.decode()
        assert "Only a batch job manager can change Run by." in page

    def test_a_manager_changes_run_by(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.alice)
        self.client.post(self.url(job), self.header_data(run_as=str(self.dave.pk)))
        job.refresh_from_db()
        assert job.run_as == self.dave

    def test_it_is_read_only_while_the_job_executes(self):
        job = self.make_job(
            created_by=self.dave,
        )
        self.make_task(job, "T1", process="demo.sleep", parameters={"seconds": 1})
        start(job)
        assert job.status == S.EXECUTING
        self.login(self.dave)
        html = self.client.get(self.url(job)).content.decode()
        assert "can't be changed until it ends" in html
        assert "Save header" not in html
        assert 'data-shortcut="new-task"' not in html
        assert ">Edit</a>" not in html
        assert 'name="description"' in html and "disabled" in html

    def test_it_refuses_to_save_the_header_while_the_job_executes(self):
        job = self.make_job(created_by=self.dave, description="Before")
        self.make_task(job, "T1", process="demo.sleep", parameters={"seconds": 1})
        start(job)
        self.login(self.dave)
        r = self.client.post(self.url(job), self.header_data(), headers=self.htmx("job-header"))
        html = r.content.decode()
        assert "The job is Executing: it can&#x27;t be changed until it ends." in html
        assert 'value="Nightly settlement USMF"' in html  # nothing typed is lost
        job.refresh_from_db()
        assert job.description == "Before"

    def test_the_header_never_writes_the_status(self):
        job = self.make_job(created_by=self.dave, status=S.WAITING)
        form = forms.JobForm(self.header_data(), instance=job, user=self.dave)
        assert form.is_valid()
        # The job changes status after the form read it: the header must not undo that.
        assert transitions.hold_job(job_id=job.pk, by_id=None)
        form.save_header()
        job.refresh_from_db()
        assert (job.status, job.description) == (S.WITHHOLD, "Nightly settlement USMF")

    def test_a_viewer_sees_the_job_but_no_edit_controls(self):
        job, _ = self.make_walkthrough(created_by=self.dave)
        self.login(self.bob)
        r = self.client.get(self.url(job))
        assert r.status_code == 200
        html = r.content.decode()
        assert "You can see this job but not change it." in html
        for control in ("Save header", "new-task", ">Edit</a>", "Change status", "Copy batch job"):
            assert control not in html, control

    def test_a_viewer_cannot_post(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD, description="Before")
        self.login(self.bob)
        r = self.client.post(self.url(job), self.header_data())
        assert r.status_code == 404
        job.refresh_from_db()
        assert job.description == "Before"

    def test_a_batch_user_cannot_see_or_change_others_jobs(self):
        job = self.make_job(status=S.WITHHOLD, created_by=self.alice, description="Before")
        self.login(self.dave)
        assert self.client.get(self.url(job)).status_code == 404
        assert self.client.post(self.url(job), self.header_data()).status_code == 404
        job.refresh_from_db()
        assert job.description == "Before"

    def test_a_user_without_a_role_sees_nothing(self):
        job = self.make_job(
            created_by=self.dave,
        )
        self.login(self.charlie)
        assert self.client.get(self.url(job)).status_code == 404

    def test_csrf_is_checked(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.client.handler.enforce_csrf_checks = True
        self.login(self.dave)
        r = self.client.post(self.url(job), self.header_data())
        assert r.status_code == 403

    def test_the_page_costs_the_same_queries_for_50_tasks_as_for_5(self):
        def page_queries(count: int) -> int:
            job = self.make_job(created_by=self.dave, description=f"{count} tasks")
            tasks = [self.make_task(job, f"T{i}", position=i) for i in range(1, count + 1)]
            for parent, child in zip(tasks, tasks[1:], strict=False):
                self.add_condition(child, parent)
            self.client.get(self.url(job))  # warm up: session, roles
            with CaptureQueriesContext(connection) as queries:
                assert self.client.get(self.url(job)).status_code == 200
            return len(queries)

        self.login(self.dave)
        few = page_queries(5)
        job = self.make_job(created_by=self.dave, description="50 tasks, asserted")
        tasks = [self.make_task(job, f"T{i}", position=i) for i in range(1, 51)]
        for parent, child in zip(tasks, tasks[1:], strict=False):
            self.add_condition(child, parent)
        with self.assertNumQueries(few):
            r = self.client.get(self.url(job))
        assert r.content.decode().count('class="task-line"') == 50
        # Explaining waiting tasks reads servers, groups, schedules and replicas once per page;
        # one more reads the live version (jobs/live.py), one lists the jobs this one triggers.
        assert few <= 22


class NewJobTestCase(FormTestCase):
    url = "/jobs/new/"

    def test_it_shows_the_header_form(self):
        self.login(self.dave)
        r = self.client.get(self.url)
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" in html
        assert "created in <strong>Withhold</strong>" in html

    def test_it_creates_the_job_in_withhold_and_opens_it(self):
        self.login(self.dave)
        start = (now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        r = self.client.post(
            self.url,
            {
                "description": "Month-end close",
                "scheduled_start": start,
                "priority": str(Priority.NORMAL.value),
                "company": str(self.usmf.pk),
                "run_as": str(self.alice.pk),  # ignored: dave is no manager
                "save_history": "errors",
                "critical": "on",  # ignored too
            },
        )
        job = BatchJob.objects.get(description="Month-end close")
        self.assertRedirects(r, f"/jobs/{job.pk}/")
        assert (job.status, job.created_by, job.run_as) == (S.WITHHOLD, self.dave, None)
        assert (job.save_history, job.critical) == (SaveHistory.ERRORS, False)

    def test_it_keeps_the_input_and_shows_errors_at_the_field(self):
        self.login(self.dave)
        jobs = BatchJob.objects.count()  # the database may hold seeded jobs
        r = self.client.post(self.url, {"description": "x" * 201, "scheduled_start": ""})
        assert r.status_code == 200
        html = r.content.decode()
        assert "Ensure this value has at most 200 characters" in html
        assert 'value="' + "x" * 201 + '"' in html
        assert BatchJob.objects.count() == jobs

    def test_a_viewer_cannot_create_jobs(self):
        self.login(self.bob)
        jobs = BatchJob.objects.count()  # the database may hold seeded jobs
        assert self.client.get(self.url).status_code == 403
        assert self.client.post(self.url, {"description": "x"}).status_code == 403
        assert BatchJob.objects.count() == jobs
