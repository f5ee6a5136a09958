from __future__ import annotations

from django.db import models
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob


class EnqueuedTask(models.Model):
    """A django.tasks task enqueued on batchadmin: its one-task batch job, and its result.

    The job is the task (its id is the result id); the attempts, their errors, tracebacks and
    workers are the job's task attempts. Only what the batch tables cannot hold is here: the
    task as enqueued, its return value, and the exception class of each failed attempt.
    """

    job = models.OneToOneField(
        BatchJob, models.CASCADE, primary_key=True, related_name="django_task"
    )
    module_path = models.CharField(
        "task", max_length=300, help_text="The task function: module.function."
    )
    backend = models.CharField(max_length=100)  # the TASKS alias it was enqueued on
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)  # django.tasks' -100 .. 100
    takes_context = models.BooleanField(default=False)
    run_after = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(default=now)
    return_value = models.JSONField(null=True, blank=True)
    # Attempt number -> "module.ExceptionClass" of the exception it raised.
    exception_classes = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "Django task"

    def __str__(self) -> str:
        return f"{self.module_path} (job {self.job_id})"
