"""Rerun now (transitions.rerun_job): the failed tasks, the whole job, or from a task; and the
Rerun dialog.

The walkthrough shape of batch-processing-overview, with T2 failing:

T1 ──ended or error──> T2 ──ended──> T3 ──ended──┐
                        │             └──error──> T6
                        ├──ended──> T4 ──ended──┴──> T7 (All: T3 and T4 Ended)
                        └──error──> T5
"""

from __future__ import annotations

import datetime as dt

import time_machine
from django.test import override_settings

from batchadmin.audit.models import AuditEntry
from batchadmin.engine import transitions
from batchadmin.engine.transitions import Refused
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
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

    def test_it_reruns_only_the_failed_tasks_now_and_keeps_ended_ones(self):
        job, tasks = self.failed_walkthrough()
        first_t1_end = BatchTask.objects.get(pk=tasks["T1"].pk).ended_at
        self.fix_t2(tasks)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        job.refresh_from_db()
        assert job.status == S.EXECUTING  # at once, not back to Waiting
        # T1 Ended before: its dependent T2 (Ended or error) is released at once, T1 is not.
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.READY,
            "T3": S.WAITING,
            "T4": S.WAITING,
            "T5": S.ENDED,
            "T6": S.WAITING,
            "T7": S.WAITING,
        }
        t2 = BatchTask.objects.get(pk=tasks["T2"].pk)
        assert (t2.retries, t2.started_at, t2.server_id) == (0, None, None)
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
        assert second.trigger == BatchJobRun.Trigger.RERUN_FAILED
        rows = {r.task.key: (r.attempt, r.status) for r in second.task_runs.select_related("task")}
        assert rows["T1"] == (0, S.ENDED)  # not run again: a history row, attempt 0
        assert rows["T2"] == (1, S.ENDED)
        assert rows["T7"] == (1, S.ENDED)
        assert BatchTaskRun.objects.filter(task=tasks["T1"], attempt=1).count() == 1
        assert BatchTask.objects.get(pk=tasks["T1"].pk).ended_at == first_t1_end

    def test_it_evaluates_dependents_of_kept_tasks_when_the_failed_task_fails_again(self):
        job, tasks = self.failed_walkthrough()
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        drain(job)
        assert job.status == S.ERROR
        assert statuses(job)["T2"] == S.ERROR
        assert statuses(job)["T3"] == S.NOT_RUN
        assert BatchTaskRun.objects.filter(task=tasks["T2"]).count() == 4  # 2 attempts x 2 runs

    def test_it_reruns_the_whole_job(self):
        job, tasks = self.failed_walkthrough()
        self.fix_t2(tasks)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=False)
        assert statuses(job)["T1"] == S.READY
        assert {statuses(job)[k] for k in ("T2", "T3", "T5", "T7")} == {S.WAITING}
        drain(job)
        assert job.status == S.ENDED
        assert statuses(job)["T5"] == S.NOT_RUN  # decided afresh: T2 Ended this time
        assert BatchTaskRun.objects.filter(task=tasks["T1"], attempt=1).count() == 2

    def test_it_records_who_asked(self):
        job, _ = self.failed_walkthrough()
        assert transitions.rerun_job(job_id=job.pk, by_id=self.bob.pk, only_failed=True)
        change = StatusChange.objects.filter(job=job).latest("pk")
        assert (change.old_status, change.new_status, change.by) == (S.ERROR, S.EXECUTING, self.bob)
        assert "failed" in change.reason
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.action, entry.username) == ("rerun_failed", "bob")

    def test_it_refuses_a_job_that_is_running_or_has_not_run(self):
        job = self.make_job()
        self.make_task(job, "T1")
        with self.assertRaisesMessage(Refused, "no finished run"):
            transitions.rerun_job(job_id=job.pk, by_id=None)
        start(job)
        with self.assertRaisesMessage(Refused, "once this run is over"):
            transitions.rerun_job(job_id=job.pk, by_id=None)
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_it_refuses_only_failed_when_nothing_failed(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        drain(job)
        assert job.status == S.ENDED
        with self.assertRaisesMessage(Refused, "No task failed or did not run"):
            transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=True)
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
        drain(job)
        assert job.status == S.ENDED

    # --- rerun from a task -----------------------------------------------------------------

    def test_it_reruns_from_a_task_and_everything_downstream_of_it(self):
        job, tasks = self.make_walkthrough()
        self.fix_t2(tasks)
        start(job)
        drain(job)
        assert job.status == S.ENDED
        assert transitions.rerun_job(job_id=job.pk, by_id=None, from_task_id=tasks["T3"].pk)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.READY,
            "T4": S.ENDED,  # not downstream of T3: keeps its result
            "T5": S.NOT_RUN,
            "T6": S.WAITING,
            "T7": S.WAITING,
        }
        drain(job)
        assert job.status == S.ENDED
        again = BatchTaskRun.objects.filter(attempt=1, job_run=job.current_run)
        assert sorted(again.values_list("task__key", flat=True)) == ["T3", "T7"]
        assert statuses(job)["T6"] == S.NOT_RUN  # decided afresh: T3 Ended again

    def test_it_starts_the_chosen_task_even_if_its_conditions_did_not_hold(self):
        # T5 runs only when T2 fails; T2 ended, so it did not run. Rerun from T5 runs it.
        job, tasks = self.make_walkthrough()
        self.fix_t2(tasks)
        start(job)
        drain(job)
        assert statuses(job)["T5"] == S.NOT_RUN
        assert transitions.rerun_job(job_id=job.pk, by_id=None, from_task_id=tasks["T5"].pk)
        assert statuses(job)["T5"] == S.READY
        drain(job)
        assert (job.status, statuses(job)["T5"]) == (S.ENDED, S.ENDED)

    def test_it_reruns_from_a_task_under_an_any_condition(self):
        job, tasks = self.failed_walkthrough()
        BatchTask.objects.filter(pk=tasks["T7"].pk).update(condition_type="any")
        self.fix_t2(tasks)
        assert transitions.rerun_job(job_id=job.pk, by_id=None, from_task_id=tasks["T4"].pk)
        drain(job)
        # T4 ran; T7 (Any of T3, T4 Ended) ran on T4 alone; T3 was not downstream of T4.
        assert statuses(job)["T3"] == S.NOT_RUN
        assert statuses(job)["T7"] == S.ENDED
        assert job.status == S.ERROR  # T2 kept its Error: it was not rerun

    def test_it_refuses_a_task_of_another_job(self):
        job, _ = self.failed_walkthrough()
        other = self.make_task(self.make_job(), "X")
        with self.assertRaisesMessage(Refused, "no such task"):
            transitions.rerun_job(job_id=job.pk, by_id=None, from_task_id=other.pk)

    # --- recurring jobs --------------------------------------------------------------------

    def test_it_reruns_a_recurring_job_now_without_using_an_occurrence(self):
        nine = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
        tomorrow = nine + dt.timedelta(days=1)
        job, tasks = self.make_walkthrough()
        BatchJob.objects.filter(pk=job.pk).update(scheduled_start=nine)
        BatchRecurrence.objects.create(
            job=job, start_date=nine.date(), start_time=nine.time(), time_zone="UTC", end_after=2
        )
        with time_machine.travel(nine, tick=True):
            start(job)
            drain(job)
        assert (job.status, job.scheduled_start) == (S.WAITING, tomorrow)
        assert BatchJobRun.objects.get(job=job).status == S.ERROR
        self.fix_t2(tasks)
        with time_machine.travel(nine + dt.timedelta(hours=1), tick=True):
            assert transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=True)
            job.refresh_from_db()
            assert job.status == S.EXECUTING  # now, not at tomorrow's occurrence
            assert statuses(job)["T1"] == S.ENDED  # kept, read back from the run's history
            drain(job)
        assert (job.status, job.scheduled_start) == (S.WAITING, tomorrow)
        job.recurrence.refresh_from_db()
        assert job.recurrence.runs == 1  # "end after 2": tomorrow's run is still to come
        assert [r.status for r in BatchJobRun.objects.filter(job=job).order_by("pk")] == [
            S.ERROR,
            S.ENDED,
        ]
        back = StatusChange.objects.filter(job=job).latest("pk")
        assert (back.new_status, back.reason) == (
            S.WAITING,
            "Back to its schedule after the manual run: next run 2025-03-04 09:00 UTC",
        )

    # --- the dialog (more in tests/jobs/test_operator_pages.py) ---------------------------

    def test_it_serves_the_dialog_to_htmx_and_a_page_otherwise(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.get(f"/jobs/{job.pk}/rerun/", headers=HTMX)
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="rerun-dialog"' in html
        assert "hx-post" in html
        r = self.client.get(f"/jobs/{job.pk}/rerun/")
        assert "<html" in r.content.decode()
        assert "hx-post" not in r.content.decode()

    def test_it_redirects_a_plain_post_to_the_history(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "all"})
        assert r.status_code == 302
        assert r.headers["Location"] == f"/jobs/{job.pk}/history/"
        assert statuses(job)["T1"] == S.READY

    def test_it_rejects_a_bad_choice_at_the_field(self):
        job, _ = self.failed_walkthrough()
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{job.pk}/rerun/", {"what": "everything"}, headers=HTMX)
        assert "Select a valid choice" in r.content.decode()
        job.refresh_from_db()
        assert job.status == S.ERROR

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
