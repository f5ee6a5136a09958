"""The settle of a job (its last task's finish) stays a few statements: it runs once per job,
under the job's lock (issue 16)."""

from __future__ import annotations

import datetime as dt
import unittest

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.alerts.models import AlertEvent
from batchadmin.engine import transitions
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    StatusChange,
)
from tests.base import HOSTNAME, BaseTestCase, start

S = BatchStatus


@unittest.skipUnless(connection.vendor == "postgresql", "SQLite settles through the ORM")
class SettleStatementsTestCase(BaseTestCase):
    def finish_last_task(self, job: BatchJob) -> list[str]:
        """Claim and finish the job's one task; the finish's statements (savepoints aside)."""
        task = job.tasks.get()
        claim = transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)
        assert claim is not None
        with CaptureQueriesContext(connection) as queries:
            assert transitions.finish_task(
                task_id=task.pk, attempt=claim.attempt, outcome=transitions.Outcome()
            )
        return [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]

    def test_a_job_that_ends_well_settles_in_three_statements_after_its_finish(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        statements = self.finish_last_task(job)
        # The task's finish, "any task open?" after it, the job lock, then the settle (the job,
        # its run, the status change and the unattempted tasks' history), its alert event, the
        # django.tasks lookup.
        assert len(statements) == 6, "\n".join(statements)
        job.refresh_from_db()
        assert job.status == S.ENDED
        run = BatchJobRun.objects.get(job=job)
        assert (run.status, run.ended_at) == (S.ENDED, job.ended_at)
        change = StatusChange.objects.filter(job=job).latest("pk")
        assert (change.old_status, change.new_status, change.job_run_id) == (
            S.EXECUTING,
            S.ENDED,
            run.pk,
        )
        assert AlertEvent.objects.filter(job=job, job_run=run, kind="ended").exists()
        assert BatchTaskRun.objects.filter(job_run=run).count() == 1

    def test_a_recurring_job_goes_back_to_waiting_in_one_more_statement(self):
        start_at = now().replace(microsecond=0) - dt.timedelta(minutes=1)
        job = self.make_job(scheduled_start=start_at)
        self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=start_at.date(), start_time=start_at.time(), time_zone="UTC"
        )
        start(job)
        statements = self.finish_last_task(job)
        # Those above, and the move back to Waiting (the job, its tasks, the status change).
        assert len(statements) == 7, "\n".join(statements)
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert job.scheduled_start == start_at + dt.timedelta(days=1)
        task = BatchTask.objects.get(job=job)
        assert (task.status, task.attempt, task.ended_at) == (S.WAITING, 0, None)
        changes = list(StatusChange.objects.filter(job=job).order_by("pk"))
        assert [(c.old_status, c.new_status) for c in changes][-2:] == [
            (S.EXECUTING, S.ENDED),
            (S.ENDED, S.WAITING),
        ]
        assert changes[-1].reason.startswith("Recurrence: next run ")
