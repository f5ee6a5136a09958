"""Processes are role-bound (issue 13 item 1): each says who may run it, checked wherever a task
is saved (the task line, `batch import`, the API, django.tasks, copy) and again at run time
against the job's run-as user; and a Batch user's tasks have a time-limit ceiling (item 8)."""

from __future__ import annotations

import json
import shutil
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import SimpleTestCase, override_settings

from batchadmin.djangotasks import compat
from batchadmin.engine import transitions
from batchadmin.jobs import access, forms, io
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.processes import registry
from batchadmin.processes.registry import ANYONE, ProcessNotAllowed
from tests.api.base import ApiTestCase
from tests.base import drain, start
from tests.djangotasks import tasks
from tests.jobs.form_base import FormTestCase
from tests.jobs.test_task_grid import task_data

S = BatchStatus
CLEANUP = "history.cleanup"
REFUSED = (
    "User dave may not run the batch process history.cleanup (only a Batch job manager may run it)."
)
BACKEND = "batchadmin.djangotasks.backend.BatchadminBackend"
CLEANUP_PARAMS = {"keep_days": 30}


def cleanup_job(**overrides: Any) -> dict[str, Any]:
    task = {"key": "purge", "process": CLEANUP, "parameters": CLEANUP_PARAMS}
    return {"description": "Purge everything", "tasks": [task], **overrides}


class RegistryTestCase(SimpleTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.dict(registry._REGISTRY))

    def test_maintenance_and_django_tasks_are_for_managers_the_rest_for_anyone(self):
        run_by = {p.name: p.run_by for p in registry.all_processes()}
        assert run_by[CLEANUP] == "Batch job manager"
        assert run_by["django.task"] == "Batch job manager"
        assert run_by["demo.noop"] == run_by["reports.task_history_csv"] == ANYONE

    def test_it_refuses_a_rule_that_is_neither_a_role_nor_a_permission(self):
        with pytest.raises(ValueError, match="run_by must be"):
            registry.register("test.bad", label="Bad", description="", run_by="Viewer")


class MayRunTestCase(FormTestCase):
    def test_it_applies_the_rule_of_each_process(self):
        cleanup = registry.get(CLEANUP)
        noop = registry.get("demo.noop")
        assert access.may_run(self.alice, cleanup)
        assert not access.may_run(self.dave, cleanup)
        assert not access.may_run(self.bob, cleanup)
        assert access.may_run(None, cleanup)  # the system: the seeded clean-up job
        assert access.may_run(self.charlie, noop)

    def test_a_process_may_ask_for_a_django_permission(self):
        with mock.patch.dict(registry._REGISTRY):
            registry.register(
                "test.perm", label="Perm", description="", run_by="jobs.delete_batchjob"
            )(lambda ctx: None)
            process = registry.get("test.perm")
            assert access.may_run(self.alice, process)  # BaseTestCase gives her the models'
            assert not access.may_run(self.dave, process)
            self.dave.user_permissions.add(Permission.objects.get(codename="delete_batchjob"))
            dave = type(self.dave).objects.get(pk=self.dave.pk)  # no permission cache
            assert access.may_run(dave, process)


