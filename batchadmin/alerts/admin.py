from __future__ import annotations

from django.contrib import admin

from batchadmin.alerts.models import BatchJobAlert


@admin.register(BatchJobAlert)
class BatchJobAlertAdmin(admin.ModelAdmin[BatchJobAlert]):
    list_display = ["pk", "job", "user", "ended", "error", "canceled", "popup", "email"]
    list_filter = ["ended", "error", "canceled", "popup", "email"]
    raw_id_fields = ["job", "user"]
