"""The operator actions' pages: Skip, Rerun from here, Run now and Rerun (jobs/ops_views.py,
history_views.job_rerun), with their role checks."""

from __future__ import annotations

import re

from django.test import override_settings

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTask
from tests.base import BaseTestCase, drain, start, statuses
from tests.engine.walkthrough import FAIL, make_walkthrough

S = BatchStatus
HTMX = {"HX-Request": "true"}


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class OperatorPagesTestCase(BaseTestCase):
    def failed_job(self) -> tuple[BatchJob, dict[str, BatchTask]]:
        job, tasks = make_walkthrough(self, overrides={"T2": FAIL})
        start(job)
        drain(job)
        assert job.status == S.ERROR
        return job, tasks

    def skip_url(self, job: BatchJob, task: BatchTask) -> str:
        return f"/jobs/{job.pk}/tasks/{task.pk}/skip/"

    # --- Skip ------------------------------------------------------------------------------

    def test_it_serves_the_skip_dialog_to_htmx_and_a_page_otherwise(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        html = self.client.get(self.skip_url(job, tasks["T2"]), headers=HTMX).content.decode()
        assert "<html" not in html
        assert 'name="reason"' in html
        assert "The job resumes now, in a new run" in html
        assert "<strong>T3</strong>" in html  # what waits for it
        page = self.client.get(self.skip_url(job, tasks["T2"])).content.decode()
        assert "<html" in page and 'name="reason"' in page

    def test_it_skips_with_a_reason_and_closes_the_dialog(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        r = self.client.post(
            self.skip_url(job, tasks["T2"]), {"reason": "posted by hand"}, headers=HTMX
        )
        assert r.status_code == 200
        for event in ("dialog-close", "job-changed", "history-changed"):
            assert event in r.headers["HX-Trigger"]
        job.refresh_from_db()
        assert (job.status, statuses(job)["T2"]) == (S.EXECUTING, S.SKIPPED)
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.username, entry.reason, entry.via) == ("alice", "posted by hand", "web")

    def test_it_asks_for_the_reason_at_the_field(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        r = self.client.post(self.skip_url(job, tasks["T2"]), {"reason": ""}, headers=HTMX)
        assert "This field is required." in r.content.decode()
        assert statuses(job)["T2"] == S.ERROR

    def test_it_says_why_a_task_cannot_be_skipped(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        html = self.client.get(self.skip_url(job, tasks["T1"]), headers=HTMX).content.decode()
        assert "Task T1 is Ended in the job&#x27;s last run" in html
        assert "Skip the task</button>" not in html
        r = self.client.post(self.skip_url(job, tasks["T1"]), {"reason": "x"}, headers=HTMX)
        assert "only a task in Error can be skipped" in r.content.decode()
        assert statuses(job)["T1"] == S.ENDED

    def test_it_redirects_a_plain_post_back_where_it_came_from(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        r = self.client.post(self.skip_url(job, tasks["T2"]), {"reason": "x", "back": "history"})
        assert r.headers["Location"] == f"/jobs/{job.pk}/history/"

    def test_it_refuses_a_viewer_and_hides_the_job_from_others(self):
        job, tasks = self.failed_job()
        url = self.skip_url(job, tasks["T2"])
        self.client.force_login(self.bob)  # a viewer sees the job but may not act on it
        assert self.client.get(url).status_code == 403
        assert self.client.post(url, {"reason": "x"}, headers=HTMX).status_code == 403
        for user in (self.charlie, self.dave):  # no role; another user's batch user
            self.client.force_login(user)
            assert self.client.post(url, {"reason": "x"}).status_code == 404
        assert statuses(job)["T2"] == S.ERROR
        BatchJob.objects.filter(pk=job.pk).update(created_by=self.dave)
        assert self.client.post(url, {"reason": "mine"}).status_code == 302  # dave, his own job
        assert statuses(job)["T2"] == S.SKIPPED

    def test_it_shows_skip_and_rerun_controls_only_to_those_who_may_use_them(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.alice)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert self.skip_url(job, tasks["T2"]) in html
        assert self.skip_url(job, tasks["T1"]) not in html  # Ended: nothing to skip
        assert f"/tasks/{tasks['T3'].pk}/rerun-from/" in html
        assert "Run now…" in html and "Rerun failed now…" in html
        history = self.client.get(f"/jobs/{job.pk}/history/").content.decode()
        assert f"{self.skip_url(job, tasks['T2'])}?back=history" in history
        self.client.force_login(self.bob)
        for url in (f"/jobs/{job.pk}/", f"/jobs/{job.pk}/history/"):
            html = self.client.get(url).content.decode()
            assert "/skip/" not in html
            assert "rerun-from" not in html
            assert "Run now" not in html

    def test_a_live_poll_carries_the_controls_of_each_line(self):
        job, tasks = make_walkthrough(self, overrides={"T2": FAIL})
        start(job)
        self.client.force_login(self.alice)
        from tests.base import run

        assert run(tasks["T1"]) and run(tasks["T2"])
        r = self.client.get(
            f"/jobs/{job.pk}/?poll=1&editable=0&diagram=1",
            headers={**HTMX, "HX-Target": "job-diagram"},
        )
        html = r.content.decode()
        ops = re.search(rf'<span id="task-ops-{tasks["T2"].pk}"[^>]*hx-swap-oob="true"', html)
        assert ops is not None
        assert self.skip_url(job, tasks["T2"]) in html

    # --- Rerun from here ------------------------------------------------------------------

    def test_it_reruns_from_a_task(self):
        job, tasks = self.failed_job()
        BatchTask.objects.filter(pk=tasks["T2"].pk).update(process="demo.noop", parameters={})
        url = f"/jobs/{job.pk}/tasks/{tasks['T2'].pk}/rerun-from/"
        self.client.force_login(self.alice)
        html = self.client.get(url, headers=HTMX).content.decode()
        assert "<strong>T2</strong> starts at once" in html
        assert "<strong>T7</strong>" in html
        r = self.client.post(url, headers=HTMX)
        assert "dialog-close" in r.headers["HX-Trigger"]
        drain(job)
        assert job.status == S.ENDED
        assert BatchJobRun.objects.filter(job=job).latest("pk").trigger == "rerun_from"

    def test_it_refuses_rerun_from_to_a_viewer(self):
        job, tasks = self.failed_job()
        self.client.force_login(self.bob)
        url = f"/jobs/{job.pk}/tasks/{tasks['T2'].pk}/rerun-from/"
        assert self.client.post(url).status_code == 403
        job.refresh_from_db()
        assert job.status == S.ERROR

    # --- Run now --------------------------------------------------------------------------

    def test_it_offers_each_tasks_parameters_and_runs_with_the_changed_ones(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "LOG", process="demo.log", parameters={"lines": 2})
        self.make_task(job, "NOOP")  # no parameters: no form
        self.client.force_login(self.alice)
        html = self.client.get(f"/jobs/{job.pk}/run-now/", headers=HTMX).content.decode()
        assert f'name="t{task.pk}-lines"' in html
        assert 'value="2"' in html
        assert "NOOP" not in html
        r = self.client.post(f"/jobs/{job.pk}/run-now/", {f"t{task.pk}-lines": "4"}, headers=HTMX)
        assert "dialog-close" in r.headers["HX-Trigger"]
        run = BatchJobRun.objects.get(job=job)
        assert (run.trigger, run.parameters) == ("run_now", {"LOG": {"lines": 4}})
        task.refresh_from_db()
        assert task.parameters == {"lines": 2}

    def test_it_refuses_a_bad_override_at_its_field(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "LOG", process="demo.log", parameters={"lines": 2})
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/run-now/", {f"t{task.pk}-lines": "-3"}, headers=HTMX)
        assert "Ensure this value is greater than or equal to 0." in r.content.decode()
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_it_runs_now_without_overrides_and_refuses_a_viewer(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "LOG", process="demo.log", parameters={"lines": 2})
        self.client.force_login(self.bob)
        assert self.client.post(f"/jobs/{job.pk}/run-now/").status_code == 403
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/run-now/", {f"t{task.pk}-lines": "2"})
        assert r.status_code == 302
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert BatchJobRun.objects.get(job=job).parameters == {}

    # --- Rerun (the history's dialog, and Rerun failed now on the job page) ---------------

    def test_it_reruns_the_failed_tasks_now_from_the_dialog(self):
        job, _ = self.failed_job()
        self.client.force_login(self.alice)
        html = self.client.get(f"/jobs/{job.pk}/rerun/", headers=HTMX).content.decode()
        assert re.search(r'<input[^>]*value="failed"[^>]*checked', html)
        assert "It runs now, in a new run" in html
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "failed"}, headers=HTMX)
        assert "dialog-close" in r.headers["HX-Trigger"]
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert statuses(job)["T1"] == S.ENDED

    def test_it_explains_a_running_job_in_the_rerun_dialog(self):
        job, _ = self.failed_job()
        self.client.force_login(self.alice)
        assert self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"}).status_code == 302
        html = self.client.get(f"/jobs/{job.pk}/rerun/", headers=HTMX).content.decode()
        assert "it can be rerun once this run is over" in html
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"}, headers=HTMX)
        assert "it can be rerun once this run is over" in r.content.decode()