class TaskLineTestCase(FormTestCase):
    """The task grid's line: the picker, the parameter partial and the save."""

    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)

    def new_url(self) -> str:
        return f"/jobs/{self.job.pk}/tasks/new/"

    def test_the_picker_offers_only_what_the_user_may_run(self):
        html = self.client.get(self.new_url(), headers=self.htmx("task-new")).content.decode()
        assert 'value="demo.noop"' in html
        assert f'value="{CLEANUP}"' not in html
        assert 'value="django.task"' not in html
        self.login(self.alice)
        html = self.client.get(self.new_url(), headers=self.htmx("task-new")).content.decode()
        assert f'value="{CLEANUP}"' in html

    def test_it_gives_no_parameter_form_for_a_process_the_user_may_not_run(self):
        url = f"/jobs/{self.job.pk}/tasks/parameters/?task=new&process={CLEANUP}"
        html = self.client.get(url, headers=self.htmx()).content.decode()
        assert "keep_days" not in html
        self.login(self.alice)
        job = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        url = f"/jobs/{job.pk}/tasks/parameters/?task=new&process={CLEANUP}"
        assert "keep_days" in self.client.get(url, headers=self.htmx()).content.decode()

    def test_it_refuses_to_save_a_process_the_user_may_not_run(self):
        data = task_data(process=CLEANUP, **{"param-keep_days": "1"})
        r = self.client.post(self.new_url(), data, headers=self.htmx("task-new"))
        assert r.status_code == 200
        assert "is not one of the available choices" in r.content.decode()
        assert not self.job.tasks.exists()

    def test_it_refuses_a_manager_putting_it_in_a_batch_users_job(self):
        # Saved by a manager, but the job runs as dave: it would only fail at run time.
        editor = forms.task_editor(self.job, None, user=self.alice, data=task_data(process=CLEANUP))
        assert not editor.is_valid()
        assert editor.form.errors["process"] == [REFUSED]

    def test_a_line_a_manager_made_says_so_and_cannot_be_saved_by_the_user(self):
        task = self.make_task(self.job, "T1", process=CLEANUP, parameters=CLEANUP_PARAMS)
        url = f"/jobs/{self.job.pk}/tasks/{task.pk}/edit/"
        html = self.client.get(url, headers=self.htmx()).content.decode()
        assert f"{CLEANUP} (you may not run it)" in html
        r = self.client.post(url, task_data(process=CLEANUP), headers=self.htmx())
        assert REFUSED in r.content.decode()
        task.refresh_from_db()
        assert task.description == "Task T1"

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_batch_users_time_limit_has_a_ceiling(self):
        r = self.client.post(self.new_url(), task_data(time_limit="3601"), headers=self.htmx())
        assert (
            "At most 3600 seconds (1 h) for a task run as a Batch user (BATCH_USER_MAX_TIME_LIMIT)."
            in r.content.decode()
        )
        assert not self.job.tasks.exists()
        self.client.post(self.new_url(), task_data(time_limit=""), headers=self.htmx())
        # Empty means the default (6 h), above the ceiling: the ceiling is stored.
        assert self.job.tasks.get().time_limit == 3600

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_managers_job_has_no_ceiling(self):
        self.login(self.alice)
        job = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        self.client.post(
            f"/jobs/{job.pk}/tasks/new/", task_data(time_limit="604800"), headers=self.htmx()
        )
        assert job.tasks.get().time_limit == 604800


class ImportTestCase(FormTestCase):
    def setUp(self):
        super().setUp()
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.path = Path(folder) / "job.json"
        self.jobs = BatchJob.objects.count()

    def batch_import(self, data: Any, *user: str) -> str:
        self.path.write_text(json.dumps(data))
        out = StringIO()
        call_command("batch", "import", str(self.path), *user, stdout=out, stderr=StringIO())
        return out.getvalue()

    def test_batch_import_refuses_a_process_the_user_may_not_run(self):
        with pytest.raises(CommandError) as excinfo:
            self.batch_import(cleanup_job(), "--user", "dave")
        assert str(excinfo.value) == (
            f"Nothing was imported. job 1 ('Purge everything'), task 'purge': {REFUSED}"
        )
        assert BatchJob.objects.count() == self.jobs

    def test_it_refuses_a_run_as_user_who_may_not_run_it(self):
        with pytest.raises(io.ImportRefused, match=REFUSED.replace("(", r"\(").replace(")", r"\)")):
            io.import_data(cleanup_job(run_as="dave"), user=self.alice)
        assert BatchJob.objects.count() == self.jobs

    def test_managers_and_the_shell_may_import_it(self):
        self.batch_import(cleanup_job(), "--user", "alice")
        self.batch_import(cleanup_job())  # no --user: the operator at the shell
        assert BatchJob.objects.count() == self.jobs + 2

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_batch_users_time_limit_has_a_ceiling(self):
        task: dict[str, Any] = {"key": "h", "process": "demo.hang", "time_limit": 604800}
        data = {"description": "Hang", "tasks": [task]}
        with pytest.raises(io.ImportRefused, match="time_limit 604800 is above 3600 seconds"):
            io.import_data(data, user=self.dave)
        del task["time_limit"]
        (job,) = io.import_data(data, user=self.dave)
        assert job.tasks.get().time_limit == 3600
        (job,) = io.import_data(data, user=self.alice)
        assert job.tasks.get().time_limit is None


