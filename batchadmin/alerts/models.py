from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob, Priority
from batchadmin.lib import outbound
from batchadmin.servers.models import CODE_VALIDATOR, BatchGroup


class BatchJobAlert(models.Model):
    """D365 Alerts: which ends of a job one user hears about, and how.

    A row without any of ended / error / canceled means nothing; the Alerts dialog deletes the
    row instead of keeping it. Delivery (popup notifications, e-mail) reads these rows.
    """

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="alerts")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="batch_alerts")
    ended = models.BooleanField("ended", default=False, help_text="When the job ends.")
    error = models.BooleanField("error", default=False, help_text="When the job ends in Error.")
    canceled = models.BooleanField("canceled", default=False, help_text="When the job is canceled.")
    # Beyond D365: a run at risk of missing the job's deadline, or that missed it.
    deadline = models.BooleanField(
        "deadline",
        default=False,
        help_text="When a run is at risk of missing the job's deadline, and when it missed it.",
    )
    popup = models.BooleanField(
        "popup", default=True, help_text="A notification on the batchadmin pages."
    )
    email = models.BooleanField(
        "e-mail", default=False, help_text="An e-mail to the address of your account."
    )
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "batch job alert"
        constraints = [
            models.UniqueConstraint(fields=["job", "user"], name="alert_job_user_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} on job {self.job_id}: {self.describe() or 'nothing'}"

    def events(self) -> list[str]:
        chosen = [
            ("Ended", self.ended),
            ("Error", self.error),
            ("Canceled", self.canceled),
            ("Deadline", self.deadline),
        ]
        return [label for label, on in chosen if on]

    def channels(self) -> list[str]:
        return [label for label, on in [("popup", self.popup), ("e-mail", self.email)] if on]

    def describe(self) -> str:
        """'Error (popup, e-mail)'; empty when no event is chosen."""
        events = self.events()
        if not events:
            return ""
        channels = self.channels()
        return ", ".join(events) + (f" ({', '.join(channels)})" if channels else "")


class AlertKind(models.TextChoices):
    ENDED = "ended", "Ended"
    ERROR = "error", "Error"
    CANCELED = "canceled", "Canceled"
    # Beyond D365: a job that runs far longer than usual, a due job nothing can start.
    LONG_RUNNING = "long_running", "Running long"
    UNSERVED = "unserved", "Cannot start"
    # A run of a job with a deadline (alerts/deadlines.py).
    AT_RISK = "at_risk", "Deadline at risk"
    MISSED = "missed", "Deadline missed"


STUCK_KINDS = (AlertKind.LONG_RUNNING, AlertKind.UNSERVED)
DEADLINE_KINDS = (AlertKind.AT_RISK, AlertKind.MISSED)


def subscription_field(kind: str) -> str:
    """The field of BatchJobAlert and AlertRule that asks for alerts of ``kind``."""
    if kind in STUCK_KINDS:
        return "stuck"
    if kind in DEADLINE_KINDS:
        return "deadline"
    return kind


class AlertEvent(models.Model):
    """The outbox: something happened that someone may need to hear about.

    Written in the same transaction as the status change that caused it. ``key`` is unique
    ("run:<run id>:error"), so a finish that runs twice, two workers or two beats racing write
    one row between them; delivery (fan-out to ``Notification`` rows, e-mail) happens later in
    a Celery task and marks ``processed_at`` (D365's "alerts processed").
    """

    Kind = AlertKind

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="alert_events")
    job_run = models.ForeignKey(
        "jobs.BatchJobRun", models.SET_NULL, null=True, blank=True, related_name="alert_events"
    )
    kind = models.CharField(max_length=12, choices=AlertKind.choices)
    key = models.CharField(max_length=100, unique=True)
    # A snapshot for the message (job description, status, times, failing tasks with their
    # first error line, the reason of a stuck alert): history may be gone when it is sent.
    details = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        verbose_name = "alert event"
        ordering = ["-created"]
        indexes = [
            # The tick's sweep for events whose delivery message was lost.
            models.Index(
                fields=["created"], name="alertevent_pending_idx", condition=Q(processed_at=None)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: job {self.job_id}"


class Notification(models.Model):
    """One alert for one user: the popup (bell, toast) and the e-mail state."""

    class Email(models.TextChoices):
        NONE = "none", "Not wanted"
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    event = models.ForeignKey(AlertEvent, models.CASCADE, related_name="notifications")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="batch_notifications"
    )
    popup = models.BooleanField(default=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # The toast shows each popup once per browser tab poll; this marks it seen by any tab.
    toasted_at = models.DateTimeField(null=True, blank=True)
    email = models.CharField(max_length=7, choices=Email.choices, default=Email.NONE)
    email_attempts = models.PositiveSmallIntegerField(default=0)
    email_attempt_at = models.DateTimeField(null=True, blank=True)  # the last attempt's claim
    email_sent_at = models.DateTimeField(null=True, blank=True)
    email_error = models.TextField(blank=True)
    created = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "notification"
        ordering = ["-created", "-pk"]
        constraints = [
            # Exactly one alert per user per event, however often delivery runs.
            models.UniqueConstraint(fields=["event", "user"], name="notification_event_user"),
        ]
        indexes = [
            models.Index(
                fields=["user", "-created"],
                name="notification_unread_idx",
                condition=Q(popup=True, read_at=None),
            ),
            # The tick's sweep for e-mails to retry or stuck "sending": a handful of rows
            # among every notification ever sent.
            models.Index(
                fields=["email_attempt_at"],
                name="notification_email_open_idx",
                condition=Q(email__in=["pending", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} for {self.user}"


def validate_webhook_url(url: str) -> None:
    """http(s) only; private and loopback addresses only where the setting allows them."""
    try:
        outbound.check_url(url, allow_private=settings.BATCH_WEBHOOK_ALLOW_PRIVATE)
    except outbound.Refused as exc:
        raise ValidationError(str(exc)) from None


class Webhook(models.Model):
    """Beyond D365 (its business events): an HTTP endpoint alerts are posted to.

    Set up by Batch job managers; chosen in a job's Alerts dialog and in alert rules. Every
    request carries ``X-Batchadmin-Signature: sha256=<HMAC-SHA256 of the body with the secret>``.
    """

    class Format(models.TextChoices):
        JSON = "json", "JSON"
        TEAMS = "teams", "Microsoft Teams"
        SLACK = "slack", "Slack"

    code = models.CharField(
        "webhook",
        max_length=50,
        unique=True,
        validators=[CODE_VALIDATOR],
        help_text="Identifier, e.g. ops-teams; import files name webhooks by it.",
    )
    description = models.CharField("description", max_length=200, blank=True)
    url = models.URLField(
        "URL",
        max_length=500,
        validators=[validate_webhook_url],
        help_text="Where alerts are posted: an http(s) address, e.g. a Teams or Slack "
        "incoming webhook.",
    )
    secret = models.CharField(
        "secret",
        max_length=200,
        help_text="Signs every request (X-Batchadmin-Signature: sha256=HMAC of the body), so "
        "the receiver can tell the alert came from here.",
    )
    format = models.CharField(
        "format",
        max_length=5,
        choices=Format.choices,
        default=Format.JSON,
        help_text="JSON for your own receiver; Teams and Slack post a message to a channel.",
    )
    enabled = models.BooleanField(
        "enabled", default=True, help_text="A disabled webhook is sent nothing."
    )
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["code"]
        verbose_name = "webhook"

    def __str__(self) -> str:
        return self.code


class AlertRule(models.Model):
    """Beyond D365: a subscription to every job of a batch group and/or a priority.

    Empty group and empty priority mean every job.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="alert_rules")
    group = models.ForeignKey(
        BatchGroup,
        models.CASCADE,
        null=True,
        blank=True,
        related_name="alert_rules",
        verbose_name="batch group",
        help_text="Jobs with a task in this group; empty means any group.",
    )
    priority = models.PositiveSmallIntegerField(
        "scheduling priority",
        choices=Priority.choices,
        null=True,
        blank=True,
        help_text="Jobs with this priority; empty means any priority.",
    )
    ended = models.BooleanField("ended", default=False)
    error = models.BooleanField("error", default=True)
    canceled = models.BooleanField("canceled", default=False)
    stuck = models.BooleanField(
        "stuck",
        default=False,
        help_text="Running far longer than usual, or due and no online server serves its group.",
    )
    deadline = models.BooleanField(
        "deadline",
        default=False,
        help_text="A run at risk of missing its job's deadline, or that missed it.",
    )
    popup = models.BooleanField("popup", default=True)
    email = models.BooleanField("e-mail", default=False)
    webhooks = models.ManyToManyField(
        Webhook,
        blank=True,
        related_name="rules",
        verbose_name="webhooks",
        help_text="Also post these alerts to these webhooks.",
    )
    created = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "alert rule"
        ordering = ["user", "pk"]

    def __str__(self) -> str:
        scope = " ".join(
            part
            for part in [
                f"group {self.group}" if self.group_id else "",
                f"priority {self.get_priority_display()}" if self.priority else "",
            ]
            if part
        )
        return f"{self.user}: {scope or 'all jobs'}"

    def wants(self, kind: str) -> bool:
        return bool(getattr(self, subscription_field(kind), False))


class JobWebhook(models.Model):
    """The Alerts dialog's webhooks: which ends of a job are posted to a webhook."""

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="webhooks")
    webhook = models.ForeignKey(Webhook, models.CASCADE, related_name="jobs")
    ended = models.BooleanField("ended", default=False)
    error = models.BooleanField("error", default=False)
    canceled = models.BooleanField("canceled", default=False)
    deadline = models.BooleanField("deadline", default=False)

    class Meta:
        verbose_name = "job webhook"
        constraints = [
            models.UniqueConstraint(fields=["job", "webhook"], name="jobwebhook_job_webhook"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} -> {self.webhook_id}"

    def events(self) -> list[str]:
        return [k for k in ("ended", "error", "canceled", "deadline") if getattr(self, k)]


class WebhookDelivery(models.Model):
    """One alert event posted to one webhook: the outbox row and the delivery log."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    event = models.ForeignKey(AlertEvent, models.CASCADE, related_name="webhook_deliveries")
    webhook = models.ForeignKey(Webhook, models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=7, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    attempt_at = models.DateTimeField(null=True, blank=True)  # the last attempt's claim
    sent_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField("last HTTP status", null=True, blank=True)
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created", "-pk"]
        constraints = [
            # Exactly one request per event and webhook, however often delivery runs.
            models.UniqueConstraint(fields=["event", "webhook"], name="webhookdelivery_once"),
        ]
        indexes = [
            # The tick's sweep for deliveries to retry or stuck "sending".
            models.Index(
                fields=["attempt_at"],
                name="webhookdelivery_open_idx",
                condition=Q(state__in=["pending", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id}: {self.state}"
