"""Rerun from the Batch job history: transitions.rerun_job and the Rerun dialog.

The walkthrough shape of batch-processing-overview, with T2 failing:

T1 ──ended or error──> T2 ──ended──> T3 ──ended──┐
                        │             └──error──> T6
                        ├──ended──> T4 ──ended──┴──> T7 (All: T3 and T4 Ended)
                        └──error──> T5
"""

from __future__ import annotations

import re

from django.test import override_settings

from batchadmin.engine import transitions
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    StatusChange,
)
from tests.base import BaseTestCase, drain, start, statuses

S = BatchStatus
HTMX = {"HX-Request": "true"}


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class RerunTestCase(BaseTestCase):
    def make_walkthrough(self) -> tuple[BatchJob, dict[str, BatchTask]]:
        job = self.make_job(description="D365 walkthrough")
        tasks = {
            key: self.make_task(job, key, position=n)
            for n, key in enumerate(["T1", "T2", "T3", "T4", "T5", "T6", "T7"], 1)
        }
        BatchTask.objects.filter(pk=tasks["T2"].pk).update(
            process="demo.fail", parameters={"message": "T2 went wrong"}, max_retries=1
        )
        self.add_condition(tasks["T2"], tasks["T1"], "ended_or_error")
        self.add_condition(tasks["T3"], tasks["T2"], "ended")
        self.add_condition(tasks["T4"], tasks["T2"], "ended")
        self.add_condition(tasks["T5"], tasks["T2"], "error")
        self.add_condition(tasks["T6"], tasks["T3"], "error")
        self.add_condition(tasks["T7"], tasks["T3"], "ended")
        self.add_condition(tasks["T7"], tasks["T4"], "ended")
        return job, tasks

    def failed_walkthrough(self) -> tuple[BatchJob, dict[str, BatchTask]]:
        job, tasks = self.make_walkthrough()
        start(job)
        drain(job)
        assert job.status == S.ERROR
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ERROR,
            "T3": S.NOT_RUN,
            "T4": S.NOT_RUN,
            "T5": S.ENDED,
            "T6": S.NOT_RUN,
            "T7": S.NOT_RUN,
        }
        return job, tasks

    def fix_t2(self, tasks: dict[str, BatchTask]) -> None:
        """What an administrator does before a rerun: whatever broke T2 is fixed."""
        BatchTask.objects.filter(pk=tasks["T2"].pk).update(process="demo.noop", parameters={})

    # --- the transition --------------------------------------------------------------------

    def test_it_reruns_only_the_failed_tasks_and_keeps_ended_ones(self):
        job, tasks = self.failed_walkthrough()
        first_t1_end = BatchTask.objects.get(pk=tasks["T1"].pk).ended_at
        self.fix_t2(tasks)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.WAITING,
            "T3": S.WAITING,
            "T4": S.WAITING,
            "T5": S.ENDED,
            "T6": S.WAITING,
            "T7": S.WAITING,
        }
        t2 = BatchTask.objects.get(pk=tasks["T2"].pk)
        assert (t2.retries, t2.attempt, t2.started_at, t2.server_id) == (0, 0, None, None)

        start(job)
        # T1 Ended before: its dependent T2 (Ended or error) is released at once, T1 is not.
        assert statuses(job)["T1"] == S.ENDED
        assert statuses(job)["T2"] == S.READY
        drain(job)
        assert job.status == S.ENDED
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.ENDED,
            "T4": S.ENDED,
            "T5": S.ENDED,  # kept from the first run: its condition (T2 Error) is not re-decided
            "T6": S.NOT_RUN,
            "T7": S.ENDED,
        }
        second = BatchJobRun.objects.filter(job=job).order_by("-started_at").first()
        assert second is not None and second.status == S.ENDED
        rows = {r.task.key: (r.attempt, r.status) for r in second.task_runs.select_related("task")}
        assert rows["T1"] == (0, S.ENDED)  # not run again: a history row, attempt 0
        assert rows["T2"] == (1, S.ENDED)
        assert rows["T7"] == (1, S.ENDED)
        assert BatchTaskRun.objects.filter(task=tasks["T1"], attempt=1).count() == 1
        assert BatchTask.objects.get(pk=tasks["T1"].pk).ended_at == first_t1_end

    def test_it_evaluates_dependents_of_kept_tasks_when_the_failed_task_fails_again(self):
        job, tasks = self.failed_walkthrough()
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        start(job)
        drain(job)
        assert job.status == S.ERROR
        assert statuses(job)["T2"] == S.ERROR
        assert statuses(job)["T3"] == S.NOT_RUN
        assert BatchTaskRun.objects.filter(task=tasks["T2"]).count() == 4  # 2 attempts x 2 runs

    def test_it_reruns_the_whole_job(self):
        job, tasks = self.failed_walkthrough()
        self.fix_t2(tasks)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=False)
        assert set(statuses(job).values()) == {S.WAITING}
        start(job)
        assert statuses(job)["T1"] == S.READY
        drain(job)
        assert job.status == S.ENDED
        assert statuses(job)["T5"] == S.NOT_RUN  # decided afresh: T2 Ended this time
        assert BatchTaskRun.objects.filter(task=tasks["T1"], attempt=1).count() == 2

    def test_it_records_who_asked(self):
        job, _ = self.failed_walkthrough()
        assert transitions.rerun_job(job_id=job.pk, by_id=self.bob.pk, only_failed=True)
        change = StatusChange.objects.filter(job=job).latest("at")
        assert (change.old_status, change.new_status, change.by) == (S.ERROR, S.WAITING, self.bob)
        assert "failed" in change.reason

    def test_it_refuses_a_job_that_is_not_finished(self):
        job = self.make_job()
        self.make_task(job, "T1")
        assert not transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=False)
        start(job)
        assert not transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=False)
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_it_refuses_only_failed_when_nothing_failed(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        drain(job)
        assert job.status == S.ENDED
        assert not transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=True)
        job.refresh_from_db()
        assert job.status == S.ENDED

    def test_it_reruns_a_canceled_job(self):
        job = self.make_job()
        self.make_task(job, "T1")
        self.make_task(job, "T2")
        start(job)
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.CANCELED
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        start(job)
        drain(job)
        assert job.status == S.ENDED

    # --- the dialog ------------------------------------------------------------------------

    def test_it_serves_the_dialog_to_htmx_and_a_page_otherwise(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.get(f"/jobs/{job.pk}/rerun/", headers=HTMX)
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="rerun-dialog"' in html
        assert "hx-post" in html
        assert re.search(r'<input[^>]*value="failed"[^>]*checked', html)  # the default
        r = self.client.get(f"/jobs/{job.pk}/rerun/")
        assert "<html" in r.content.decode()
        assert "hx-post" not in r.content.decode()

    def test_it_reruns_from_the_dialog_and_closes_it(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "failed"}, headers=HTMX)
        assert r.status_code == 200
        assert "dialog-close" in r.headers["HX-Trigger"]
        assert 'id="history-head"' in r.content.decode()
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert statuses(job)["T1"] == S.ENDED
        assert StatusChange.objects.filter(job=job).latest("at").by == self.alice

    def test_it_redirects_a_plain_post_to_the_history(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"})
        assert r.status_code == 302
        assert r.headers["Location"] == f"/jobs/{job.pk}/history/"
        assert set(statuses(job).values()) == {S.WAITING}

    def test_it_rejects_a_bad_choice_at_the_field(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "everything"}, headers=HTMX)
        html = r.content.decode()
        assert r.headers["HX-Retarget"] == "#dialog"
        assert "Select a valid choice" in html
        job.refresh_from_db()
        assert job.status == S.ERROR

    def test_it_explains_a_job_that_is_running_again(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        assert transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=True)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "failed"}, headers=HTMX)
        assert "Only Ended, Error or Canceled jobs can be rerun" in r.content.decode()

    def test_it_lets_only_those_who_may_change_the_job_rerun(self):
        job, _ = self.failed_walkthrough()
        for user in (self.bob, self.charlie, self.dave):  # viewer, outsider, other's batch user
            self.client.force_login(user)
            assert self.client.get(f"/jobs/{job.pk}/rerun/").status_code == 404
            assert self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"}).status_code == 404
        job.refresh_from_db()
        assert job.status == S.ERROR
        BatchJob.objects.filter(pk=job.pk).update(created_by=self.dave)
        self.client.force_login(self.dave)  # a batch user on his own job
        assert self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"}).status_code == 302
