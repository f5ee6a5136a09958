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
from django.test import SimpleTestCase, override_settings
from django.utils.timezone import now

from batchadmin.jobs.models import BatchLogEntry, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.processes import builtin, registry
from batchadmin.processes.registry import Context, ParameterError, UnknownProcess
from tests.base import BaseTestCase, drain, start, statuses

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
            "django.task": {"task": "tests.djangotasks.tasks.add", "args": [1, 2]},
        }  # fmt: skip
        refused = {}
        for process in registry.all_processes():
            stored = process.clean_parameters(examples.get(process.name, {}))
            try:
                process.kwargs_from(stored)
            except ParameterError as exc:
                refused[process.name] = exc.describe()
        assert refused == {}


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
