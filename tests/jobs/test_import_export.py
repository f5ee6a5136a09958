"""`manage.py batch ...`: import, export, show, status, wait and servers."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db.models import QuerySet

from batchadmin.engine import transitions
from batchadmin.jobs import io
from batchadmin.jobs.models import (
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    SaveHistory,
    StatusChange,
)
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
    Priority,
    ReservedCapacity,
)
from tests.base import BaseTestCase, drain, start

S = BatchStatus
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def job_data(**overrides: Any) -> dict[str, Any]:
    """A good import file: T2 runs after T1 ended or failed."""
    defaults: dict[str, Any] = {
        "description": "Month-end close",
        "scheduled_start": "2025-03-01T09:00:00+00:00",
        "priority": "high",
        "run_as": "bob",
        "tasks": [
            {
                "key": "T1",
                "description": "Post journals",
                "process": "demo.sleep",
                "parameters": {"seconds": 1},
                "company": "USMF",
                "max_retries": 2,
            },
            {
                "key": "T2",
                "process": "demo.noop",
                "ignore_failure": True,
                "condition_type": "any",
                "conditions": [{"task": "T1", "status": "ended_or_error"}],
            },
        ],
    }
    return dict(defaults, **overrides)


def task_data(key: str, **overrides: Any) -> dict[str, Any]:
    return dict({"key": key, "process": "demo.noop"}, **overrides)


class CommandTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.folder = Path(folder)
        # Jobs the database held before the test (migrations seed the history clean-up job).
        self.seeded = list(BatchJob.objects.values_list("pk", flat=True))

    def new_jobs(self) -> QuerySet[BatchJob]:
        return BatchJob.objects.exclude(pk__in=self.seeded)

    def write(self, data: Any, name: str = "job.json") -> str:
        path = self.folder / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    def batch(self, *args: Any) -> str:
        out = StringIO()
        call_command("batch", *[str(a) for a in args], stdout=out, stderr=StringIO())
        return out.getvalue()


class ImportTestCase(CommandTestCase):
    def test_it_imports_a_job_and_prints_its_id(self):
        out = self.batch("import", self.write(job_data()), "--user", "alice")
        job = self.new_jobs().get()
        assert out == f"{job.pk}\n"
        assert job.description == "Month-end close"
        assert job.status == S.WAITING
        assert job.scheduled_start == NINE
        assert job.priority == BatchJob.Priority.HIGH
        assert job.run_as == self.bob
        assert job.created_by == self.alice
        t1, t2 = job.tasks.order_by("position")
        assert (t1.key, t1.description, t1.process) == ("T1", "Post journals", "demo.sleep")
        assert t1.parameters == {"seconds": 1.0}
        assert t1.company == self.usmf
        assert t1.group == BatchGroup.objects.default()
        assert (t1.max_retries, t1.ignore_failure) == (2, False)
        assert (t2.key, t2.description) == ("T2", "T2")  # the key when no description
        assert t2.company is None
        assert (t2.ignore_failure, t2.condition_type) == (True, "any")
        condition = BatchTaskCondition.objects.get()
        assert (condition.task, condition.depends_on) == (t2, t1)
        assert condition.expected_status == "ended_or_error"

    def test_it_imports_from_standard_input(self):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", StringIO(json.dumps(job_data(status="withhold"))))
            out = self.batch("import", "-")
        job = self.new_jobs().get()
        assert out == f"{job.pk}\n"
        assert job.status == S.WITHHOLD
        assert job.created_by is None

    def test_it_imports_a_bundle_of_groups_and_jobs(self):
        data = {
            "groups": [
                {"code": "nightly", "description": "Night runs", "servers": ["aos2", "aos3"]}
            ],
            "jobs": [
                job_data(description="First", tasks=[task_data("A", group="nightly")]),
                job_data(description="Second", tasks=[task_data("B")]),
            ],
        }
        out = self.batch("import", self.write(data))
        first, second = (
            BatchJob.objects.get(description="First"),
            BatchJob.objects.get(description="Second"),
        )
        assert out == f"{first.pk}\n{second.pk}\n"  # in file order
        nightly = BatchGroup.objects.get(code="nightly")
        assert nightly.description == "Night runs"
        assert nightly.queue_name == "batch.nightly"
        assert sorted(nightly.servers.values_list("name", flat=True)) == ["aos2", "aos3"]
        # D365: a server given a named group serves the default group only if told so.
        assert list(BatchServer.objects.get(name="aos2").groups.all()) == [nightly]
        assert first.tasks.get().group == nightly
        assert second.tasks.get().group.code == "default"

    def test_it_imports_a_groups_scheduling_controls_and_leaves_out_what_it_omits(self):
        group = {"code": "nightly", "priority": "high", "max_concurrency": 2}
        self.batch("import", self.write({"groups": [{**group, "reserved_capacity": 25}]}))
        nightly = BatchGroup.objects.get(code="nightly")
        assert (nightly.default_priority, nightly.max_concurrency) == (Priority.HIGH, 2)
        assert nightly.reserved_capacity == ReservedCapacity.HIGH
        # A later file that names only the pause changes only that.
        self.batch("import", self.write({"groups": [{"code": "nightly", "max_concurrency": -1}]}))
        nightly.refresh_from_db()
        assert nightly.is_paused()
        assert (nightly.default_priority, nightly.reserved_capacity) == (Priority.HIGH, 25)

    def test_it_imports_a_groups_maximum_running_tasks(self):
        self.batch("import", self.write({"groups": [{"code": "Integration", "max_tasks": 4}]}))
        assert BatchGroup.objects.get(code="Integration").max_tasks == 4
        # Left out: kept as it is.
        self.batch("import", self.write({"groups": [{"code": "Integration", "priority": "low"}]}))
        assert BatchGroup.objects.get(code="Integration").max_tasks == 4

    def test_it_defaults_what_the_file_leaves_out(self):
        self.batch("import", self.write({"description": "Bare", "tasks": [task_data("T1")]}))
        job = self.new_jobs().get()
        assert (job.status, job.priority, job.run_as) == (S.WAITING, BatchJob.Priority.NORMAL, None)
        assert (job.save_history, job.critical) == (SaveHistory.ALWAYS, False)
        task = job.tasks.get()
        assert task.parameters == {}
        assert (task.max_retries, task.ignore_failure, task.condition_type) == (0, False, "all")


class ImportRefusalTestCase(CommandTestCase):
    """A bad file creates nothing and names the culprit."""

    def assert_refused(self, data: Any, message: str) -> None:
        before = (BatchGroup.objects.count(), BatchServer.objects.count())
        with pytest.raises(CommandError) as excinfo:
            self.batch("import", self.write(data))
        assert str(excinfo.value).startswith("Nothing was imported. ")
        assert message in str(excinfo.value)
        assert not self.new_jobs().exists()
        assert not BatchTask.objects.exclude(job_id__in=self.seeded).exists()
        assert (BatchGroup.objects.count(), BatchServer.objects.count()) == before

    def test_it_refuses_an_unknown_process(self):
        data = job_data(tasks=[task_data("T1", process="demo.nope")])
        self.assert_refused(data, "task 'T1': unknown process 'demo.nope'.")

    def test_it_refuses_an_unknown_group(self):
        data = job_data(tasks=[task_data("T1", group="ghost")])
        self.assert_refused(data, "task 'T1': unknown batch group 'ghost'.")

    def test_it_refuses_a_condition_on_an_unknown_task(self):
        data = job_data(tasks=[task_data("T1"), task_data("T2", conditions=[{"task": "T9"}])])
        self.assert_refused(data, "task 'T2': condition on unknown task 'T9'.")

    def test_it_refuses_invalid_parameters(self):
        data = job_data(tasks=[task_data("T1", process="demo.sleep", parameters={"seconds": -1})])
        self.assert_refused(
            data,
            "task 'T1': invalid parameters for demo.sleep: "
            "seconds: Ensure this value is greater than or equal to 0.",
        )

    def test_it_refuses_unknown_parameters(self):
        data = job_data(tasks=[task_data("T1", process="demo.sleep", parameters={"secs": 1})])
        self.assert_refused(
            data, "task 'T1': invalid parameters for demo.sleep: Unknown parameter(s): secs."
        )

    def test_it_refuses_a_parameter_cleared_to_nothing(self):
        data = job_data(tasks=[task_data("T1", process="demo.sleep", parameters={"seconds": ""})])
        self.assert_refused(data, "seconds: This field is required.")

    def test_it_fills_left_out_parameters_with_the_form_initial(self):
        [job] = io.import_data(job_data(tasks=[task_data("T1", process="demo.sleep")]))
        assert job.tasks.get().parameters == {"seconds": 5.0}

    def test_it_refuses_a_cycle(self):
        data = job_data(
            tasks=[
                task_data("T1", conditions=[{"task": "T2"}]),
                task_data("T2", conditions=[{"task": "T1"}]),
            ]
        )
        self.assert_refused(data, "the conditions form a cycle: 'T1' -> 'T2' -> 'T1'.")

    def test_it_refuses_a_longer_cycle_behind_a_root(self):
        data = job_data(
            tasks=[
                task_data("T0"),
                task_data("T1", conditions=[{"task": "T0"}, {"task": "T3"}]),
                task_data("T2", conditions=[{"task": "T1"}]),
                task_data("T3", conditions=[{"task": "T2"}]),
            ]
        )
        self.assert_refused(data, "the conditions form a cycle: 'T1' -> 'T2' -> 'T3' -> 'T1'.")

    def test_it_refuses_more_than_five_retries(self):
        data = job_data(tasks=[task_data("T1", max_retries=6)])
        self.assert_refused(
            data, "task 'T1': max_retries must be a whole number from 0 to 5, got 6."
        )

    def test_it_refuses_a_condition_on_the_task_itself(self):
        data = job_data(tasks=[task_data("T1", conditions=[{"task": "T1"}])])
        self.assert_refused(data, "task 'T1': a task can't have a condition on itself.")

    def test_it_refuses_two_conditions_on_the_same_parent(self):
        twice = [{"task": "T1"}, {"task": "T1", "status": "error"}]
        data = job_data(tasks=[task_data("T1"), task_data("T2", conditions=twice)])
        self.assert_refused(data, "task 'T2': two conditions on task 'T1'.")

    def test_it_refuses_a_duplicate_task_key(self):
        data = job_data(tasks=[task_data("T1"), task_data("T1")])
        self.assert_refused(data, "task key 'T1' is used twice.")

    def test_it_refuses_an_unknown_user(self):
        self.assert_refused(job_data(run_as="nobody"), "unknown run_as user 'nobody'.")

    def test_it_refuses_an_unknown_company(self):
        data = job_data(tasks=[task_data("T1", company="DEMF")])
        self.assert_refused(data, "task 'T1': unknown company 'DEMF'.")

    def test_it_refuses_an_unknown_key(self):
        self.assert_refused(job_data(recurrance="daily"), "unknown key(s) 'recurrance'.")

    def test_it_refuses_a_status_an_import_cannot_set(self):
        self.assert_refused(job_data(status="executing"), "status 'executing' is not one of")

    def test_it_refuses_a_scheduled_start_that_is_not_a_date(self):
        self.assert_refused(
            job_data(scheduled_start="tomorrow"),
            "scheduled_start 'tomorrow' is not an ISO-8601 date and time.",
        )

    def test_it_refuses_an_unknown_expected_status(self):
        data = job_data(
            tasks=[task_data("T1"), task_data("T2", conditions=[{"task": "T1", "status": "done"}])]
        )
        self.assert_refused(data, "task 'T2': condition status 'done' is not one of")

    def test_it_refuses_a_group_code_that_is_not_a_queue_name(self):
        self.assert_refused({"groups": [{"code": "night shift"}]}, "group 'night shift': Use 1-50")

    def test_it_refuses_a_file_of_the_wrong_shape(self):
        long = "x" * 201
        table: list[tuple[Any, str]] = [
            ({"jobs": [], "extra": 1}, "Unknown top-level key(s): extra."),
            ({"jobs": {}}, '"groups" and "jobs" must be lists.'),
            ({"groups": ["nightly"]}, "group 1: must be an object."),
            ({"groups": [{"description": "x"}]}, 'group 1: "code" is required.'),
            ({"groups": [{"code": "n", "servers": "aos1"}]}, "\"servers\" must be a list"),
            ({"groups": [{"code": "n", "servers": ["a b"]}]}, "group 'n', server 'a b': Use"),
            ({"groups": [{"code": "n", "max_concurrency": 600}]}, "group 'n': max_concurrency 600: Use -1 (pause), 0 (no limit) or 1-512."),
            ({"groups": [{"code": "n", "max_concurrency": -2}]}, "max_concurrency -2: Use -1 (pause)"),
            ({"groups": [{"code": "n", "max_concurrency": "2"}]}, "max_concurrency must be a whole number, got '2'."),
            ({"groups": [{"code": "n", "max_concurrency": True}]}, "must be a whole number, got True."),
            ({"groups": [{"code": "n", "max_tasks": -1}]}, "group 'n': max_tasks must be a whole number from 0 (no limit) up, got -1."),
            ({"groups": [{"code": "n", "max_tasks": "4"}]}, "max_tasks must be a whole number from 0 (no limit) up, got '4'."),
            ({"groups": [{"code": "n", "max_tasks": 10001}]}, "group 'n': max_tasks 10001: Use 0 (no limit) or 1-10000."),
            ({"groups": [{"code": "n", "reserved_capacity": 20}]}, "group 'n': reserved_capacity 20 is not one of 0, 10, 15, 25 (percent"),
            ({"groups": [{"code": "n", "reserved_capacity": [10]}]}, "reserved_capacity [10] is not one of"),
            ({"jobs": ["job"]}, "job 1: must be an object."),
            ({"tasks": []}, 'job 1: "description" is required.'),
            (job_data(description=long), "description is longer than 200 characters."),
            (job_data(priority="urgent"), "priority 'urgent' is not one of low, normal"),
            (job_data(save_history="errors_only"), "save_history 'errors_only' is not one of always, errors, never."),
            (job_data(save_history=None), "save_history None is not one of always, errors, never."),
            (job_data(critical="yes"), "critical must be true or false, got 'yes'."),
            (job_data(critical=1), "critical must be true or false, got 1."),
            (job_data(tasks={}), '"tasks" must be a list.'),
            (job_data(tasks=["T1"]), "task 1: must be an object."),
            (job_data(tasks=[{"process": "demo.noop"}]), 'task 1: "key" is required'),
            (job_data(tasks=[task_data("x" * 51)]), "task 1: \"key\" is required"),
            (job_data(tasks=[{"key": "T1"}]), "task 'T1': \"process\" is required."),
            (job_data(tasks=[task_data("T1", ignore_failure="yes")]), "ignore_failure must be true or false."),
            (job_data(tasks=[task_data("T1", max_retries=True)]), "got True."),
            (job_data(tasks=[task_data("T1", max_retries=-1)]), "got -1."),
            (job_data(tasks=[task_data("T1", condition_type="some")]), "condition_type 'some' is not one of all, any."),
            (job_data(tasks=[task_data("T1", conditions="T0")]), "task 'T1': \"conditions\" must be a list."),
            (job_data(tasks=[task_data("T1", conditions=["T0"])]), "each condition is"),
            (job_data(tasks=[task_data("T1", conditions=[{"task": "T0", "when": "x"}])]), "each condition is"),
            (job_data(tasks=[task_data("T1", description=long)]), "description must be a string of at most 200"),
            (job_data(tasks=[task_data("T1", parameters=[1])]), "Parameters must be a JSON object."),
        ]  # fmt: skip
        for data, message in table:
            with self.subTest(message):
                self.assert_refused(data, message)

    def test_it_refuses_the_whole_bundle_when_one_job_is_bad(self):
        data = {
            "groups": [{"code": "nightly", "servers": ["aos2"]}],
            "jobs": [
                job_data(description="Good", tasks=[task_data("A", group="nightly")]),
                job_data(description="Bad", tasks=[task_data("B", process="demo.nope")]),
            ],
        }
        self.assert_refused(data, "job 2 ('Bad'), task 'B': unknown process 'demo.nope'.")
        assert not BatchGroup.objects.filter(code="nightly").exists()

    def test_it_refuses_a_file_that_is_not_json(self):
        self.assert_refused_plain("{not json", "is not valid JSON")

    def test_it_refuses_a_file_that_is_not_an_object(self):
        self.assert_refused(["a", "list"], "The file must hold a JSON object")

    def test_it_refuses_a_missing_file(self):
        with pytest.raises(CommandError, match="Can't read .*missing.json"):
            self.batch("import", self.folder / "missing.json")

    def test_it_refuses_an_unknown_creator(self):
        with pytest.raises(CommandError, match="Unknown user 'nobody'."):
            self.batch("import", self.write(job_data()), "--user", "nobody")
        assert not self.new_jobs().exists()

    def assert_refused_plain(self, text: str, message: str) -> None:
        with pytest.raises(CommandError, match=message):
            self.batch("import", self.write(text))
        assert not self.new_jobs().exists()


class ExportTestCase(CommandTestCase):
    def make_full_job(self) -> BatchJob:
        nightly = BatchGroup.objects.create(code="nightly")
        job = self.make_job(
            description="Settlement",
            status=S.WITHHOLD,
            priority=BatchJob.Priority.CRITICAL,
            priority_overridden=True,
            scheduled_start=NINE,
            run_as=self.bob,
        )
        t1 = self.make_task(
            job, "T1", process="demo.sleep", parameters={"seconds": 2.5}, company=self.usmf
        )
        t2 = self.make_task(job, "T2", process="demo.fail", parameters={"message": "x"})
        t3 = self.make_task(
            job, "T3", group=nightly, max_retries=3, ignore_failure=True, condition_type="any"
        )
        t1.position, t2.position, t3.position = 1, 2, 3
        BatchTask.objects.bulk_update([t1, t2, t3], ["position"])
        self.add_condition(t2, t1, "ended_or_error")
        self.add_condition(t3, t1, "ended")
        self.add_condition(t3, t2, "error")
        return job

    def test_it_exports_a_job_as_json(self):
        job = self.make_full_job()
        data = json.loads(self.batch("export", job.pk))
        assert data == {
            "description": "Settlement",
            "scheduled_start": "2025-03-01T09:00:00+00:00",
            "status": "withhold",
            "priority": "critical",
            "save_history": "always",
            "critical": False,
            "run_as": "bob",
            "company": "USMF",
            "tasks": [
                {
                    "key": "T1",
                    "description": "Task T1",
                    "process": "demo.sleep",
                    "parameters": {"seconds": 2.5},
                    "group": "",
                    "company": "USMF",
                    "ignore_failure": False,
                    "max_retries": 0,
                    "condition_type": "all",
                    "conditions": [],
                },
                {
                    "key": "T2",
                    "description": "Task T2",
                    "process": "demo.fail",
                    "parameters": {"message": "x"},
                    "group": "",
                    "ignore_failure": False,
                    "max_retries": 0,
                    "condition_type": "all",
                    "conditions": [{"task": "T1", "status": "ended_or_error"}],
                },
                {
                    "key": "T3",
                    "description": "Task T3",
                    "process": "demo.noop",
                    "parameters": {},
                    "group": "nightly",
                    "ignore_failure": True,
                    "max_retries": 3,
                    "condition_type": "any",
                    "conditions": [
                        {"task": "T1", "status": "ended"},
                        {"task": "T2", "status": "error"},
                    ],
                },
            ],
        }

    def test_it_imports_what_it_exports_as_an_equal_job(self):
        job = self.make_full_job()
        exported = self.batch("export", job.pk)
        out = self.batch("import", self.write(exported))
        copy = BatchJob.objects.get(pk=int(out))
        assert copy.pk != job.pk
        assert io.export_job(copy) == io.export_job(job) == json.loads(exported)

    def test_it_keeps_save_job_to_history_and_critical_through_export_and_import(self):
        for save_history, critical in ((SaveHistory.NEVER, True), (SaveHistory.ERRORS, False)):
            with self.subTest(save_history):
                job = self.make_job(save_history=save_history, critical=critical)
                data = io.export_job(job)
                assert (data["save_history"], data["critical"]) == (save_history.value, critical)
                [copy] = io.import_data(json.loads(json.dumps(data)))
                assert (copy.save_history, copy.critical) == (save_history, critical)
                assert io.export_job(copy) == data

    def test_it_exports_a_finished_job_as_waiting(self):
        job = self.make_job(status=S.ENDED)
        assert io.export_job(job)["status"] == "waiting"

    def test_it_refuses_an_unknown_job(self):
        with pytest.raises(CommandError, match="There is no batch job 999999."):
            self.batch("export", 999999)

    def test_it_keeps_the_job_company_through_export_and_import(self):
        job = self.make_job(company=self.usmf)
        self.make_task(job, "T1")
        copy = io.import_data(io.export_job(job))[0]
        assert copy.company == self.usmf

    def test_it_imports_an_exported_mail_task(self):
        data = job_data(
            tasks=[
                task_data(
                    "M1",
                    process="mail.send_document",
                    parameters={
                        "to": "a@example.com, b@example.com",
                        "subject": "Report",
                        "document": "latest",
                    },
                )
            ]
        )
        (job,) = io.import_data(data)
        (copy,) = io.import_data(io.export_job(job))
        assert io.export_job(copy) == io.export_job(job)


class ShowTestCase(CommandTestCase):
    def test_it_shows_a_job_as_json(self):
        job = self.make_job(description="Show me")
        self.make_task(job, "T1", description="First")
        t2 = self.make_task(job, "T2", process="demo.fail", parameters={"message": "no"})
        self.make_task(job, "T3")
        BatchTask.objects.filter(pk=t2.pk).update(position=1)
        start(job)
        drain(job)
        data = json.loads(self.batch("show", job.pk, "--json"))
        assert set(data) == {"id", "description", "status", "runs", "last_run", "tasks"}
        assert (data["id"], data["description"], data["status"]) == (job.pk, "Show me", "error")
        assert [t["key"] for t in data["tasks"]] == ["T1", "T3", "T2"]  # by position
        t1 = data["tasks"][0]
        assert set(t1) == {
            "key",
            "description",
            "status",
            "server",
            "retries",
            "started_at",
            "ended_at",
            "log_lines",
        }
        assert (t1["description"], t1["status"], t1["server"], t1["retries"]) == (
            "First",
            "ended",
            "aos1",
            0,
        )
        assert dt.datetime.fromisoformat(t1["started_at"]) <= dt.datetime.fromisoformat(
            t1["ended_at"]
        )
        assert data["tasks"][2]["status"] == "error"

    def test_it_shows_a_job_that_never_ran(self):
        job = self.make_job()
        self.make_task(job, "T1")
        data = json.loads(self.batch("show", job.pk, "--json"))
        assert data["status"] == "waiting"
        assert (data["runs"], data["last_run"]) == (0, None)
        assert data["tasks"] == [
            {
                "key": "T1",
                "description": "Task T1",
                "status": "waiting",
                "server": None,
                "retries": 0,
                "started_at": None,
                "ended_at": None,
                "log_lines": 0,
            }
        ]

    def test_it_shows_a_job_as_text(self):
        job = self.make_job(description="Text")
        self.make_task(job, "T1", description="First")
        start(job)
        drain(job)
        lines = self.batch("show", job.pk).splitlines()
        assert lines[0] == f"Job {job.pk}: Text [Ended]"
        assert lines[1].split() == ["T1", "ended", "retries=0", "server=aos1", "First"]


class StatusTestCase(CommandTestCase):
    def test_it_changes_the_status_and_prints_the_new_one(self):
        job = self.make_job(status=S.WAITING)
        assert self.batch("status", job.pk, "withhold", "--user", "alice") == "withhold\n"
        change = StatusChange.objects.get(job=job)
        assert (change.old_status, change.new_status, change.by) == (
            S.WAITING,
            S.WITHHOLD,
            self.alice,
        )
        assert self.batch("status", job.pk, "waiting") == "waiting\n"

    def test_it_cancels_a_running_job(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        assert self.batch("status", job.pk, "cancel") == "canceled\n"

    def test_it_refuses_an_illegal_move(self):
        job = self.make_job(status=S.WAITING)
        with pytest.raises(CommandError) as excinfo:
            self.batch("status", job.pk, "cancel")
        assert str(excinfo.value) == (
            "A job in status Waiting can't be changed to Canceling; allowed: Withhold."
        )
        job.refresh_from_db()
        assert job.status == S.WAITING

    def test_it_asks_to_try_again_when_the_job_changed_meanwhile(self):
        job = self.make_job(status=S.WAITING)
        with (
            mock.patch.object(transitions, "change_status", return_value=False),
            pytest.raises(CommandError, match=f"Job {job.pk} changed status meanwhile; try again."),
        ):
            self.batch("status", job.pk, "withhold")

    def test_it_refuses_an_unknown_job(self):
        with pytest.raises(CommandError, match="There is no batch job 999999."):
            self.batch("status", 999999, "withhold")

    def test_it_refuses_a_status_it_does_not_know(self):
        job = self.make_job()
        with pytest.raises(CommandError, match="invalid choice: 'ended'"):
            self.batch("status", job.pk, "ended")


class WaitTestCase(CommandTestCase):
    def wait(self, job: BatchJob, meanwhile: Any) -> str:
        """``batch wait`` where each poll lets ``meanwhile`` happen (instead of sleeping)."""
        with mock.patch("batchadmin.jobs.management.commands.batch.time.sleep") as sleep:
            sleep.side_effect = lambda seconds: meanwhile()
            return self.batch("wait", job.pk)

    def test_it_waits_for_a_running_job_to_end(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        assert self.wait(job, lambda: drain(job)) == "ended\n"

    def test_it_waits_for_the_next_run_of_a_waiting_job_not_the_last_one(self):
        job = self.make_job()
        task = self.make_task(job, "T1", process="demo.fail", parameters={"message": "no"})
        start(job)
        drain(job)
        assert job.status == S.ERROR
        self.batch("status", job.pk, "waiting")  # run again, this time successfully
        BatchTask.objects.filter(pk=task.pk).update(process="demo.noop", parameters={})

        def run_again() -> None:
            start(job)
            drain(job)

        assert self.wait(job, run_again) == "ended\n"

    def test_it_prints_the_status_of_a_job_that_is_over(self):
        job = self.make_job()
        self.make_task(job, "T1", process="demo.fail", parameters={"message": "no"})
        start(job)
        drain(job)
        assert self.batch("wait", job.pk) == "error\n"

    def test_it_prints_the_status_of_a_withheld_job_at_once(self):
        job = self.make_job(status=S.WITHHOLD)
        assert self.batch("wait", job.pk) == "withhold\n"

    def test_it_gives_up_after_the_timeout(self):
        job = self.make_job()
        err = StringIO()
        with pytest.raises(SystemExit) as excinfo:
            call_command("batch", "wait", str(job.pk), "--timeout", "0", stderr=err)
        assert excinfo.value.code == 1
        assert err.getvalue() == f"Timed out after 0s; job {job.pk} is waiting.\n"


class ServersTestCase(CommandTestCase):
    def test_it_says_how_to_start_a_server_when_there_is_none(self):
        BatchServer.objects.all().delete()
        assert self.batch("servers") == (
            "No batch servers yet. Start one: celery -A batchadmin worker -n aos1@%h\n"
        )

    def test_it_lists_servers_with_their_groups_threads_and_replicas(self):
        BatchServer.objects.create(name="aos2", enabled=False)
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(8), end_time=dt.time(18), max_threads=2
        )
        with time_machine.travel(NINE, tick=False):
            BatchServerReplica.objects.create(
                server=self.server, hostname="aos1@host1", pid=41, concurrency=4, busy=1
            )
            BatchServerReplica.objects.create(
                server=self.server,
                hostname="aos1@host2",
                pid=42,
                concurrency=4,
                last_heartbeat=NINE - dt.timedelta(minutes=5),  # gone
            )
            out = self.batch("servers")
        assert out.splitlines() == [
            "aos1: groups default; threads 1/4 busy, schedule allows 2; 1 replica(s) online",
            "  aos1@host1 pid 41, 1/4 busy, heartbeat 09:00:00",
            "aos2 (disabled): groups (none); threads 0/0 busy; 0 replica(s) online",
        ]
