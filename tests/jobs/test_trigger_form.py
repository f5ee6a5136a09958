"""The job form's "Triggered by job": saved with the header, loops refused, links both ways."""

from __future__ import annotations

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, BatchStatus, Priority
from tests.jobs.form_base import FormTestCase

S = BatchStatus


class TriggerFormTestCase(FormTestCase):
    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/"

    def header(self, **overrides: str) -> dict[str, str]:
        data = {
            "description": "Post orders",
            "scheduled_start": "2030-01-02T03:04",
            "run_as": "",
            "priority": str(Priority.HIGH.value),
            "company": str(self.usmf.pk),
            "save_history": "always",
        }
        return data | overrides

    def test_it_saves_the_trigger_and_shows_links_both_ways(self):
        parent = self.make_job(description="Import orders", created_by=self.dave)
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        r = self.client.post(
            self.url(job),
            self.header(follows=str(parent.pk), after_status="ended_or_error"),
            headers=self.htmx("job-header"),
        )
        assert r.status_code == 200
        assert "Saved." in r.content.decode()
        job.refresh_from_db()
        assert (job.after_job_id, job.after_status) == (parent.pk, "ended_or_error")
        entry = AuditEntry.objects.get(action="trigger_edit")
        assert entry.changes == {"Triggered by job": [None, f"{parent.pk} (Ended or error)"]}
        html = self.client.get(self.url(job)).content.decode()
        assert f'href="/jobs/{parent.pk}/">job {parent.pk} Import orders</a>' in html
        html = self.client.get(self.url(parent)).content.decode()
        assert 'id="job-triggers"' in html
        assert f'href="/jobs/{job.pk}/">job {job.pk} Post orders</a>' in html

    def test_it_refuses_a_loop_with_the_reason_and_saves_nothing(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        follower = self.make_job(created_by=self.dave, after_job=job)
        self.login(self.dave)
        r = self.client.post(
            self.url(job), self.header(follows=str(follower.pk)), headers=self.htmx("job-header")
        )
        html = r.content.decode()
        assert f"Job {job.pk} can&#x27;t follow job {follower.pk}" in html
        assert "the triggers would loop" in html
        job.refresh_from_db()
        assert job.after_job_id is None
        assert job.description != "Post orders"

    def test_it_refuses_a_job_the_user_cannot_see(self):
        hidden = self.make_job(created_by=self.alice)
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        r = self.client.post(
            self.url(job), self.header(follows=str(hidden.pk)), headers=self.htmx("job-header")
        )
        assert f"There is no batch job {hidden.pk} that you can see." in r.content.decode()
        job.refresh_from_db()
        assert job.after_job_id is None

    def test_a_new_job_may_follow_one(self):
        parent = self.make_job(created_by=self.dave)
        self.login(self.dave)
        r = self.client.post("/jobs/new/", self.header(follows=str(parent.pk)))
        job = BatchJob.objects.get(description="Post orders")
        assert r.status_code == 302
        assert (job.after_job_id, job.after_status) == (parent.pk, "ended")


class TriggerDiagramTestCase(FormTestCase):
    def test_the_diagram_draws_the_job_it_follows_before_its_first_tasks(self):
        parent = self.make_job(description="Import orders", created_by=self.dave)
        job = self.make_job(created_by=self.dave, after_job=parent, after_status="error")
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1)
        self.login(self.dave)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert html.count('class="node n-waiting external"') == 1  # one box, the parent job
        assert f'href="/jobs/{parent.pk}/" class="node' in html
        assert f"<title>T1 runs when Job {parent.pk} is error</title>" in html
        assert f"<title>T2 runs when Job {parent.pk}" not in html  # only the first tasks


class TriggerListTestCase(FormTestCase):
    def test_the_list_says_a_triggered_job_runs_after_its_parent(self):
        parent = self.make_job(description="Import orders", created_by=self.dave)
        self.make_job(description="Post orders", created_by=self.dave, after_job=parent)
        self.login(self.dave)
        html = self.client.get("/jobs/").content.decode()
        assert f'<span class="muted">after job {parent.pk}</span>' in html
