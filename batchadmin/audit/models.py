"""The audit trail: who did what to which job or setting, when, and why (issue 12).

Entries are written once, in the transaction of the action they record, and never changed:
no page, command or admin screen edits or deletes one. Only the history clean-up deletes old
entries, and only when the managers gave it an audit limit (docs/operator-actions.md).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob


class Action(models.TextChoices):
    # Operator actions on a run
    STATUS = "status", "Change status"
    SKIP = "skip", "Skip task"
    RUN_NOW = "run_now", "Run now"
    RERUN_FAILED = "rerun_failed", "Rerun failed"
    RERUN_FROM = "rerun_from", "Rerun from a task"
    RERUN_ALL = "rerun_all", "Rerun the whole job"
    BACKFILL = "backfill", "Backfill"
    # Edits of a job
    JOB_CREATE = "job_create", "Create job"
    JOB_EDIT = "job_edit", "Edit job"
    JOB_COPY = "job_copy", "Copy job"
    JOB_IMPORT = "job_import", "Import job"
    TASK_ADD = "task_add", "Add task"
    TASK_EDIT = "task_edit", "Edit task"
    TASK_DELETE = "task_delete", "Delete task"
    RECURRENCE_EDIT = "recurrence_edit", "Edit recurrence"
    RECURRENCE_REMOVE = "recurrence_remove", "Remove recurrence"
    RECURRENCE_PAUSE = "recurrence_pause", "Pause recurrence"
    RECURRENCE_RESUME = "recurrence_resume", "Resume recurrence"
    ALERTS_EDIT = "alerts_edit", "Edit alerts"
    TRIGGER_EDIT = "trigger_edit", "Edit trigger"
    # Settings that are no job's
    RULE_ADD = "rule_add", "Add alert rule"
    RULE_EDIT = "rule_edit", "Edit alert rule"
    RULE_DELETE = "rule_delete", "Delete alert rule"
    GROUP_ADD = "group_add", "Add batch group"
    GROUP_EDIT = "group_edit", "Edit batch group"
    GROUP_DELETE = "group_delete", "Delete batch group"
    SERVER_ADD = "server_add", "Add batch server"
    SERVER_EDIT = "server_edit", "Edit batch server"
    SERVER_DELETE = "server_delete", "Delete batch server"
    PERIOD_ADD = "period_add", "Add active period"
    PERIOD_EDIT = "period_edit", "Edit active period"
    PERIOD_DELETE = "period_delete", "Delete active period"


class Via(models.TextChoices):
    WEB = "web", "Pages"
    CLI = "cli", "Command line"
    IMPORT = "import", "Import"
    API = "api", "REST API"
    SCHEDULER = "tick", "Scheduler"  # the engine on its own (a pause that ends at its date)


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def of_job(self, job_id: int) -> AuditEntryQuerySet:
        return self.filter(job_id=job_id)


class AuditEntry(models.Model):
    """One operator action. Immutable: written in the action's transaction, never updated."""

    Action = Action
    Via = Via

    at = models.DateTimeField("when", default=now)
    # No foreign key constraints on the user and the job: an entry outlives both, keeps their
    # ids (and the user's name, below), and deleting a job or a user never touches the trail.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="user",
    )
    username = models.CharField("user name", max_length=150, blank=True)
    action = models.CharField("action", max_length=20, choices=Action.choices)
    via = models.CharField("through", max_length=6, choices=Via.choices, default=Via.WEB)
    job = models.ForeignKey(
        BatchJob,
        models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="batch job",
    )
    target = models.CharField(
        "object", max_length=200, blank=True, help_text="What was acted on: task T2, group X."
    )
    changes = models.JSONField(
        "changes", default=dict, blank=True, help_text="Field: [before, after]."
    )
    reason = models.TextField("reason", blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"
        ordering = ["-at", "-pk"]
        indexes = [
            # The job page's trail and `batch audit JOB_ID`.
            models.Index(fields=["job", "-at"], name="audit_job_idx"),
            # The audit page (newest first, a time range) and the clean-up ("older than").
            models.Index(fields=["-at"], name="audit_at_idx"),
        ]

    def __str__(self) -> str:
        who = self.username or "system"
        return f"{self.at:%Y-%m-%d %H:%M:%S} {who}: {self.get_action_display()} {self.target}"

    def change_list(self) -> list[tuple[str, str, str]]:
        """(field, before, after) in the order they were recorded, as text."""
        return [
            (name, _text(pair[0]), _text(pair[1]))
            for name, pair in self.changes.items()
            if isinstance(pair, list) and len(pair) == 2
        ]


def _text(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "—"
    return str(value)
