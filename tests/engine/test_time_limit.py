"""A task's time limit: past it the attempt is asked to stop, then aborted; it ends in Error."""

from __future__ import annotations

import datetime as dt
from unittest import mock

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.test import SimpleTestCase, override_settings
from django.utils.timezone import now

from batchadmin.engine import dispatch, runner, tick, transitions
from batchadmin.engine.transitions import Outcome
from batchadmin.jobs.models import (
    TIME_LIMIT_MAX_SECONDS,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
)
from batchadmin.lib import durations
from tests.base import HOSTNAME, BaseTestCase, statuses

S = BatchStatus
SECOND = dt.timedelta(seconds=1)
GRACE = dt.timedelta(seconds=30)


@override_settings(BATCH_CANCEL_GRACE_SECONDS=30, BATCH_TASK_TIME_LIMIT_SECONDS=6 * 3600)
class TimeLimitTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.revoke = self.enterContext(mock.patch.object(dispatch, "revoke", return_value=True))
        self.start = now().replace(microsecond=0)  # SQLite keeps milliseconds in the deadline
        self.job = self.make_job(scheduled_start=self.start)
        self.t1 = self.make_task(
            self.job,
            "T1",
            process="demo.sleep",
            parameters={"seconds": 60},
            time_limit=3600,
            max_retries=2,
        )
        self.t2 = self.make_task(self.job, "T2")
        self.add_condition(self.t2, self.t1)
        assert transitions.start_job(job_id=self.job.pk, at=self.start)
        self.task_run = self.claim(self.t1)
        self.limit_at = self.start + dt.timedelta(hours=1)

    def claim(self, task: BatchTask) -> transitions.Claim:
        task_run = transitions.claim_task(
            task_id=task.pk,
            server_id=self.server.pk,
            hostname=HOSTNAME,
            at=self.start,
            celery_task_id=f"celery-{task.key}",
        )
        assert task_run is not None
        return task_run

    def task(self) -> BatchTask:
        return BatchTask.objects.get(pk=self.t1.pk)

    def test_the_claim_sets_the_deadline_from_the_task_time_limit(self):
        assert self.task().deadline_at == self.limit_at
        assert not self.task().timed_out

    def test_a_task_without_a_time_limit_gets_the_default(self):
        job = self.make_job(scheduled_start=self.start)
        task = self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk, at=self.start)
        self.claim(task)
        task.refresh_from_db()
        assert task.deadline_at == self.start + dt.timedelta(hours=6)

    def test_past_the_limit_the_attempt_is_asked_to_stop(self):
        assert tick.handle_overdue_tasks(self.limit_at) == 0  # not past it yet
        assert tick.handle_overdue_tasks(self.limit_at + SECOND) == 1
        task = self.task()
        assert (task.status, task.timed_out) == (S.EXECUTING, True)
        assert task.deadline_at == self.limit_at + SECOND + GRACE
        self.revoke.assert_not_called()
        line = BatchLogEntry.objects.get(task_run_id=self.task_run.pk)
        assert line.level == BatchLogEntry.Level.WARNING
        assert line.message == "Time limit of 1 h exceeded; the process was asked to stop."
        # The process sees it as a stop request.
        ctx = runner.ProcessContext(self.task_run)
        assert ctx.cancel_requested()
        assert ctx.timed_out
        assert ctx.time_limit == 3600

    def test_a_process_that_stops_when_asked_ends_in_error_without_a_retry(self):
        assert tick.handle_overdue_tasks(self.limit_at + SECOND) == 1
        outcome, lines = runner.execute(self.task_run)  # demo.sleep checks for a cancel
        assert outcome == Outcome(
            error="Time limit of 1 h exceeded; the process stopped when asked.", retryable=False
        )
        assert [line.message for line in lines] == [
            "Cancel requested; stopping early.",
            outcome.error,
        ]
        assert transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=outcome)
        assert statuses(self.job) == {"T1": S.ERROR, "T2": S.NOT_RUN}
        assert self.task().retries == 0  # max_retries 2, but a time limit is not retried
        self.job.refresh_from_db()
        assert self.job.status == S.ERROR

    def test_a_process_that_ignores_it_is_aborted_after_the_grace_period(self):
        asked_at = self.limit_at + SECOND
        assert tick.handle_overdue_tasks(asked_at) == 1
        assert tick.handle_overdue_tasks(asked_at + GRACE) == 0
        self.revoke.assert_not_called()
        assert tick.handle_overdue_tasks(asked_at + GRACE + SECOND) == 1
        self.revoke.assert_called_once_with("celery-T1")
        assert statuses(self.job) == {"T1": S.ERROR, "T2": S.NOT_RUN}
        assert self.task().retries == 0
        attempt = BatchTaskRun.objects.get(pk=self.task_run.pk)
        assert attempt.status == S.ERROR
        assert attempt.error_message == (
            "Time limit of 1 h exceeded; the process was aborted after the 30 s grace period."
        )
        self.job.refresh_from_db()
        assert (self.job.status, self.job.canceled_by) == (S.ERROR, None)
        assert BatchJobRun.objects.get(job=self.job).status == S.ERROR

    def test_a_process_that_ends_on_its_own_before_the_tick_keeps_its_result(self):
        assert transitions.finish_task(
            task_id=self.t1.pk, attempt=1, outcome=Outcome(), at=self.limit_at + SECOND
        )
        assert tick.handle_overdue_tasks(self.limit_at + GRACE * 3) == 0
        self.revoke.assert_not_called()
        assert statuses(self.job)["T1"] == S.ENDED

    def test_a_cancel_after_the_time_limit_aborts_as_a_cancel(self):
        asked_at = self.limit_at + SECOND
        assert tick.handle_overdue_tasks(asked_at) == 1
        canceled = asked_at + dt.timedelta(seconds=10)
        with mock.patch.object(transitions, "now", return_value=canceled):
            assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        # The cancel gave it a fresh grace period: the time limit's has passed, this one not.
        assert tick.handle_overdue_tasks(asked_at + GRACE + SECOND) == 0
        assert tick.handle_overdue_tasks(canceled + GRACE + SECOND) == 1
        assert statuses(self.job)["T1"] == S.CANCELED
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED

    def test_the_abort_waits_when_the_state_changed_since_the_tick_read_it(self):
        # The tick read T1 as overdue; meanwhile a new attempt claimed it: nothing to abort.
        assert not transitions.abort_task(
            task_id=self.t1.pk, attempt=7, at=self.limit_at + GRACE * 9
        )
        # Not asked to stop yet: the time limit comes first.
        assert not transitions.abort_task(task_id=self.t1.pk, attempt=1, at=self.limit_at + SECOND)
        self.revoke.assert_not_called()

    def test_the_next_attempt_starts_with_a_fresh_deadline(self):
        assert tick.handle_overdue_tasks(self.limit_at + SECOND) == 1
        assert tick.handle_overdue_tasks(self.limit_at + GRACE * 2) == 1
        later = self.limit_at + dt.timedelta(hours=1)
        assert transitions.rerun_job(job_id=self.job.pk, by_id=None, only_failed=True, at=later)
        assert transitions.claim_task(task_id=self.t1.pk, server_id=None, hostname="", at=later)
        task = self.task()
        assert (task.timed_out, task.deadline_at) == (False, later + dt.timedelta(hours=1))

    def test_the_limit_is_between_one_second_and_a_week(self):
        task = self.task()
        for bad in (0, TIME_LIMIT_MAX_SECONDS + 1):
            task.time_limit = bad
            with self.assertRaises(ValidationError):
                task.full_clean()
        with self.assertRaises(IntegrityError):
            BatchTask.objects.filter(pk=task.pk).update(time_limit=0)


class TimeLimitTextTestCase(SimpleTestCase):
    def test_it_says_the_limit_in_its_units(self):
        assert durations.whole(3) == "3 s"
        assert durations.whole(90) == "1 min 30 s"
        assert durations.whole(3600) == "1 h"
        assert durations.whole(5400) == "1 h 30 min"
        assert durations.whole(7 * 86400) == "7 d"
        assert durations.whole(0.5) == "0.5 s"

    @override_settings(BATCH_TASK_TIME_LIMIT_SECONDS=6 * 3600)
    def test_a_task_shows_its_own_limit_or_the_default(self):
        assert BatchTask(time_limit=120).time_limit_text() == "2 min"
        assert BatchTask().time_limit_text() == "6 h"