class ApiPathTestCase(ApiTestCase):
    def test_post_jobs_refuses_a_process_the_caller_may_not_run(self):
        jobs = BatchJob.objects.count()
        r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=cleanup_job())
        assert r.status_code == 403
        assert r.data["message"] == (
            f"Nothing was imported. job 1 ('Purge everything'), task 'purge': {REFUSED}"
        )
        assert BatchJob.objects.count() == jobs
        r = self.call("POST", "/api/v1/jobs", as_user=self.alice, body=cleanup_job())
        assert r.status_code == 201

    def test_copy_refuses_a_process_the_caller_may_not_run(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "purge", process=CLEANUP, parameters=CLEANUP_PARAMS)
        jobs = BatchJob.objects.count()
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/copy", as_user=self.dave, body={})
        assert r.status_code == 403
        assert r.data["message"] == f"Not copied: {REFUSED}"
        assert BatchJob.objects.count() == jobs


@override_settings(
    TASKS={
        "default": {"BACKEND": BACKEND},
        "as_dave": {"BACKEND": BACKEND, "OPTIONS": {"RUN_AS": "dave"}},
        "as_alice": {"BACKEND": BACKEND, "OPTIONS": {"RUN_AS": "alice", "TIME_LIMIT": 604800}},
        "as_nobody": {"BACKEND": BACKEND, "OPTIONS": {"RUN_AS": "nobody"}},
    }
)
class DjangoTasksTestCase(FormTestCase):
    def test_enqueue_refuses_a_run_as_user_who_may_not_run_django_tasks(self):
        jobs = BatchJob.objects.count()
        with pytest.raises(compat.InvalidTask) as excinfo:
            tasks.add.using(backend="as_dave").enqueue(1, 2)
        assert str(excinfo.value) == (
            "TASKS['as_dave'] RUN_AS: User dave may not run the batch process django.task "
            "(only a Batch job manager may run it)."
        )
        with pytest.raises(compat.InvalidTask, match="'nobody' is not an active user"):
            tasks.add.using(backend="as_nobody").enqueue(1, 2)
        assert BatchJob.objects.count() == jobs

    def test_enqueue_as_a_manager_runs_as_the_manager(self):
        with self.captureOnCommitCallbacks(execute=True):
            result = tasks.add.using(backend="as_alice").enqueue(1, 2)
        job = BatchJob.objects.get(pk=int(result.id))
        assert job.run_as == self.alice
        assert job.tasks.get().time_limit == 604800  # no ceiling for a manager
        drain(job)
        result.refresh()
        assert result.return_value == 3

    def test_a_system_enqueue_has_no_user(self):
        with self.captureOnCommitCallbacks(execute=True):
            result = tasks.add.enqueue(1, 2)
        assert BatchJob.objects.get(pk=int(result.id)).run_as is None


