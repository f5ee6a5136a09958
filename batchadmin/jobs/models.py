from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.validators import MaxValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils.timezone import now

from batchadmin.servers.models import BatchGroup, BatchServer

MAX_RETRIES_LIMIT = 5  # D365: "The highest allowed value is 5" (retryable-batch.md)


class BatchStatus(models.TextChoices):
    """One enum for jobs and tasks, as D365's BatchStatus."""

    WITHHOLD = "withhold", "Withhold"
    WAITING = "waiting", "Waiting"
    READY = "ready", "Ready"
    EXECUTING = "executing", "Executing"
    ERROR = "error", "Error"
    ENDED = "ended", "Ended"
    NOT_RUN = "not_run", "Didn't run"
    CANCELING = "canceling", "Canceling"
    CANCELED = "canceled", "Canceled"


# A task in one of these still has work ahead of it; a job is over when none of its tasks is.
OPEN_TASK_STATUSES = (
    BatchStatus.WAITING,
    BatchStatus.READY,
    BatchStatus.EXECUTING,
    BatchStatus.CANCELING,
)
RUNNING_JOB_STATUSES = (BatchStatus.EXECUTING, BatchStatus.CANCELING)


class Priority(models.IntegerChoices):
    # Integers so the scheduler can ORDER BY them; import/export use the lower-case names.
    LOW = 10, "Low"
    NORMAL = 20, "Normal"
    HIGH = 30, "High"
    CRITICAL = 40, "Critical"
    RESERVED = 50, "Reserved capacity"


class Company(models.Model):
    code = models.CharField(
        "company",
        max_length=10,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9_-]+$", "Letters, digits, hyphens, underscores.")],
        help_text="Legal entity code, as D365's company accounts (USMF).",
    )
    name = models.CharField("name", max_length=200, blank=True)

    class Meta:
        ordering = ["code"]
        verbose_name = "company"
        verbose_name_plural = "companies"

    def __str__(self) -> str:
        return self.code


class BatchJobQuerySet(models.QuerySet["BatchJob"]):
    def due(self, at: dt.datetime) -> BatchJobQuerySet:
        return self.filter(status=BatchStatus.WAITING, scheduled_start__lte=at)


