from __future__ import annotations

from django.contrib import admin

from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)


class ScheduleInline(admin.TabularInline[BatchServerSchedule, BatchServer]):
    model = BatchServerSchedule
    extra = 0


@admin.register(BatchServer)
class BatchServerAdmin(admin.ModelAdmin[BatchServer]):
    list_display = ["name", "enabled", "time_zone", "description"]
    filter_horizontal = ["groups"]
    inlines = [ScheduleInline]


@admin.register(BatchGroup)
class BatchGroupAdmin(admin.ModelAdmin[BatchGroup]):
    list_display = [
        "code",
        "description",
        "default_priority",
        "max_concurrency",
        "max_tasks",
        "reserved_capacity",
    ]


@admin.register(BatchServerReplica)
class BatchServerReplicaAdmin(admin.ModelAdmin[BatchServerReplica]):
    list_display = [
        "hostname",
        "server",
        "pid",
        "concurrency",
        "busy",
        "last_heartbeat",
    ]
