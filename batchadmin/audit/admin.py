from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from batchadmin.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin[AuditEntry]):
    """Read-only, even for superusers: the trail is changed by nobody (docs/operator-actions.md)."""

    list_display = ["at", "username", "action", "via", "job_id", "target", "reason"]
    list_filter = ["action", "via"]
    search_fields = ["username", "target", "reason"]
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
