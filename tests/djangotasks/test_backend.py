"""batchadmin as the django.tasks backend, with the engine in-process (tests/base.py)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from typing import Any

from django.db import transaction
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.djangotasks import compat
from batchadmin.djangotasks.backend import BatchadminBackend, d365_priority
from batchadmin.djangotasks.models import EnqueuedTask
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, Priority
from batchadmin.servers.models import BatchGroup
from tests.base import ROOT_DIR, BaseTestCase, drain, start
from tests.djangotasks import tasks

Status = compat.TaskResultStatus
BACKEND = "batchadmin.djangotasks.backend.BatchadminBackend"
RETRYING = {
    "default": {"BACKEND": BACKEND},
    "retrying": {"BACKEND": BACKEND, "OPTIONS": {"MAX_RETRIES": 3}},
}


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class BackendTestCase(BaseTestCase):
    def enqueue(self, task: Any, *args: Any, **kwargs: Any) -> compat.TaskResult[Any]:
        """Enqueue as committed code would: the job starts when the transaction commits."""
        with self.captureOnCommitCallbacks(execute=True):
            result: compat.TaskResult[Any] = task.enqueue(*args, **kwargs)
        return result

    def run_result(self, result: compat.TaskResult[Any]) -> compat.TaskResult[Any]:
        drain(BatchJob.objects.get(pk=result.id))
        result.refresh()
        return result

    def test_enqueue_makes_a_one_task_job_that_starts_on_commit(self):
        result = self.enqueue(tasks.add, 2, 3)
        job = BatchJob.objects.get(pk=int(result.id))
        assert (job.description, job.status) == ("add (Django task)", BatchStatus.EXECUTING)
        [task] = job.tasks.all()
        assert (task.key, task.process, task.group.code) == ("task", "django.task", "default")
        assert task.parameters == {
            "task": "tests.djangotasks.tasks.add",
            "args": [2, 3],
            "kwargs": {},
        }
        assert task.status == BatchStatus.READY
        assert self.send.call_args.args[0] == [(task.pk, "batch.default", 6)]
        assert (result.status, result.backend, result.args) == (Status.READY, "default", [2, 3])
        assert result.task.func is tasks.add.func

    def test_it_runs_and_get_result_gives_the_return_value_and_the_worker(self):
        result = self.run_result(self.enqueue(tasks.add, 2, b=3))
        assert (result.status, result.return_value, result.errors) == (Status.SUCCESSFUL, 5, [])
        assert result.worker_ids == ["aos1@test"] and result.attempts == 1
        assert result.started_at and result.finished_at and result.last_attempted_at
        fetched = tasks.add.get_result(result.id)
        assert (fetched.status, fetched.return_value, fetched.kwargs) == (
            Status.SUCCESSFUL,
            5,
            {"b": 3},
        )

    def test_a_failing_task_s_error_has_its_class_and_traceback(self):
        result = self.run_result(self.enqueue(tasks.fail, "Ledger USMF-2025 locked"))
        assert result.status == Status.FAILED
        [error] = result.errors
        assert error.exception_class_path == "tests.djangotasks.tasks.LedgerLocked"
        assert error.exception_class is tasks.LedgerLocked
        assert "Traceback (most recent call last)" in error.traceback
        assert error.traceback.rstrip().endswith("LedgerLocked: Ledger USMF-2025 locked")
        with self.assertRaisesMessage(ValueError, "Task failed"):
            result.return_value  # noqa: B018
        assert BatchJob.objects.get(pk=result.id).status == BatchStatus.ERROR

    @override_settings(TASKS=RETRYING)
    def test_a_retried_task_has_an_error_and_a_worker_per_attempt(self):
        flaky = tasks.flaky.using(backend="retrying")
        result = self.run_result(self.enqueue(flaky, failures=2))
        assert result.status == Status.SUCCESSFUL
        assert result.return_value == {"attempt": 3, "result_id": result.id}
        assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"] * 2
        assert "RuntimeError: attempt 2 failed" in result.errors[1].traceback
        assert result.worker_ids == ["aos1@test"] * 3
        assert BatchTask.objects.get(job_id=int(result.id)).max_retries == 3

    def test_an_async_task_runs_too(self):
        assert self.run_result(self.enqueue(tasks.slow_add, 1, 2)).return_value == 3

    def test_a_return_value_that_is_not_json_fails_the_task(self):
        result = self.run_result(self.enqueue(tasks.not_json))
        assert result.status == Status.FAILED
        assert result.errors[0].exception_class_path == "builtins.TypeError"

    def test_the_queue_is_a_batch_group_and_the_priority_maps_to_d365(self):
        with self.assertRaisesMessage(compat.InvalidTask, "Queue 'Reporting' is not a batch group"):
            tasks.report.enqueue()
        BatchGroup.objects.create(code="Reporting")
        result = self.enqueue(tasks.report, days=30)
        job = BatchJob.objects.get(pk=result.id)
        assert (job.priority, job.priority_overridden) == (Priority.CRITICAL, True)
        assert job.tasks.get().group.code == "Reporting"
        assert [d365_priority(p) for p in (-100, -1, 0, 1, 49, 50, 99, 100)] == [
            Priority.LOW,
            Priority.LOW,
            None,
            Priority.HIGH,
            Priority.HIGH,
            Priority.CRITICAL,
            Priority.CRITICAL,
            Priority.RESERVED,
        ]

    def test_run_after_is_the_scheduled_start_and_the_tick_starts_it(self):
        later = now() + dt.timedelta(hours=2)
        result = self.enqueue(tasks.add.using(run_after=later), 1, 1)
        job = BatchJob.objects.get(pk=result.id)
        assert (job.status, job.scheduled_start) == (BatchStatus.WAITING, later)
        assert EnqueuedTask.objects.get(pk=job.pk).run_after == later

    def test_enqueued_in_a_transaction_that_rolls_back_there_is_no_job(self):
        before = BatchJob.objects.count()
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            try:
                with transaction.atomic():
                    tasks.add.enqueue(1, 2)
                    raise RuntimeError("the view failed")
            except RuntimeError:
                pass
        assert BatchJob.objects.count() == before
        assert callbacks == []
        self.send.assert_not_called()

    def test_get_result_of_an_unknown_id_or_another_task(self):
        for unknown in ("999999", "abc"):
            with self.assertRaises(compat.TaskResultDoesNotExist):
                compat.task_backends["default"].get_result(unknown)
        result = self.enqueue(tasks.add, 1, 2)
        with self.assertRaisesMessage(Exception, "Task does not match"):
            tasks.fail.get_result(result.id)

    def test_signals_say_enqueued_started_and_finished(self):
        seen: list[tuple[str, str]] = []

        def record(name: str) -> Any:
            def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
                seen.append((name, task_result.status))

            return receiver

        handlers = {
            s: record(n)
            for n, s in [
                ("enqueued", compat.task_enqueued),
                ("started", compat.task_started),
                ("finished", compat.task_finished),
            ]
        }
        for signal, handler in handlers.items():
            signal.connect(handler)
            self.addCleanup(signal.disconnect, handler)
        result = self.enqueue(tasks.add, 1, 2)
        with self.captureOnCommitCallbacks(execute=True):
            drain(BatchJob.objects.get(pk=result.id))
        assert seen == [
            ("enqueued", Status.READY),
            ("started", Status.RUNNING),
            ("finished", Status.SUCCESSFUL),
        ]

    def test_the_process_runs_only_tasks(self):
        job = self.make_job()
        self.make_task(job, "x", process="django.task", parameters={"task": "os.getcwd"})
        start(job)
        drain(job)
        run = job.runs.get().task_runs.get()
        assert (
            run.error_message
            == "TypeError: os.getcwd is not a django.tasks task (decorate it with @task)."
        )

    def test_max_retries_beyond_d365_s_limit_is_refused(self):
        with self.assertRaisesMessage(compat.InvalidTask, "MAX_RETRIES must be 0 to 5"):
            BatchadminBackend("x", {"OPTIONS": {"MAX_RETRIES": 9}})

    def test_the_list_and_the_job_page_label_django_tasks(self):
        result = self.enqueue(tasks.add, 1, 2)
        self.client.force_login(self.alice)
        badge = '<span class="badge django-task"'
        assert badge in self.client.get("/jobs/").content.decode()
        assert badge in self.client.get(f"/jobs/{result.id}/").content.decode()
        assert badge in self.client.get(f"/jobs/{result.id}/history/").content.decode()
        other = self.make_job()
        assert badge not in self.client.get(f"/jobs/{other.pk}/").content.decode()


class CompatTestCase(BaseTestCase):
    def test_it_takes_django_s_own_tasks_when_there_are_any(self):
        # A stand-in for Django 6's django.tasks: the names batchadmin uses, nothing else.
        script = """
import sys, types
names = {
    "django.tasks": ["DEFAULT_TASK_QUEUE_NAME", "task", "task_backends"],
    "django.tasks.backends": [], "django.tasks.backends.base": ["BaseTaskBackend"],
    "django.tasks.base": ["TASK_MAX_PRIORITY", "TASK_MIN_PRIORITY", "Task", "TaskContext",
                          "TaskError", "TaskResult", "TaskResultStatus"],
    "django.tasks.exceptions": ["InvalidTask", "TaskResultDoesNotExist"],
    "django.tasks.signals": ["task_enqueued", "task_finished", "task_started"],
    "django.utils.json": ["normalize_json"],
}
for module, attrs in names.items():
    m = types.ModuleType(module)
    for a in attrs:
        setattr(m, a, f"django6:{a}")
    sys.modules[module] = m
from batchadmin.djangotasks import compat
print(compat.NATIVE, compat.Task, compat.InvalidTask, compat.normalize_json)
"""
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT_DIR, capture_output=True, text=True, check=True
        ).stdout.split()
        assert out == ["True", "django6:Task", "django6:InvalidTask", "django6:normalize_json"]
        assert compat.NATIVE is False  # here: Django 5.2 with the backport