class RunTimeTestCase(FormTestCase):
    def test_an_attempt_as_a_user_who_may_not_run_the_process_fails_clearly(self):
        # Saved when its Run by was a manager; Run by changed since (or the rule did).
        job = self.make_job(created_by=self.alice, run_as=self.dave)
        task = self.make_task(job, "purge", process=CLEANUP, parameters=CLEANUP_PARAMS)
        start(job)
        drain(job)
        task.refresh_from_db()
        assert task.status == S.ERROR
        run = BatchTaskRun.objects.get(task=task)
        assert run.error_message == f"ProcessNotAllowed: {REFUSED}"
        assert run.attempt == 1  # not retried: a refusal does not go away by itself

    def test_the_system_and_managers_run_it(self):
        for run_as in (None, self.alice):
            job = self.make_job(created_by=None, run_as=run_as)
            task = self.make_task(job, "purge", process=CLEANUP, parameters=CLEANUP_PARAMS)
            start(job)
            drain(job)
            task.refresh_from_db()
            assert task.status == S.ENDED, BatchTaskRun.objects.get(task=task).error_message

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_batch_users_task_runs_under_the_ceiling_whatever_it_was_saved_with(self):
        job = self.make_job(created_by=self.dave)
        task = self.make_task(job, "T1", time_limit=604800)
        start(job)
        seen: dict[str, Any] = {}

        def look(ctx: Any) -> None:
            row = BatchTask.objects.get(pk=ctx.task_id)
            seen["limit"] = row.time_limit
            assert row.deadline_at is not None and row.started_at is not None
            seen["deadline"] = (row.deadline_at - row.started_at).total_seconds()

        with mock.patch.dict(registry._REGISTRY):
            registry.register("test.look", label="Look", description="")(look)
            BatchTask.objects.filter(pk=task.pk).update(process="test.look")
            drain(job)
        assert seen == {"limit": 3600, "deadline": 3600}
        lines = BatchTaskRun.objects.get(task=task).log_entries.values_list("message", flat=True)
        assert list(lines) == [
            "Time limit lowered to 1 h: the most a task run as a Batch user may have "
            "(BATCH_USER_MAX_TIME_LIMIT)."
        ]

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_managers_task_keeps_its_time_limit(self):
        job = self.make_job(created_by=self.alice)
        task = self.make_task(job, "T1", time_limit=604800)
        start(job)
        drain(job)
        task.refresh_from_db()
        assert (task.status, task.time_limit) == (S.ENDED, 604800)
        assert not BatchTaskRun.objects.get(task=task).log_entries.exists()


class CheckProcessesTestCase(FormTestCase):
    def test_it_names_the_user_and_the_process(self):
        with pytest.raises(ProcessNotAllowed) as excinfo:
            access.check_processes(self.dave, ["demo.noop", CLEANUP], where="Here: ")
        assert str(excinfo.value) == f"Here: {REFUSED}"
        access.check_processes(self.dave, ["demo.noop", "no.such.process"])


class JobHeaderTestCase(FormTestCase):
    def test_run_by_may_not_become_a_user_who_may_not_run_the_tasks(self):
        job = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        self.make_task(job, "purge", process=CLEANUP, parameters=CLEANUP_PARAMS)
        self.login(self.alice)
        data = {
            "description": "Purge",
            "scheduled_start": "2030-01-02T03:04",
            "run_as": str(self.dave.pk),
            "priority": "",
            "company": "",
            "save_history": "always",
        }
        r = self.client.post(f"/jobs/{job.pk}/", data, headers=self.htmx())
        assert REFUSED in r.content.decode()
        job.refresh_from_db()
        assert job.run_as is None
        self.client.post(f"/jobs/{job.pk}/", data | {"run_as": str(self.alice.pk)})
        job.refresh_from_db()
        assert job.run_as == self.alice


class RunNowTestCase(FormTestCase):
    """A manager's line in a Batch user's job (Run by: the manager) runs as the manager; the
    user may run the job but not change that line's parameters, even for one run."""

    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, run_as=self.alice, status=S.WITHHOLD)
        self.make_task(self.job, "purge", process=CLEANUP, parameters=CLEANUP_PARAMS)
        self.make_task(self.job, "nap", process="demo.sleep", parameters={"seconds": 0})

    def test_overrides_of_a_process_the_user_may_not_run_are_refused(self):
        with pytest.raises(transitions.Refused) as excinfo:
            transitions.run_job_now(
                job_id=self.job.pk, by_id=self.dave.pk, overrides={"purge": {"keep_days": 1}}
            )
        assert str(excinfo.value) == f"Task purge: {REFUSED}"
        self.job.refresh_from_db()
        assert self.job.status == S.WITHHOLD
        assert transitions.run_job_now(
            job_id=self.job.pk, by_id=self.dave.pk, overrides={"nap": {"seconds": 1}}
        )

    def test_the_dialog_offers_only_the_parameters_the_user_may_change(self):
        self.login(self.dave)
        html = self.client.get(f"/jobs/{self.job.pk}/run-now/", headers=self.htmx()).content
        assert b"keep_days" not in html
        assert b"seconds" in html
