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


class ReportAccessTestCase(BusinessProcessTestCase):
    """Issue 13: a report holds only the jobs its run-as user sees; documents go only to
    allowed addresses; "latest" is the same job's report (issue 17)."""

    def report_as(self, user: Any, **parameters: Any) -> list[list[str]]:
        job = self.make_job(description="Reports", created_by=user)
        task = self.make_task(
            job, "R1", process="reports.task_history_csv", parameters={"days": 1, **parameters}
        )
        start(job)
        drain(job)
        task.refresh_from_db()
        assert task.status == S.ENDED
        (path,) = (self.media / "reports").glob(f"*-job{job.pk}-*")
        with path.open(newline="") as f:
            return list(csv.reader(f))

    def test_a_report_holds_only_the_jobs_its_run_as_user_sees(self):
        self.failed_job()  # alice's: dave gets a 404 on it
        mine = self.make_job(description="Dave's posting", created_by=self.dave)
        self.make_task(mine, "D1", process="demo.fail", parameters={"message": "No"})
        start(mine)
        drain(mine)
        rows = self.report_as(self.dave, errors_only=True)
        assert [r[1] for r in rows[1:]] == ["Dave's posting"]
        rows = self.report_as(self.alice, errors_only=True)
        assert sorted(r[1] for r in rows[1:]) == ["Dave's posting", "Posting"]

    def test_cells_that_would_start_a_formula_are_escaped(self):
        job = self.make_job(description='=HYPERLINK("http://evil.test","x")')
        self.make_task(
            job, "P1", process="demo.fail", description="+1", parameters={"message": "@SUM(A1)"}
        )
        start(job)
        drain(job)
        rows = self.report_as(self.alice, errors_only=True)
        (row,) = rows[1:]
        assert row[1] == '\'=HYPERLINK("http://evil.test","x")'
        assert row[3] == "'+1"
        assert row[9] == "DemoFailure: @SUM(A1)"  # starts with a letter: left alone

    def test_the_spreadsheet_escape(self):
        from batchadmin.lib import spreadsheet

        for text in ("=1+2", "+1", "-1", "@A1", "\t=1", "\r=1"):
            assert spreadsheet.cell(text) == "'" + text
        assert spreadsheet.row(["plain", 12, -3, None, ""]) == ["plain", 12, -3, None, ""]

    def mail_job(self, to: str, document: str = "latest", **job: Any) -> BatchTask:
        job_row = self.make_job(**job)
        return self.make_task(
            job_row,
            "M1",
            process="mail.send_document",
            parameters={"to": to, "subject": "s", "document": document},
        )

    @override_settings(BATCH_MAIL_ALLOWED_DOMAINS=["corp.test"])
    def test_mail_goes_only_to_users_and_allowed_domains(self):
        process = registry.get("mail.send_document")
        ok = {"to": "Alice@Example.org, cfo@corp.test", "subject": "s", "document": "a.txt"}
        assert process.clean_parameters(ok)["to"] == "Alice@Example.org, cfo@corp.test"
        bad = ok | {"to": "alice@example.org, thief@evil.test, x@sub.corp.test"}
        with pytest.raises(ParameterError) as excinfo:
            process.clean_parameters(bad)
        assert excinfo.value.errors == {
            "to": [
                "thief@evil.test, x@sub.corp.test: not a user of this system nor in a domain "
                "that BATCH_MAIL_ALLOWED_DOMAINS allows."
            ]
        }

    @override_settings(BATCH_MAIL_ALLOWED_DOMAINS=[])
    def test_a_stored_address_no_longer_allowed_fails_at_run_time(self):
        (self.media / "a.txt").write_text("A")
        task = self.mail_job("finance@example.com", "a.txt")  # allowed when it was saved
        start(task.job)
        drain(task.job)
        error = BatchTaskRun.objects.get(task=task).error_message
        assert "finance@example.com: not a user of this system" in error
        assert mail.outbox == []

    def test_latest_is_the_newest_report_of_the_same_job(self):
        other = self.make_job(description="Another job's report")
        self.make_task(other, "R1", process="reports.task_history_csv", parameters={"days": 1})
        start(other)
        drain(other)
        task = self.mail_job("finance@example.com")
        start(task.job)
        drain(task.job)
        assert BatchTaskRun.objects.get(task=task).error_message == (
            f"FileNotFoundError: Job {task.job_id} has written no report yet."
        )
        assert mail.outbox == []

    def test_a_batch_user_may_not_mail_the_report_of_a_job_they_cannot_see(self):
        self.report_as(self.alice)
        (path,) = (self.media / "reports").iterdir()
        task = self.mail_job("dave@example.org", f"reports/{path.name}", created_by=self.dave)
        start(task.job)
        drain(task.job)
        error = BatchTaskRun.objects.get(task=task).error_message
        assert error.startswith(f"PermissionError: reports/{path.name}: a report of job")
        assert error.endswith("which dave may not see.")
        assert mail.outbox == []
        task = self.mail_job("dave@example.org", f"reports/{path.name}", created_by=self.alice)
        start(task.job)
        drain(task.job)
        assert len(mail.outbox) == 1
