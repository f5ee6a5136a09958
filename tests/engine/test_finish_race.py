"""The last tasks of a job finishing at the same moment, each on its own connection.

A successful finish commits without the job's lock (sql.FINISH_ENDED) and then, in a new
snapshot, releases its dependents (sql.WAITING_DEPENDENTS_OF_ONE, still without the lock) or
asks whether its job has an open task left (sql.JOB_OPEN). These tests hold every finisher between
the two, so that each looks after every finish committed: the job must then settle exactly
once, and a dependent of two parents be released, and sent, exactly once.
"""

from __future__ import annotations

import threading
import unittest
from typing import Any
from unittest import mock

from django.contrib.auth.models import User
from django.db import connection
from django.test import TransactionTestCase
from django.utils.timezone import now

from batchadmin.engine import priority, sql, transitions
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    StatusChange,
)
from batchadmin.servers.models import BatchGroup

S = BatchStatus


@unittest.skipUnless(connection.vendor == "postgresql", "row locks need PostgreSQL")
class LastFinishesAtOnceTestCase(TransactionTestCase):
    def setUp(self) -> None:
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.send = self.enterContext(mock.patch("batchadmin.engine.dispatch.send", return_value=0))
        self.user = User.objects.create_user("alice")
        self.group = BatchGroup.objects.create(code="Nightly")

    def job(self, keys: list[str]) -> tuple[BatchJob, list[BatchTask]]:
        job = BatchJob.objects.create(
            description="Race", status=S.WAITING, scheduled_start=now(), created_by=self.user
        )
        tasks = [
            BatchTask.objects.create(job=job, key=k, process="demo.noop", group=self.group)
            for k in keys
        ]
        return job, tasks

    def finish_together(self, tasks: list[BatchTask], *, hold_before: str) -> None:
        """Claim every task, then finish them in threads that all wait, after their finish
        committed, before the statement ``hold_before`` until every other has got there."""
        attempts = {}
        for task in tasks:
            claim = transitions.claim_task(task_id=task.pk, server_id=None, hostname="aos@x")
            assert claim is not None
            attempts[task.pk] = claim.attempt
        barrier = threading.Barrier(len(tasks), timeout=20)
        fetchone, fetchall = sql.fetchone, sql.fetchall
        errors: list[BaseException] = []
        reached: list[int] = []

        def held_one(query: str, params: Any) -> Any:
            if query == hold_before:
                reached.append(1)
                barrier.wait()
            return fetchone(query, params)

        def held_all(query: str, params: Any) -> Any:
            if query == hold_before:
                reached.append(1)
                barrier.wait()
            return fetchall(query, params)

        def finish(task_id: int) -> None:
            try:
                assert transitions.finish_task(
                    task_id=task_id, attempt=attempts[task_id], outcome=transitions.Outcome()
                )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                barrier.abort()
            finally:
                connection.close()

        with (
            mock.patch.object(sql, "fetchone", held_one),
            mock.patch.object(sql, "fetchall", held_all),
        ):
            threads = [threading.Thread(target=finish, args=(t.pk,)) for t in tasks]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert not errors, errors
        assert len(reached) == len(tasks)  # every finisher was held there

    def test_the_job_settles_once_when_its_last_two_tasks_end_together(self):
        job, tasks = self.job(["A", "B", "C"])
        assert transitions.start_job(job_id=job.pk)
        self.finish_together(tasks, hold_before=sql.JOB_OPEN)
        job.refresh_from_db()
        assert job.status == S.ENDED
        assert StatusChange.objects.filter(job=job, new_status=S.ENDED).count() == 1
        run = BatchJobRun.objects.get(job=job)
        assert run.status == S.ENDED
        assert BatchTaskRun.objects.filter(job_run=run, status=S.ENDED).count() == 3

    def test_a_dependent_of_two_parents_ending_together_is_released_once(self):
        job, (a, b, child) = self.job(["A", "B", "C"])
        for parent in (a, b):
            BatchTaskCondition.objects.create(task=child, depends_on=parent)
        assert transitions.start_job(job_id=job.pk)
        self.send.reset_mock()
        # Both parents know they have a waiting dependent, and both read its conditions after
        # both ends committed (no lock): both decide it is Ready, and the one whose move comes
        # second moves nothing and sends nothing.
        self.finish_together([a, b], hold_before=sql.WAITING_DEPENDENTS_OF_ONE)
        child.refresh_from_db()
        assert child.status == S.READY
        sent = [t[0] for call in self.send.call_args_list for t in call.args[0]]
        assert sent == [child.pk]