class BatchJob(models.Model):
    Status = BatchStatus
    Priority = Priority

    description = models.CharField("job description", max_length=200)
    status = models.CharField(
        "status",
        max_length=10,
        choices=BatchStatus.choices,
        default=BatchStatus.WITHHOLD,
    )
    priority = models.PositiveSmallIntegerField(
        "scheduling priority",
        choices=Priority.choices,
        default=Priority.NORMAL,
        help_text="Higher priorities are started first when more is due than can run.",
    )
    scheduled_start = models.DateTimeField(
        "scheduled start date/time",
        default=now,
        help_text="The job starts when this time has passed and its status is Waiting.",
    )
    started_at = models.DateTimeField("actual start date/time", null=True, blank=True)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    company = models.ForeignKey(
        Company,
        models.PROTECT,
        null=True,
        blank=True,
        verbose_name="company accounts",
        help_text="Default company for new tasks of this job.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="created by",
    )
    run_as = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="run by",
        help_text="The user whose identity the tasks run with; empty means the creator.",
    )
    canceled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="canceled by",
    )
    current_run = models.ForeignKey(
        "BatchJobRun", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    objects = BatchJobQuerySet.as_manager()

    class Meta:
        verbose_name = "batch job"
        indexes = [
            # BatchJob.objects.due(): the tick's "which waiting jobs have reached their start".
            models.Index(
                fields=["scheduled_start"],
                name="job_due_idx",
                condition=Q(status="waiting"),
            ),
            # The tick's settle pass over running jobs.
            models.Index(
                fields=["status"],
                name="job_running_idx",
                condition=Q(status__in=["executing", "canceling"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pk}: {self.description}"

    def effective_run_as_id(self) -> int | None:
        return self.run_as_id or self.created_by_id

    def is_running(self) -> bool:
        return self.status in RUNNING_JOB_STATUSES

    def is_live(self, at: dt.datetime | None = None) -> bool:
        """Whether the job's status may change by itself soon (pages poll such jobs)."""
        if self.is_running():
            return True
        soon = (at or now()) + dt.timedelta(minutes=5)
        return self.status == BatchStatus.WAITING and self.scheduled_start <= soon

    @property
    def next_run(self) -> dt.datetime | None:
        return self.scheduled_start if self.status == BatchStatus.WAITING else None


class BatchTask(models.Model):
    Status = BatchStatus

    class ConditionType(models.TextChoices):
        ALL = "all", "All"
        ANY = "any", "Any"

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="tasks")
    key = models.CharField(
        "task ID",
        max_length=50,
        help_text="Identifies the task inside its job; conditions and import/export use it.",
    )
    description = models.CharField("task description", max_length=200)
    company = models.ForeignKey(
        Company, models.PROTECT, null=True, blank=True, verbose_name="company accounts"
    )
    process = models.CharField(
        "class name",
        max_length=100,
        help_text="The registered batch process this task runs.",
    )
    parameters = models.JSONField("parameters", default=dict, blank=True)
    group = models.ForeignKey(
        BatchGroup,
        models.PROTECT,
        related_name="tasks",
        verbose_name="batch group",
        help_text="Only servers that serve this group run the task.",
    )
    ignore_failure = models.BooleanField(
        "ignore task failure",
        default=False,
        help_text="If set, failure of this task won't cause the job to fail.",
    )
    max_retries = models.PositiveSmallIntegerField(
        "maximum retries",
        default=0,
        validators=[MaxValueValidator(MAX_RETRIES_LIMIT)],
        help_text="How often a failed attempt is retried (0-5).",
    )
    condition_type = models.CharField(
        "condition type",
        max_length=3,
        choices=ConditionType.choices,
        default=ConditionType.ALL,
        help_text="All: every condition must be met. Any: one is enough.",
    )
    status = models.CharField(
        "status",
        max_length=10,
        choices=BatchStatus.choices,
        default=BatchStatus.WAITING,
    )
    retries = models.PositiveSmallIntegerField("actual retries", default=0)
    # Bookkeeping of the current (or last) attempt.
    attempt = models.PositiveSmallIntegerField(default=0)
    server = models.ForeignKey(
        BatchServer,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="server",
    )
    hostname = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField("start date/time", null=True, blank=True)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)  # not before (retry backoff)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField("progress %", null=True, blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "batch task"
        ordering = ["job", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["job", "key"], name="task_key_unique_in_job"),
            models.CheckConstraint(
                condition=Q(max_retries__lte=MAX_RETRIES_LIMIT),
                name="task_max_retries_0_5",
            ),
        ]
        indexes = [
            # "Is anything of this job still open?" on every task finish.
            models.Index(fields=["job", "status"], name="task_job_status_idx"),
            # The tick's re-dispatch of ready tasks whose message may be lost.
            models.Index(fields=["ready_at"], name="task_ready_idx", condition=Q(status="ready")),
            # The tick's lease expiry.
            models.Index(
                fields=["lease_expires_at"],
                name="task_lease_idx",
                condition=Q(status__in=["executing", "canceling"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.description}"

    def is_open(self) -> bool:
        return self.status in OPEN_TASK_STATUSES


class BatchTaskCondition(models.Model):
    """D365 "Has conditions": ``task`` runs when ``depends_on`` reaches ``expected_status``."""

    class ExpectedStatus(models.TextChoices):
        ENDED = "ended", "Ended"
        ERROR = "error", "Error"
        ENDED_OR_ERROR = "ended_or_error", "Ended or error"

    task = models.ForeignKey(BatchTask, models.CASCADE, related_name="conditions")
    depends_on = models.ForeignKey(
        BatchTask, models.CASCADE, related_name="dependents", verbose_name="task ID"
    )
    expected_status = models.CharField(
        "expected status",
        max_length=14,
        choices=ExpectedStatus.choices,
        default=ExpectedStatus.ENDED,
        help_text="Status the parent task must reach for this task to start.",
    )

    class Meta:
        verbose_name = "task condition"
        constraints = [
            models.CheckConstraint(condition=~Q(task=F("depends_on")), name="condition_not_self"),
            models.UniqueConstraint(fields=["task", "depends_on"], name="condition_pair_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} after {self.depends_on_id} {self.expected_status}"


class BatchJobRun(models.Model):
    """One execution of a job: D365's batch job history row."""

    Status = BatchStatus

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="runs")
    status = models.CharField(max_length=10, choices=BatchStatus.choices)
    scheduled_start = models.DateTimeField("scheduled start date/time")
    started_at = models.DateTimeField("actual start date/time", default=now)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    run_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        related_name="+",
        verbose_name="run by",
    )
    canceled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="canceled by",
    )

    class Meta:
        verbose_name = "batch job run"
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["job", "-started_at"], name="jobrun_job_idx")]

    def __str__(self) -> str:
        return f"run {self.pk} of job {self.job_id}"


class BatchTaskRun(models.Model):
    """One attempt of one task in one job run (D365's batch task history, per attempt)."""

    Status = BatchStatus

    job_run = models.ForeignKey(BatchJobRun, models.CASCADE, related_name="task_runs")
    task = models.ForeignKey(BatchTask, models.CASCADE, related_name="runs")
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=BatchStatus.choices)
    server = models.ForeignKey(
        BatchServer, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    hostname = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        verbose_name = "batch task run"
        ordering = ["job_run", "task", "attempt"]
        indexes = [models.Index(fields=["task", "attempt"], name="taskrun_task_idx")]

    def __str__(self) -> str:
        return f"task {self.task_id} attempt {self.attempt}"

    def duration(self) -> dt.timedelta | None:
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None


class BatchLogEntry(models.Model):
    """A line a batch process wrote (D365's Infolog: info / warning / error)."""

    class Level(models.IntegerChoices):
        INFO = 20, "Info"
        WARNING = 30, "Warning"
        ERROR = 40, "Error"

    task_run = models.ForeignKey(BatchTaskRun, models.CASCADE, related_name="log_entries")
    created = models.DateTimeField(default=now)
    level = models.PositiveSmallIntegerField(choices=Level.choices, default=Level.INFO)
    message = models.TextField()

    class Meta:
        verbose_name = "log entry"
        verbose_name_plural = "log entries"
        ordering = ["task_run", "pk"]

    def __str__(self) -> str:
        return self.message[:80]


class StatusChange(models.Model):
    """Every change of a job's status, written in the same transaction as the change.

    Alerts and the job timeline read these (healthchecks' Flip). Task attempts have their
    own history in BatchTaskRun.
    """

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="status_changes")
    job_run = models.ForeignKey(
        BatchJobRun,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="status_changes",
    )
    old_status = models.CharField(max_length=10, choices=BatchStatus.choices)
    new_status = models.CharField(max_length=10, choices=BatchStatus.choices)
    reason = models.CharField(max_length=200, blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    at = models.DateTimeField(default=now)
    processed = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "at"]
        indexes = [
            # The alert drain reads unprocessed changes.
            models.Index(fields=["at"], name="statuschange_todo_idx", condition=Q(processed=None))
        ]

    def __str__(self) -> str:
        return f"job {self.job_id}: {self.old_status} -> {self.new_status}"
