"""Cancel -> abort: a running task that ignores the cancel is killed after the grace period."""

from __future__ import annotations

import datetime as dt
from unittest import mock

from django.test import override_settings
from django.utils.timezone import now

from batchadmin.engine import dispatch, runner, tick, transitions
from batchadmin.engine.transitions import Outcome
from batchadmin.jobs.models import BatchJobRun, BatchStatus, BatchTaskRun
from tests.base import HOSTNAME, BaseTestCase, statuses

S = BatchStatus
GRACE = dt.timedelta(seconds=30)


@override_settings(BATCH_CANCEL_GRACE_SECONDS=30)
class AbortTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.revoke = self.enterContext(mock.patch.object(dispatch, "revoke", return_value=True))
        self.start = now().replace(microsecond=0)  # SQLite keeps milliseconds in the deadline
        self.job = self.make_job(scheduled_start=self.start)
        self.t1 = self.make_task(self.job, "T1", process="demo.hang")
        self.t2 = self.make_task(self.job, "T2")
        assert transitions.start_job(job_id=self.job.pk, at=self.start)
        task_run = transitions.claim_task(
            task_id=self.t1.pk,
            server_id=self.server.pk,
            hostname=HOSTNAME,
            at=self.start,
            celery_task_id="celery-id-1",
        )
        assert task_run is not None
        self.task_run = task_run

    def cancel(self, at: dt.datetime) -> None:
        with mock.patch.object(transitions, "now", return_value=at):
            assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)

    def test_the_claim_records_the_celery_task_id(self):
        run = BatchTaskRun.objects.get(pk=self.task_run.pk)
        assert run.celery_task_id == "celery-id-1"
        assert self.task_run.celery_task_id == "celery-id-1"

    def test_cancel_starts_the_grace_period(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        self.t1.refresh_from_db()
        assert (self.t1.status, self.t1.deadline_at) == (S.CANCELING, canceled + GRACE)

    def test_a_task_still_running_after_the_grace_period_is_aborted(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert tick.handle_overdue_tasks(canceled + GRACE) == 0  # not yet
        self.revoke.assert_not_called()

        assert tick.handle_overdue_tasks(canceled + GRACE + dt.timedelta(seconds=1)) == 1
        self.revoke.assert_called_once_with("celery-id-1")
        assert statuses(self.job) == {"T1": S.CANCELED, "T2": S.NOT_RUN}
        self.job.refresh_from_db()
        assert (self.job.status, self.job.canceled_by) == (S.CANCELED, self.alice)
        job_run = BatchJobRun.objects.get(job=self.job)
        assert (job_run.status, job_run.canceled_by) == (S.CANCELED, self.alice)
        attempt = BatchTaskRun.objects.get(pk=self.task_run.pk)
        assert attempt.status == S.CANCELED
        assert attempt.error_message == (
            "Aborted after the 30 s grace period: the process did not stop when the job was "
            "canceled."
        )

    def test_a_task_that_stops_within_the_grace_period_is_not_aborted(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert transitions.finish_task(
            task_id=self.t1.pk, attempt=1, outcome=Outcome(canceled=True), at=canceled
        )
        assert tick.handle_overdue_tasks(canceled + GRACE * 2) == 0
        self.revoke.assert_not_called()
        attempt = BatchTaskRun.objects.get(pk=self.task_run.pk)
        assert (attempt.status, attempt.error_message) == (S.CANCELED, "")

    def test_the_process_finishing_during_the_abort_is_a_no_op_for_the_later_one(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        later = canceled + GRACE * 2

        def finishes_meanwhile(celery_id: str) -> bool:
            # The process ends on its own between the tick's check and the abort.
            assert transitions.finish_task(
                task_id=self.t1.pk, attempt=1, outcome=Outcome(canceled=True), at=later
            )
            return True

        self.revoke.side_effect = finishes_meanwhile
        assert tick.handle_overdue_tasks(later) == 0
        self.revoke.assert_called_once_with("celery-id-1")
        attempt = BatchTaskRun.objects.get(pk=self.task_run.pk)
        assert (attempt.status, attempt.error_message) == (S.CANCELED, "")
        # ...and a result from the killed process arriving after the abort is discarded.
        assert not transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=Outcome())

    def test_a_late_result_after_the_abort_is_discarded(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert tick.handle_overdue_tasks(canceled + GRACE * 2) == 1
        assert not transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=Outcome())
        assert statuses(self.job)["T1"] == S.CANCELED

    def test_a_redelivered_message_of_the_aborted_attempt_claims_nothing(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert tick.handle_overdue_tasks(canceled + GRACE * 2) == 1
        with mock.patch.object(runner, "LEASES"):
            assert not runner.run_task(
                task_id=self.t1.pk, server_id=None, hostname=HOSTNAME, celery_task_id="celery-id-1"
            )
        assert BatchTaskRun.objects.filter(task=self.t1).count() == 1

    def test_an_attempt_without_a_celery_id_is_settled_without_a_revoke(self):
        BatchTaskRun.objects.filter(pk=self.task_run.pk).update(celery_task_id="")
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert tick.handle_overdue_tasks(canceled + GRACE * 2) == 1
        self.revoke.assert_not_called()
        assert statuses(self.job)["T1"] == S.CANCELED

    def test_a_process_still_running_after_the_abort_sees_it_must_stop(self):
        canceled = self.start + dt.timedelta(minutes=5)
        self.cancel(canceled)
        assert tick.handle_overdue_tasks(canceled + GRACE * 2) == 1
        ctx = runner.ProcessContext(self.task_run)
        assert ctx.cancel_requested()
        assert not ctx.timed_out

    def test_the_overdue_query_uses_the_deadline_index(self):
        # One query for the tick when nothing is overdue, whatever the number of tasks running.
        with self.assertNumQueries(1):
            assert tick.handle_overdue_tasks(self.start + dt.timedelta(minutes=1)) == 0


class RevokeTestCase(BaseTestCase):
    def test_it_kills_the_worker_process_with_sigkill(self):
        with mock.patch("batchadmin.celery.app.control.revoke") as revoke:
            assert dispatch.revoke("abc")
        revoke.assert_called_once_with("abc", terminate=True, signal="SIGKILL")

    def test_a_broker_error_is_logged_not_raised(self):
        with (
            mock.patch("batchadmin.celery.app.control.revoke", side_effect=OSError("down")),
            self.assertLogs("batchadmin.engine.dispatch", "ERROR"),
        ):
            assert not dispatch.revoke("abc")
