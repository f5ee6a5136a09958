from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin
from django.forms.models import construct_instance
from django.http import HttpRequest

from batchadmin.jobs.models import (
    ActivePeriod,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    Calendar,
    CalendarDate,
    Company,
    MissedOccurrence,
    QueuedRun,
    StatusChange,
)
from batchadmin.jobs.recurrence_forms import OnCalendarDateField, OverlapField, RecurrenceForm
from batchadmin.lib import recurrence


class BatchTaskInline(admin.TabularInline[BatchTask, BatchJob]):
    model = BatchTask
    fields = [
        "key",
        "description",
        "process",
        "group",
        "status",
        "retries",
        "max_retries",
        "ignore_failure",
        "time_limit",
    ]
    readonly_fields = ["status", "retries"]
    extra = 0


class BatchRecurrenceAdminForm(forms.ModelForm[BatchRecurrence]):
    """Refuse a rule the engine cannot compute (the dialog's form checks the same)."""

    on_calendar_date = OnCalendarDateField()
    overlap = OverlapField()

    class Meta:
        model = BatchRecurrence
        fields = ["job", *RecurrenceForm.Meta.fields]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None
        if not self.errors:
            candidate = construct_instance(self, copy.copy(self.instance))
            try:
                candidate.rule().check()
            except recurrence.RuleError as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


class BatchRecurrenceInline(admin.StackedInline[BatchRecurrence, BatchJob]):
    # The admin saves the row as it is; the Recurrence dialog (recurrence_forms.RecurrenceForm)
    # also restarts End after and reschedules the job.
    model = BatchRecurrence
    form = BatchRecurrenceAdminForm
    readonly_fields = ["runs"]
    extra = 0


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin[BatchJob]):
    list_display = [
        "pk",
        "description",
        "status",
        "priority",
        "save_history",
        "critical",
        "scheduled_start",
        "started_at",
        "ended_at",
    ]
    list_filter = ["status", "priority", "save_history", "critical"]
    search_fields = ["description"]
    readonly_fields = ["status", "started_at", "ended_at", "current_run", "canceled_by"]
    inlines = [BatchRecurrenceInline, BatchTaskInline]


@admin.register(BatchTask)
class BatchTaskAdmin(admin.ModelAdmin[BatchTask]):
    list_display = [
        "pk",
        "job",
        "key",
        "description",
        "process",
        "group",
        "status",
        "retries",
    ]
    list_filter = ["status", "group"]
    search_fields = ["description", "key", "process"]
    raw_id_fields = ["job"]


@admin.register(BatchTaskCondition)
class BatchTaskConditionAdmin(admin.ModelAdmin[BatchTaskCondition]):
    list_display = ["pk", "task", "depends_on", "expected_status"]
    raw_id_fields = ["task", "depends_on"]


@admin.register(BatchJobRun)
class BatchJobRunAdmin(admin.ModelAdmin[BatchJobRun]):
    list_display = ["pk", "job", "status", "scheduled_start", "started_at", "ended_at"]
    list_filter = ["status"]
    raw_id_fields = ["job"]


@admin.register(BatchTaskRun)
class BatchTaskRunAdmin(admin.ModelAdmin[BatchTaskRun]):
    list_display = [
        "pk",
        "task",
        "attempt",
        "status",
        "server",
        "started_at",
        "ended_at",
    ]
    list_filter = ["status", "server"]
    raw_id_fields = ["job_run", "task"]


@admin.register(BatchLogEntry)
class BatchLogEntryAdmin(admin.ModelAdmin[BatchLogEntry]):
    list_display = ["pk", "task_run", "level", "created", "message"]
    list_filter = ["level"]
    raw_id_fields = ["task_run"]


@admin.register(StatusChange)
class StatusChangeAdmin(admin.ModelAdmin[StatusChange]):
    """The status history is the record of who changed what and when: only
    transitions.py writes it and only the history clean-up deletes it, so the admin reads."""

    list_display = ["pk", "job", "old_status", "new_status", "by", "at", "reason"]
    list_filter = ["new_status"]
    raw_id_fields = ["job", "job_run"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: StatusChange | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StatusChange | None = None) -> bool:
        return False


@admin.register(QueuedRun)
class QueuedRunAdmin(admin.ModelAdmin[QueuedRun]):
    """The runs owed to jobs (triggers, backfills): the engine's outbox, so the admin reads.
    Deleting a pending row is the one way to take back a backfill's remaining runs."""

    list_display = [
        "pk",
        "job",
        "kind",
        "after_job",
        "after_run_id",
        "occurrence",
        "created",
        "done_at",
        "run",
        "note",
    ]
    list_filter = ["kind"]
    raw_id_fields = ["job", "after_job", "run", "requested_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: QueuedRun | None = None) -> bool:
        return False


admin.site.register(Company)


@admin.register(ActivePeriod)
class ActivePeriodAdmin(admin.ModelAdmin[ActivePeriod]):
    list_display = ["code", "name", "start_time", "end_time", "time_zone"]
    search_fields = ["code", "name"]


class CalendarDateInline(admin.TabularInline[CalendarDate, Calendar]):
    model = CalendarDate
    extra = 0


@admin.register(Calendar)
class CalendarAdmin(admin.ModelAdmin[Calendar]):
    list_display = ["code", "description", "modified"]
    search_fields = ["code", "description"]
    inlines = [CalendarDateInline]


@admin.register(BatchRecurrence)
class BatchRecurrenceAdmin(admin.ModelAdmin[BatchRecurrence]):
    form = BatchRecurrenceAdminForm
    list_display = ["pk", "job", "describe", "missed", "runs"]
    list_filter = ["unit", "missed"]
    raw_id_fields = ["job"]
    readonly_fields = ["runs"]


@admin.register(MissedOccurrence)
class MissedOccurrenceAdmin(admin.ModelAdmin[MissedOccurrence]):
    list_display = ["pk", "job", "scheduled_start", "last_scheduled_start", "occurrences", "reason"]
    list_filter = ["reason"]
    raw_id_fields = ["job"]
