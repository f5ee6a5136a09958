"""Running one claimed attempt: the process context, log capture, lease renewal, and living
through database trouble (engine/runner.py)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import SimpleTestCase, override_settings

from batchadmin.engine import runner, transitions
from batchadmin.jobs.models import BatchLogEntry, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.lib import db
from batchadmin.processes import registry
from batchadmin.processes.registry import Context
from tests.base import BaseTestCase, drain, run, start, statuses

S = BatchStatus
INFO, ERROR = BatchLogEntry.Level.INFO, BatchLogEntry.Level.ERROR


class RunTaskTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.dict(registry._REGISTRY))
        self.job = self.make_job(run_as=self.bob)

    def run_one(self, **overrides: Any) -> tuple[BatchTask, BatchTaskRun]:
        task = self.make_task(self.job, "T1", **overrides)
        start(self.job)
        assert run(task)
        task.refresh_from_db()
        return task, BatchTaskRun.objects.filter(task=task).latest("attempt")

    def test_it_turns_log_lines_into_entries_of_the_attempt(self):
        task, task_run = self.run_one(process="demo.log", parameters={"lines": 5})
        assert task.status == S.ENDED
        entries = BatchLogEntry.objects.filter(task_run__task=task)
        assert list(entries.values_list("task_run", "level", "message")) == [
            (task_run.pk, INFO, f"Log line {n} of 5") for n in range(1, 6)
        ]

    def test_it_keeps_every_line_of_a_long_log(self):
        task, task_run = self.run_one(process="demo.log", parameters={"lines": 450})
        assert task_run.log_entries.count() == 450
        assert task_run.log_entries.values_list("message", flat=True).last() == (
            "Log line 450 of 450"
        )

    def test_it_records_the_error_and_traceback_of_a_failing_process(self):
        task, task_run = self.run_one(process="demo.fail", parameters={"message": "Ledger closed"})
        assert task.status == S.ERROR
        assert task_run.status == S.ERROR
        assert task_run.error_message == "DemoFailure: Ledger closed"
        assert task_run.traceback.startswith("Traceback (most recent call last):")
        assert "raise DemoFailure(message)" in task_run.traceback
        assert list(task_run.log_entries.values_list("level", "message")) == [
            (ERROR, "DemoFailure: Ledger closed")
        ]

    def test_it_never_lets_an_exception_out_of_run_task(self):
        @registry.register("test.crash", label="Crash", description="")
        def crash(ctx: Context) -> None:
            ctx.info("about to divide")
            print(1 / 0)

        task, task_run = self.run_one(process="test.crash")  # no exception here
        assert task.status == S.ERROR
        assert task_run.error_message == "ZeroDivisionError: division by zero"
        assert "1 / 0" in task_run.traceback
        assert list(task_run.log_entries.values_list("message", flat=True)) == [
            "about to divide",
            "ZeroDivisionError: division by zero",
        ]

    def test_it_fails_an_unknown_process_without_retrying(self):
        task, task_run = self.run_one(process="gone.away", max_retries=3)
        assert (task.status, task.retries) == (S.ERROR, 0)
        assert task_run.error_message == "UnknownProcess: Unknown batch process 'gone.away'."
        assert task_run.traceback == ""
        self.job.refresh_from_db()
        assert self.job.status == S.ERROR

    def test_it_fails_bad_stored_parameters_without_retrying(self):
        task, task_run = self.run_one(
            process="demo.sleep", parameters={"seconds": "soon"}, max_retries=3
        )
        assert (task.status, task.retries) == (S.ERROR, 0)
        assert task_run.error_message == "ParameterError: seconds: Enter a number."

    def test_it_retries_a_failing_process_with_a_log_per_attempt(self):
        task = self.make_task(
            self.job, "T1", process="demo.flaky", parameters={"failures": 1}, max_retries=1
        )
        start(self.job)
        with override_settings(BATCH_RETRY_BACKOFF_SECONDS=0):
            drain(self.job)
        logs = {
            r.attempt: list(r.log_entries.values_list("message", flat=True))
            for r in task.runs.all()
        }
        assert logs == {
            1: ["DemoFailure: Flaky failure on attempt 1 of 1 planned."],
            2: ["Succeeded on attempt 2."],
        }

    def test_it_gives_the_process_its_context(self):
        seen: dict[str, Any] = {}

        @registry.register("test.context", label="Context", description="")
        def context(ctx: Context) -> None:
            seen.update(
                job_id=ctx.job_id,
                task_id=ctx.task_id,
                task_key=ctx.task_key,
                attempt=ctx.attempt,
                user=ctx.user,
                company=ctx.company,
            )
            ctx.progress(100)

        task, _ = self.run_one(process="test.context")
        assert seen == {
            "job_id": self.job.pk,
            "task_id": task.pk,
            "task_key": "T1",
            "attempt": 1,
            "user": self.bob,  # the job's run-as user
            "company": self.usmf,  # the job's company: the task has none of its own
        }
        assert task.progress == 100

    def test_it_lets_a_process_stop_when_the_job_is_canceled(self):
        @registry.register("test.cancelable", label="Cancelable", description="")
        def cancelable(ctx: Context) -> None:
            assert not ctx.cancel_requested()
            # Someone cancels the job from the Change status dialog while this runs.
            assert transitions.cancel_job(job_id=ctx.job_id, by_id=None)
            if ctx.cancel_requested():
                ctx.warning("Stopping early.")

        task = self.make_task(self.job, "T1", process="test.cancelable")
        self.make_task(self.job, "T2")
        self.add_condition(self.make_task(self.job, "T3"), task)
        start(self.job)
        # cancel_requested() looks at the database at most every CANCEL_CHECK_SECONDS.
        with mock.patch.object(runner, "CANCEL_CHECK_SECONDS", 0):
            assert run(task)
        assert statuses(self.job) == {"T1": S.CANCELED, "T2": S.NOT_RUN, "T3": S.NOT_RUN}
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED
        assert list(
            BatchLogEntry.objects.filter(task_run__task=task).values_list("level", "message")
        ) == [(BatchLogEntry.Level.WARNING, "Stopping early.")]

    def test_it_runs_a_task_once_when_the_message_comes_twice(self):
        task = self.make_task(self.job, "T1", process="demo.log", parameters={"lines": 1})
        start(self.job)
        assert run(task)
        assert not run(task)
        assert BatchTaskRun.objects.filter(task=task).count() == 1
        assert BatchLogEntry.objects.count() == 1


class RunnerResilienceTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.job = self.make_job()
        self.task = self.make_task(self.job, "T1")
        start(self.job)
        # Closing the connection would end the test's transaction; sleeping would slow it down.
        self.enterContext(mock.patch.object(db, "connection"))
        self.sleep = self.enterContext(mock.patch("time.sleep"))

    def test_it_retries_settling_the_task_after_a_database_error(self):
        real = transitions.finish_task
        calls = []

        def finish_task(**kwargs):
            calls.append(kwargs["task_id"])
            if len(calls) == 1:
                raise OperationalError("server closed the connection unexpectedly")
            return real(**kwargs)

        with (
            mock.patch.object(transitions, "finish_task", side_effect=finish_task),
            self.assertLogs("batchadmin.engine.runner", "WARNING") as logs,
        ):
            assert run(self.task)
        assert calls == [self.task.pk, self.task.pk]
        assert f"Database error while finishing task {self.task.pk}" in logs.output[0]
        self.sleep.assert_called_once_with(1)
        self.task.refresh_from_db()
        assert self.task.status == S.ENDED

    def test_it_gives_up_when_the_database_stays_away(self):
        # The lease then runs out and the tick fails the attempt.
        error = OperationalError("the database system is shutting down")
        with (
            mock.patch.object(transitions, "finish_task", side_effect=error),
            self.assertLogs("batchadmin.engine.runner", "WARNING"),
            pytest.raises(OperationalError),
        ):
            run(self.task)
        assert [c.args for c in self.sleep.call_args_list] == [(1,), (2,), (4,), (8,)]
        self.task.refresh_from_db()
        assert self.task.status == S.EXECUTING


class LeaseKeeperTestCase(SimpleTestCase):
    def test_it_starts_one_renewal_thread_per_process(self):
        keeper = runner.LeaseKeeper()
        with mock.patch("threading.Thread") as thread:
            keeper.track(1)
            keeper.track(2)
            keeper.untrack(1)
            thread.assert_called_once()
            assert thread.call_args.kwargs["daemon"] is True
            thread.return_value.start.assert_called_once_with()
            assert keeper._tasks == {2}
            keeper._pid = -1  # as seen from a forked pool child
            keeper.track(3)
            assert thread.call_count == 2
