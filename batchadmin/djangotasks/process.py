"""The batch process that runs a django.tasks task: what the backend's one-task jobs run.

Only functions decorated as tasks run here (the import must give a Task), so a task line that
names ``os.system`` does nothing but fail.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.module_loading import import_string

from batchadmin.accounts.models import MANAGER
from batchadmin.djangotasks import compat
from batchadmin.djangotasks.models import EnqueuedTask
from batchadmin.processes.registry import Context, register


class DjangoTaskForm(forms.Form):
    task = forms.CharField(max_length=300, help_text="The task function: module.function.")
    args = forms.JSONField(required=False, help_text="Positional arguments, a JSON list.")
    kwargs = forms.JSONField(required=False, help_text="Keyword arguments, a JSON object.")

    def clean_args(self) -> list[Any]:
        value = self.cleaned_data.get("args") or []
        if not isinstance(value, list):
            raise forms.ValidationError("A JSON list.")
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value = self.cleaned_data.get("kwargs") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("A JSON object.")
        return value


@register(
    "django.task",
    label="Django task",
    description="Runs a function enqueued with django.tasks (task.enqueue()).",
    form=DjangoTaskForm,
    # It calls any @task function with any arguments: code enqueues it (as the system, or as
    # the backend's RUN_AS user); people pick it only as managers.
    run_by=MANAGER,
)
def run_django_task(ctx: Context, *, task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Call the task; keep its return value (JSON) or the class of what it raised."""
    target = import_string(task)
    if not isinstance(target, compat.Task):
        raise TypeError(f"{task} is not a django.tasks task (decorate it with @task).")
    record = EnqueuedTask.objects.filter(pk=ctx.job_id).first()
    backend = compat.task_backends[record.backend if record else target.backend]
    result = backend.get_result(str(ctx.job_id)) if record else None
    if result is not None:
        compat.task_started.send(type(backend), task_result=result)
    ctx.info(f"Running {task} (attempt {ctx.attempt})")
    try:
        if target.takes_context:
            if result is None:
                raise LookupError(f"Job {ctx.job_id} was not enqueued as a Django task.")
            value = target.call(compat.TaskContext(task_result=result), *args, **kwargs)
        else:
            value = target.call(*args, **kwargs)
        stored = compat.normalize_json(value)
    except Exception as exc:
        kind = type(exc)
        if record is not None:
            record.exception_classes[str(ctx.attempt)] = f"{kind.__module__}.{kind.__qualname__}"
            record.save(update_fields=["exception_classes"])
        raise
    EnqueuedTask.objects.filter(pk=ctx.job_id).update(return_value=stored)
