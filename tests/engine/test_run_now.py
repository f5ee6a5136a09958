"""Run now (transitions.run_job_now), with parameter overrides for this run only."""

from __future__ import annotations

import datetime as dt

import time_machine
from django.test import override_settings

from batchadmin.audit.models import AuditEntry
from batchadmin.engine import tick, transitions
from batchadmin.engine.transitions import Refused
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
)
from tests.base import BaseTestCase, drain, start, statuses

S = BatchStatus
NINE = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
TOMORROW = NINE + dt.timedelta(days=1)


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class RunNowTestCase(BaseTestCase):
    def test_it_runs_a_withheld_job_at_once(self):
        job = self.make_job(status=S.WITHHOLD, scheduled_start=NINE + dt.timedelta(days=300))
        self.make_task(job, "T1")
        assert transitions.run_job_now(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert statuses(job) == {"T1": S.READY}
        drain(job)
        assert job.status == S.ENDED  # a one-off job: Run now was its run
        run = BatchJobRun.objects.get(job=job)
        assert (run.trigger, run.started_by, run.status) == ("run_now", self.alice, S.ENDED)

    def test_it_runs_a_finished_job_again_from_scratch(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        drain(job)
        assert transitions.run_job_now(job_id=job.pk, by_id=None)
        drain(job)
        assert job.status == S.ENDED
        assert BatchTaskRun.objects.filter(task__job=job, attempt=1).count() == 2

    def test_it_refuses_a_running_job_and_a_job_without_tasks(self):
        job = self.make_job()
        with self.assertRaisesMessage(Refused, "has no tasks"):
            transitions.run_job_now(job_id=job.pk, by_id=None)
        self.make_task(job, "T1")
        start(job)
        with self.assertRaisesMessage(Refused, "is Executing"):
            transitions.run_job_now(job_id=job.pk, by_id=None)

    def test_it_keeps_a_recurring_jobs_next_occurrence_and_remaining_runs(self):
        job = self.make_job(scheduled_start=TOMORROW)
        self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC", end_after=2
        )
        with time_machine.travel(NINE + dt.timedelta(hours=3), tick=True):
            assert transitions.run_job_now(job_id=job.pk, by_id=self.alice.pk)
            drain(job)
        assert (job.status, job.scheduled_start) == (S.WAITING, TOMORROW)
        assert job.tasks.get().status == S.WAITING
        job.recurrence.refresh_from_db()
        assert job.recurrence.runs == 0
        assert not job.manual_run
        # The schedule goes on as if nothing had happened: both runs are still to come.
        assert tick.handle_due_jobs(TOMORROW) == 1

    def test_a_held_recurring_job_goes_back_to_withhold(self):
        job = self.make_job(status=S.WITHHOLD, scheduled_start=TOMORROW)
        self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC"
        )
        assert transitions.run_job_now(job_id=job.pk, by_id=None)
        drain(job)
        assert (job.status, job.scheduled_start) == (S.WITHHOLD, TOMORROW)

    def test_canceling_it_stops_this_run_only(self):
        job = self.make_job(scheduled_start=TOMORROW)
        task = self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC"
        )
        assert transitions.run_job_now(job_id=job.pk, by_id=None)
        assert transitions.claim_task(task_id=task.pk, server_id=None, hostname="h")
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        assert transitions.finish_task(
            task_id=task.pk, attempt=1, outcome=transitions.Outcome(canceled=True)
        )
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, TOMORROW)
        assert BatchJobRun.objects.get(job=job).status == S.CANCELED

    def test_a_recurrence_saved_while_it_runs_is_the_one_it_goes_back_to(self):
        job = self.make_job(scheduled_start=TOMORROW)
        self.make_task(job, "T1")
        recurrence = BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC"
        )
        with time_machine.travel(NINE + dt.timedelta(hours=3), tick=True):
            assert transitions.run_job_now(job_id=job.pk, by_id=None)
            BatchRecurrence.objects.filter(pk=recurrence.pk).update(start_time=dt.time(21, 0))
            assert transitions.reschedule_job(job_id=job.pk)
            drain(job)
        assert job.scheduled_start == NINE.replace(hour=21)

    def test_it_runs_a_task_skipped_for_the_next_run_as_skipped(self):
        job = self.make_job(status=S.WITHHOLD)
        first = self.make_task(job, "T1")
        second = self.make_task(job, "T2")
        self.add_condition(second, first)
        assert transitions.skip_task(task_id=first.pk, reason="not today", by_id=None)
        assert transitions.run_job_now(job_id=job.pk, by_id=None)
        assert statuses(job) == {"T1": S.SKIPPED, "T2": S.READY}

    def test_it_records_the_action_in_the_audit_trail(self):
        job = self.make_job(status=S.WITHHOLD)
        self.make_task(job, "T1")
        assert transitions.run_job_now(job_id=job.pk, by_id=self.alice.pk, via="cli")
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.action, entry.username, entry.via, entry.changes) == (
            "run_now",
            "alice",
            "cli",
            {},
        )


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class OverridesTestCase(BaseTestCase):
    def make(self) -> tuple[BatchJob, BatchTask]:
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "LOG", process="demo.log", parameters={"lines": 2})
        return job, task

    def test_the_run_uses_the_overrides_and_the_stored_parameters_do_not_change(self):
        job, task = self.make()
        assert transitions.run_job_now(
            job_id=job.pk, by_id=self.alice.pk, overrides={"LOG": {"lines": "5"}}
        )
        drain(job)
        assert job.status == S.ENDED
        assert BatchLogEntry.objects.filter(task_run__task=task).count() == 5
        task.refresh_from_db()
        assert (task.parameters, task.run_parameters) == ({"lines": 2}, None)
        run = BatchJobRun.objects.get(job=job)
        assert run.parameters == {"LOG": {"lines": 5}}  # what it ran with, as cleaned
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert entry.changes == {"LOG.lines": [2, 5]}
        # The next run uses the stored parameters again.
        assert transitions.run_job_now(job_id=job.pk, by_id=None)
        drain(job)
        last = BatchTaskRun.objects.filter(task=task).latest("pk")
        assert BatchLogEntry.objects.filter(task_run=last).count() == 2

    def test_retries_of_the_run_use_the_overrides_too(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(
            job, "F", process="demo.flaky", parameters={"failures": 9}, max_retries=3
        )
        assert transitions.run_job_now(job_id=job.pk, by_id=None, overrides={"F": {"failures": 2}})
        drain(job)
        assert job.status == S.ENDED
        assert task.runs.count() == 3  # two failed attempts, then the third succeeded

    def test_it_refuses_a_value_the_process_form_rejects_and_changes_nothing(self):
        job, _ = self.make()
        with self.assertRaisesMessage(Refused, "Task LOG: lines: Enter a whole number."):
            transitions.run_job_now(job_id=job.pk, by_id=None, overrides={"LOG": {"lines": "x"}})
        with self.assertRaisesMessage(Refused, "Task LOG: Unknown parameter(s): colour."):
            transitions.run_job_now(job_id=job.pk, by_id=None, overrides={"LOG": {"colour": "1"}})
        with self.assertRaisesMessage(Refused, "has no task 'NOPE'"):
            transitions.run_job_now(job_id=job.pk, by_id=None, overrides={"NOPE": {"lines": 1}})
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
        assert not BatchJobRun.objects.exists()
        assert not AuditEntry.objects.exists()

    def test_an_override_equal_to_the_stored_value_is_no_override(self):
        job, task = self.make()
        assert transitions.run_job_now(job_id=job.pk, by_id=None, overrides={"LOG": {"lines": 2}})
        task.refresh_from_db()
        assert task.run_parameters is None
        assert BatchJobRun.objects.get(job=job).parameters == {}
