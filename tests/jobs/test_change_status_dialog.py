from __future__ import annotations

import json
from unittest import mock

from batchadmin.engine import transitions
from batchadmin.jobs.models import BatchJob, BatchStatus, StatusChange
from tests.base import HOSTNAME, start
from tests.jobs.form_base import FormTestCase, squash

S = BatchStatus


class ChangeStatusDialogTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login(self.dave)

    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/change-status/"

    def offered(self, html: str) -> list[str]:
        return [s for s in ("waiting", "withhold", "canceling") if f'value="{s}"' in html]

    def running_job(self) -> BatchJob:
        """T1 executing on a server, T2 ready, T3 waiting for T2."""
        job = self.make_job(created_by=self.dave)
        t1 = self.make_task(job, "T1", position=1)
        self.make_task(job, "T2", position=2)
        t3 = self.make_task(job, "T3", position=3)
        self.add_condition(t3, job.tasks.get(key="T2"))
        start(job)
        assert transitions.claim_task(task_id=t1.pk, server_id=self.server.pk, hostname=HOSTNAME)
        return job

    def test_it_is_a_dialog_fragment_for_htmx_and_a_page_without(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        r = self.client.get(self.url(job), headers=self.htmx("dialog"))
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert 'id="change-status-form"' in html
        page = self.client.get(self.url(job)).content.decode()
        assert "<html" in page
        assert "Back to the job" in page

    def test_it_offers_only_the_moves_allowed_from_the_current_status(self):
        cases = {
            S.WITHHOLD: ["waiting"],
            S.WAITING: ["withhold"],
            S.ENDED: ["waiting", "withhold"],
            S.ERROR: ["waiting", "withhold"],
            S.CANCELED: ["waiting", "withhold"],
        }
        for status, moves in cases.items():
            job = self.make_job(created_by=self.dave, status=status)
            html = self.client.get(self.url(job), headers=self.htmx()).content.decode()
            assert self.offered(html) == moves, status
        assert self.offered(self.client.get(self.url(self.running_job())).content.decode()) == [
            "canceling"
        ]

    def test_a_canceling_job_offers_nothing(self):
        job = self.make_job(created_by=self.dave, status=S.CANCELING)
        html = squash(self.client.get(self.url(job), headers=self.htmx()).content.decode())
        assert self.offered(html) == []
        assert "A job that is Canceling can't change status now: it ends Canceled" in html

    def test_it_changes_the_status_and_closes_the_dialog(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.make_task(job, "T1")
        r = self.client.post(self.url(job), {"status": "waiting"}, headers=self.htmx("dialog"))
        assert r.status_code == 200
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "job-changed": {}}
        job.refresh_from_db()
        assert job.status == S.WAITING
        change = StatusChange.objects.get(job=job)
        assert (change.old_status, change.new_status, change.by) == (
            S.WITHHOLD,
            S.WAITING,
            self.dave,
        )

    def test_it_redirects_to_the_job_without_htmx(self):
        job = self.make_job(created_by=self.dave, status=S.WAITING)
        r = self.client.post(self.url(job), {"status": "withhold"})
        self.assertRedirects(r, f"/jobs/{job.pk}/")
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_it_tells_what_a_cancel_does_to_the_tasks(self):
        job = self.running_job()
        html = squash(self.client.get(self.url(job), headers=self.htmx()).content.decode())
        assert "ask the executing task to stop: <strong>T1</strong> Task T1." in html
        assert "mark 2 tasks that did not start as Didn't run:" in html
        assert "<strong>T2</strong>, <strong>T3</strong>" in html
        assert 'name="confirm"' in html

    def test_a_cancel_needs_the_confirmation(self):
        job = self.running_job()
        r = self.client.post(self.url(job), {"status": "canceling"}, headers=self.htmx())
        html = r.content.decode()
        assert "Tick this box to confirm that the job is to be canceled." in html
        assert "HX-Trigger" not in r.headers
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_a_confirmed_cancel_stops_the_job(self):
        job = self.running_job()
        data = {"status": "canceling", "confirm": "on"}
        r = self.client.post(self.url(job), data, headers=self.htmx())
        assert "dialog-close" in json.loads(r.headers["HX-Trigger"])
        job.refresh_from_db()
        assert job.status == S.CANCELING
        assert dict(job.tasks.values_list("key", "status")) == {
            "T1": S.CANCELING,
            "T2": S.NOT_RUN,
            "T3": S.NOT_RUN,
        }

    def test_an_illegal_move_rerenders_the_dialog_with_the_message(self):
        job = self.running_job()
        r = self.client.post(self.url(job), {"status": "withhold"}, headers=self.htmx())
        html = r.content.decode()
        assert "<html" not in html
        assert (
            "A job in status Executing can&#x27;t be changed to Withhold; allowed: Canceling."
            in html
        )
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_a_lost_race_asks_to_look_again(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.make_task(job, "T1")
        with mock.patch.object(transitions, "change_status", return_value=False):
            r = self.client.post(self.url(job), {"status": "waiting"}, headers=self.htmx())
        assert "The job changed status meanwhile." in r.content.decode()

    def test_a_job_without_tasks_is_set_waiting_only_after_a_warning(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        html = self.client.get(self.url(job), headers=self.htmx()).content.decode()
        assert "This job has no tasks." in html
        assert 'name="confirm_empty"' in html
        r = self.client.post(self.url(job), {"status": "waiting"}, headers=self.htmx("dialog"))
        assert "HX-Trigger" not in r.headers
        assert "This job has no tasks: add them first, or tick this box" in r.content.decode()
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
        data = {"status": "waiting", "confirm_empty": "on"}
        r = self.client.post(self.url(job), data, headers=self.htmx("dialog"))
        assert "dialog-close" in r.headers["HX-Trigger"]
        job.refresh_from_db()
        assert job.status == S.WAITING

    def test_a_job_with_tasks_has_no_such_warning(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.make_task(job, "T1")
        html = self.client.get(self.url(job), headers=self.htmx()).content.decode()
        assert "This job has no tasks." not in html
        assert 'name="confirm_empty"' not in html

    def test_a_viewer_can_neither_open_nor_post(self):
        job = self.make_job(status=S.WITHHOLD)
        self.login(self.bob)
        assert self.client.get(self.url(job), headers=self.htmx()).status_code == 404
        assert self.client.post(self.url(job), {"status": "waiting"}).status_code == 404
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_a_batch_user_cannot_change_the_jobs_of_others(self):
        job = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        assert self.client.get(self.url(job)).status_code == 404
        assert self.client.post(self.url(job), {"status": "waiting"}).status_code == 404
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
