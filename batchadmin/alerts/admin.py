from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from batchadmin.alerts.models import (
    AlertEvent,
    AlertRule,
    BatchJobAlert,
    JobWebhook,
    Notification,
    Webhook,
    WebhookDelivery,
)


@admin.register(BatchJobAlert)
class BatchJobAlertAdmin(admin.ModelAdmin[BatchJobAlert]):
    list_display = ["pk", "job", "user", "ended", "error", "canceled", "popup", "email"]
    list_filter = ["ended", "error", "canceled", "popup", "email"]
    raw_id_fields = ["job", "user"]


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin[AlertRule]):
    list_display = [
        "pk",
        "user",
        "group",
        "priority",
        "ended",
        "error",
        "canceled",
        "stuck",
        "popup",
        "email",
    ]
    list_filter = ["group", "priority", "ended", "error", "canceled", "stuck", "popup", "email"]
    raw_id_fields = ["user"]


NOTIFICATION_FIELDS = (
    "user",
    "popup",
    "read_at",
    "email",
    "email_attempts",
    "email_sent_at",
    "email_error",
)


class NotificationInline(admin.TabularInline[Notification, AlertEvent]):
    model = Notification
    fields = NOTIFICATION_FIELDS
    readonly_fields = NOTIFICATION_FIELDS
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: AlertEvent | None = None) -> bool:
        return False


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin[AlertEvent]):
    """The outbox, to look into: events are written by the engine and delivered by workers."""

    list_display = ["pk", "created", "kind", "job", "key", "processed_at", "attempts"]
    list_filter = ["kind", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["key", "job__description"]
    date_hierarchy = "created"
    readonly_fields = ["job", "job_run", "kind", "key", "details", "created"]
    fields = ["job", "job_run", "kind", "key", "details", "created", "processed_at", "attempts"]
    inlines = [NotificationInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin[Notification]):
    list_display = [
        "pk",
        "created",
        "event",
        "user",
        "popup",
        "read_at",
        "email",
        "email_attempts",
        "email_sent_at",
    ]
    list_filter = ["email", "popup", "event__kind"]
    search_fields = ["user__username", "user__email", "email_error"]
    date_hierarchy = "created"
    list_select_related = ["event", "user"]
    raw_id_fields = ["event", "user"]
    # An operator may reset a failed e-mail to pending (the sweep resends it); nothing else.
    readonly_fields = [
        "event",
        "user",
        "popup",
        "read_at",
        "toasted_at",
        "email_attempts",
        "email_sent_at",
        "email_error",
        "created",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin[Webhook]):
    list_display = ["code", "format", "url", "enabled"]
    list_filter = ["format", "enabled"]
    # An address typed without a scheme is https (Django 6's default; 5.2 warns otherwise).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(JobWebhook)
class JobWebhookAdmin(admin.ModelAdmin[JobWebhook]):
    list_display = ["pk", "job", "webhook", "ended", "error", "canceled"]
    raw_id_fields = ["job"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    """The delivery log. To try a failed request once more, set it back to pending."""

    list_display = ["pk", "webhook", "event", "state", "attempts", "last_status", "sent_at"]
    list_filter = ["state", "webhook"]
    raw_id_fields = ["event"]
    readonly_fields = ["created", "attempt_at", "sent_at", "last_status", "last_error"]
