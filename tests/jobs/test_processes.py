from __future__ import annotations

import csv
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django import forms
from django.core import mail
from django.db import OperationalError
from django.test import SimpleTestCase, override_settings
from django.utils.timezone import now

from batchadmin.engine import runner, transitions
from batchadmin.jobs.models import BatchLogEntry, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.processes import builtin, registry
from batchadmin.processes.registry import Context, ParameterError, UnknownProcess
from tests.base import BaseTestCase, drain, run, start, statuses

S = BatchStatus
INFO, ERROR = BatchLogEntry.Level.INFO, BatchLogEntry.Level.ERROR


class DateForm(forms.Form):
    as_of = forms.DateField()
    limit = forms.IntegerField(required=False, min_value=1)


class RegistryTestCase(SimpleTestCase):
    def setUp(self):
        super().setUp()
        # Processes registered by a test disappear with it.
        self.enterContext(mock.patch.dict(registry._REGISTRY))

    def test_it_refuses_an_unknown_process(self):
        with pytest.raises(UnknownProcess) as excinfo:
            registry.get("demo.nope")
        assert str(excinfo.value) == "Unknown batch process 'demo.nope'."

    def test_it_lists_the_built_in_processes_by_name(self):
        names = [p.name for p in registry.all_processes()]
        assert names == sorted(names)
        assert {
            "demo.noop",
            "demo.sleep",
            "demo.fail",
            "demo.flaky",
            "demo.log",
            "reports.task_history_csv",
            "mail.send_document",
        } <= set(names)

    def test_it_validates_parameters_with_the_process_form(self):
        sleep = registry.get("demo.sleep")
        assert sleep.clean_parameters({"seconds": "2.5"}) == {"seconds": 2.5}
        with pytest.raises(ParameterError) as excinfo:
            sleep.clean_parameters({"seconds": -1})
        assert excinfo.value.errors == {
            "seconds": ["Ensure this value is greater than or equal to 0."]
        }
        assert excinfo.value.describe() == (
            "seconds: Ensure this value is greater than or equal to 0."
        )

    def test_it_refuses_unknown_parameter_keys(self):
        with pytest.raises(ParameterError) as excinfo:
            registry.get("demo.sleep").clean_parameters({"seconds": 1, "secs": 1, "extra": 2})
        assert excinfo.value.describe() == "Unknown parameter(s): extra, secs."

    def test_it_refuses_parameters_that_are_not_an_object(self):
        with pytest.raises(ParameterError, match="Parameters must be a JSON object."):
            registry.get("demo.noop").clean_parameters(["seconds", 1])  # type: ignore[arg-type]

    def test_it_takes_no_parameters_by_default(self):
        noop = registry.get("demo.noop")
        assert noop.clean_parameters({}) == {}
        with pytest.raises(ParameterError, match="Unknown parameter"):
            noop.clean_parameters({"x": 1})

    def test_it_stores_parameters_as_json_and_gives_the_process_python_values(self):
        @registry.register("test.dated", label="Dated", description="", form=DateForm)
        def dated(ctx: Context, *, as_of: dt.date, limit: int | None) -> None:
            pass

        process = registry.get("test.dated")
        stored = process.clean_parameters({"as_of": "2025-03-01"})
        assert stored == {"as_of": "2025-03-01", "limit": None}
        assert process.kwargs_from(stored) == {"as_of": dt.date(2025, 3, 1), "limit": None}

    def test_it_refuses_two_processes_with_one_name(self):
        def first(ctx: Context) -> None:
            pass

        def second(ctx: Context) -> None:
            pass

        registry.register("test.twice", label="Twice", description="")(first)
        registry.register("test.twice", label="Twice", description="")(first)  # re-import: fine
        with pytest.raises(ValueError, match="registered twice"):
            registry.register("test.twice", label="Twice", description="")(second)
        assert registry.get("test.twice").func is first

    def test_it_accepts_at_run_time_what_it_stored_for_every_process(self):
        examples: dict[str, dict[str, Any]] = {
            "demo.sleep": {"seconds": 1},
            "demo.fail": {"message": "no"},
            "demo.flaky": {"failures": 1},
            "demo.log": {"lines": 3},
            "reports.task_history_csv": {"days": 2, "errors_only": True},
            "mail.send_document": {"to": "a@example.com, b@example.com", "subject": "s", "document": "latest"},
        }  # fmt: skip
        refused = {}
        for process in registry.all_processes():
            stored = process.clean_parameters(examples.get(process.name, {}))
            try:
                process.kwargs_from(stored)
            except ParameterError as exc:
                refused[process.name] = exc.describe()
        assert refused == {}


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
        self.enterContext(mock.patch.object(runner, "connection"))
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


class DemoSleepTestCase(SimpleTestCase):
    def test_it_stops_early_when_the_job_is_canceled(self):
        ctx = mock.Mock()
        ctx.cancel_requested.return_value = True
        with mock.patch("time.sleep") as sleep:
            builtin.sleep(ctx, seconds=3600)
        sleep.assert_called_once_with(0.2)
        ctx.warning.assert_called_once_with("Cancel requested; stopping early.")

    def test_it_does_not_sleep_for_zero_seconds(self):
        ctx = mock.Mock()
        with mock.patch("time.sleep") as sleep:
            builtin.sleep(ctx, seconds=0)
        sleep.assert_not_called()


class BusinessProcessTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        media = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, media)
        self.media = Path(media)
        self.enterContext(override_settings(MEDIA_ROOT=media))

    def failed_job(self) -> BatchTask:
        """A job whose only task failed: one Error attempt in the history."""
        job = self.make_job(description="Posting")
        task = self.make_task(
            job, "P1", process="demo.fail", parameters={"message": "Period closed\ndetails"}
        )
        start(job)
        drain(job)
        return task

    def report(self, **parameters: Any) -> tuple[BatchTask, list[list[str]]]:
        job = self.make_job(description="Reports")
        task = self.make_task(job, "R1", process="reports.task_history_csv", parameters=parameters)
        start(job)
        drain(job)
        task.refresh_from_db()
        assert task.status == S.ENDED
        (path,) = (self.media / "reports").iterdir()
        with path.open(newline="") as f:
            return task, list(csv.reader(f))

    def test_it_writes_the_task_history_to_a_csv_file(self):
        failed = self.failed_job()
        task, rows = self.report(days=1, errors_only=True)
        assert rows[0] == [
            "job",
            "job description",
            "task",
            "task description",
            "attempt",
            "status",
            "server",
            "started",
            "ended",
            "error",
        ]
        assert len(rows) == 2
        job_id, description, key, _, attempt, status, server, started, ended, error = rows[1]
        assert (job_id, description, key) == (str(failed.job_id), "Posting", "P1")
        assert (attempt, status, server) == ("1", "Error", "aos1")
        assert dt.datetime.fromisoformat(started) <= dt.datetime.fromisoformat(ended)
        assert error == "DemoFailure: Period closed"  # the first line only
        (line,) = BatchLogEntry.objects.filter(task_run__task=task)
        assert line.message.startswith("Wrote 1 rows to reports/task-history-")

    def test_it_reports_only_the_last_days(self):
        failed = self.failed_job()
        BatchTaskRun.objects.filter(task=failed).update(started_at=now() - dt.timedelta(days=3))
        _, rows = self.report(days=2, errors_only=True)
        assert rows[1:] == []

    def test_it_reports_every_attempt_unless_told_errors_only(self):
        self.failed_job()
        _, rows = self.report(days=1)
        assert [(r[2], r[5]) for r in rows[1:]] == [("P1", "Error"), ("R1", "Executing")]

    def test_it_mails_a_document_as_an_attachment(self):
        (self.media / "invoices").mkdir()
        (self.media / "invoices" / "march.txt").write_text("Invoice 42")
        job = self.make_job()
        task = self.make_task(
            job,
            "M1",
            process="mail.send_document",
            parameters={
                "to": "finance@example.com, cfo@example.com",
                "subject": "March invoices",
                "document": "invoices/march.txt",
            },
        )
        start(job)
        drain(job)
        task.refresh_from_db()
        assert task.status == S.ENDED
        (message,) = mail.outbox
        assert message.subject == "March invoices"
        assert message.to == ["finance@example.com", "cfo@example.com"]
        assert message.body == "Attached: march.txt"
        assert message.attachments == [("march.txt", "Invoice 42", "text/plain")]

    def test_it_mails_the_newest_report(self):
        job = self.make_job()
        report = self.make_task(
            job, "R1", process="reports.task_history_csv", parameters={"days": 1}
        )
        mail_task = self.make_task(
            job,
            "M1",
            process="mail.send_document",
            parameters={
                "to": "finance@example.com",
                "subject": "History",
                "document": "latest",
                "body": "Here.",
            },
        )
        self.add_condition(mail_task, report)
        start(job)
        drain(job)
        assert statuses(job) == {"R1": S.ENDED, "M1": S.ENDED}
        (message,) = mail.outbox
        assert message.body == "Here."
        ((name, content, mimetype),) = message.attachments
        assert name.startswith("task-history-") and name.endswith(".csv")
        assert content.startswith("job,job description,task")
        assert mimetype == "text/csv"

    def test_it_fails_when_the_document_is_missing(self):
        job = self.make_job()
        task = self.make_task(
            job,
            "M1",
            process="mail.send_document",
            parameters={"to": "finance@example.com", "subject": "s", "document": "none.pdf"},
        )
        start(job)
        drain(job)
        assert BatchTaskRun.objects.get(task=task).error_message == (
            "FileNotFoundError: No document at 'none.pdf' in the media folder."
        )
        assert mail.outbox == []

    def test_it_refuses_a_document_outside_the_media_folder(self):
        process = registry.get("mail.send_document")
        for document in ("../secrets.txt", "/etc/passwd"):
            with pytest.raises(ParameterError, match="Give a path inside the media folder."):
                process.clean_parameters(
                    {"to": "a@example.com", "subject": "s", "document": document}
                )

    def test_it_mails_with_parameters_stored_as_import_stores_them(self):
        (self.media / "a.txt").write_text("A")
        parameters = registry.get("mail.send_document").clean_parameters(
            {"to": "finance@example.com", "subject": "A", "document": "a.txt"}
        )
        job = self.make_job()
        task = self.make_task(job, "M1", process="mail.send_document", parameters=parameters)
        start(job)
        drain(job)
        task.refresh_from_db()
        assert task.status == S.ENDED, BatchTaskRun.objects.get(task=task).error_message
        assert len(mail.outbox) == 1
