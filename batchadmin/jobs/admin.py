from __future__ import annotations

from django.contrib import admin

from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    Company,
    StatusChange,
)


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
    ]
    readonly_fields = ["status", "retries"]
    extra = 0


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin[BatchJob]):
    list_display = [
        "pk",
        "description",
        "status",
        "priority",
        "scheduled_start",
        "started_at",
        "ended_at",
    ]
    list_filter = ["status", "priority"]
    search_fields = ["description"]
    readonly_fields = ["status", "started_at", "ended_at", "current_run", "canceled_by"]
    inlines = [BatchTaskInline]


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
    list_display = ["pk", "job", "old_status", "new_status", "by", "at", "reason"]
    raw_id_fields = ["job", "job_run"]


admin.site.register(Company)
