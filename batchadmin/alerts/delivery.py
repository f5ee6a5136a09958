"""Alert delivery: one AlertEvent becomes Notification rows (popups) and e-mails.

Runs in the Celery task ``batchadmin.deliver_alerts`` (alerts/tasks.py) on the alerts queue,
which every batch server consumes; never in a request, never in the transaction that ended the
job. A slow mail server or a long list of subscribers neither holds the job lock nor fails the
job. (AX 2012 sent alerts only for runs it saved to history; here the event carries its own
snapshot of the run, so alerts do not depend on Save job to history.)

1. Fan-out, once per event: each recipient (``recipients()``) gets one Notification, inserted
   with ON CONFLICT DO NOTHING against the unique (event, user), and the event is marked
   processed. Deliveries that race, or run twice, leave one row per user between them.
2. E-mail, once per notification: a delivery claims a pending e-mail with a conditional UPDATE
   (pending -> sending) and only the winner sends it. A failed attempt goes back to pending
   with its error and the task retries after a backoff (30 s doubling, capped at 30 min, by
   default); after BATCH_ALERT_EMAIL_ATTEMPTS attempts the e-mail is marked failed.
3. The tick's sweep (``handle_undelivered``) is the safety net: it resends the delivery of
   events whose message was lost and of e-mails whose retry is overdue, and frees e-mails whose
   worker died while sending.

E-mail is at least once, not exactly once: a worker that dies after the mail server accepted a
message and before it marked the e-mail sent leaves it "sending", and the sweep sends it again.

``Notification.email_attempt_at`` is when the last attempt claimed the e-mail: the backoff and
the "sending too long" check count from there. ``email_sent_at`` is when the server accepted it.
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.timezone import now

from batchadmin.accounts.models import MANAGER, UserPreference
from batchadmin.alerts import outbox, webhooks
from batchadmin.alerts.models import (
    DEADLINE_KINDS,
    STUCK_KINDS,
    AlertEvent,
    AlertKind,
    AlertRule,
    BatchJobAlert,
    JobWebhook,
    Notification,
    Webhook,
    WebhookDelivery,
    subscription_field,
)
from batchadmin.jobs.models import BatchStatus, BatchTask
from batchadmin.lib import broker, durations, every

log = logging.getLogger(__name__)
Email = Notification.Email

# The kinds D365's per-job Alerts settings choose from; stuck alerts come from rules only.
PER_JOB_KINDS = (AlertKind.ENDED, AlertKind.ERROR, AlertKind.CANCELED, *DEADLINE_KINDS)
# Errors about one message (this recipient, this content): the mail server itself works, so the
# other e-mails of the delivery are still tried. Any other OSError (smtplib's errors are
# OSErrors) means the server is down or refuses us, and the rest of the delivery waits too.
MESSAGE_ERRORS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
    smtplib.SMTPNotSupportedError,
)
# The headline of the message: "Batch job 42 ended in Error".
HEADLINES = {
    AlertKind.ENDED: "ended",
    AlertKind.ERROR: "ended in Error",
    AlertKind.CANCELED: "was canceled",
    AlertKind.LONG_RUNNING: "is running far longer than usual",
    AlertKind.UNSERVED: "cannot start",
    AlertKind.AT_RISK: "may miss its deadline",
    AlertKind.MISSED: "missed its deadline",
}
INTERRUPTED = "The worker sending this e-mail stopped before it finished; sending it again."
INTERRUPTED_POST = "The worker posting this request stopped before it finished; posting it again."


@dataclass
class Recipient:
    user_id: int
    popup: bool = False
    email: bool = False

    def add(self, *, popup: bool, email: bool) -> None:
        # One alert per user: the channels of every reason they have are merged.
        self.popup |= popup
        self.email |= email


@dataclass
class Result:
    """What one delivery did; ``retry_in``: seconds until an e-mail it failed may be retried."""

    notified: int = 0
    sent: int = 0
    posted: int = 0  # webhook requests answered 2xx
    failed: int = 0
    retry_in: float | None = None


def backoff(attempts: int) -> dt.timedelta:
    """The wait after failed attempt number ``attempts`` (1-based): doubling, capped."""
    seconds = settings.BATCH_ALERT_RETRY_SECONDS * 2 ** max(attempts - 1, 0)
    return dt.timedelta(seconds=min(seconds, settings.BATCH_ALERT_RETRY_MAX_SECONDS))


# --- who hears about it ---------------------------------------------------------------------


def recipients(event: AlertEvent) -> list[Recipient]:
    """Who gets this event and how, one entry per active user (ordered by user id).

    1. D365's per-job, per-user Alerts settings that chose this kind (ended/error/canceled).
    2. Alert rules (beyond D365) whose batch group is one of the job's tasks' groups and whose
       priority is one its tasks ran with (the job's when it overrides, else their groups'),
       empty meaning any, that want this kind.
    3. A critical job in Error: every batch job manager, popup and e-mail.
    A user who wants e-mail but has no address gets a popup instead.
    """
    kind = AlertKind(event.kind)
    wanted: dict[int, Recipient] = {}

    def want(user_id: int, *, popup: bool, email: bool) -> None:
        wanted.setdefault(user_id, Recipient(user_id)).add(popup=popup, email=email)

    if kind in PER_JOB_KINDS:
        alerts = BatchJobAlert.objects.filter(
            job_id=event.job_id, **{subscription_field(kind): True}
        )
        for user_id, popup, email in alerts.values_list("user_id", "popup", "email"):
            want(user_id, popup=popup, email=email)
    for rule in matching_rules(event):
        want(rule.user_id, popup=rule.popup, email=rule.email)
    if kind == AlertKind.ERROR and event.details.get("critical", event.job.critical):
        managers = get_user_model().objects.filter(groups__name=MANAGER)
        for user_id in managers.values_list("pk", flat=True):
            want(user_id, popup=True, email=True)

    addresses = dict(
        get_user_model()
        .objects.filter(pk__in=list(wanted), is_active=True)
        .values_list("pk", "email")
    )
    chosen = []
    for user_id, recipient in sorted(wanted.items()):
        if user_id not in addresses:
            continue  # deactivated
        if recipient.email and not addresses[user_id]:
            log.warning(
                "User %s wants alert e-mails but has no e-mail address: popup only (%s)",
                user_id,
                event,
            )
            recipient.email, recipient.popup = False, True
        if recipient.popup or recipient.email:
            chosen.append(recipient)
    return chosen


def matching_rules(event: AlertEvent) -> list[AlertRule]:
    """Alert rules whose batch group is one of the job's tasks' groups and whose priority is one
    its tasks ran with (empty meaning any), that want this kind of event."""
    # The priorities its tasks ran with, from the end-of-run snapshot; a stuck alert is about a
    # job that still runs, so its tasks' priorities now.
    priorities = event.details.get("priorities")
    if priorities is None:
        priorities = outbox.priorities(event.job)
    groups = BatchTask.objects.filter(job_id=event.job_id).values("group_id")
    rules = AlertRule.objects.filter(
        Q(group=None) | Q(group__in=groups), Q(priority=None) | Q(priority__in=priorities)
    )
    return [rule for rule in rules if rule.wants(event.kind)]


def webhook_targets(event: AlertEvent, rules: list[AlertRule]) -> list[int]:
    """The enabled webhooks this event goes to: the job's (its Alerts dialog, for Ended, Error,
    Canceled and its deadline) and those of the alert rules it matches, each once."""
    kind = AlertKind(event.kind)
    chosen: set[int] = set()
    if kind in PER_JOB_KINDS:
        per_job = JobWebhook.objects.filter(job_id=event.job_id, **{subscription_field(kind): True})
        chosen.update(per_job.values_list("webhook_id", flat=True))
    if rules:
        by_rule = AlertRule.webhooks.through.objects.filter(alertrule_id__in=[r.pk for r in rules])
        chosen.update(by_rule.values_list("webhook_id", flat=True))
    if not chosen:
        return []
    enabled = Webhook.objects.filter(pk__in=chosen, enabled=True)
    return sorted(enabled.values_list("pk", flat=True))


def fan_out(event: AlertEvent) -> int:
    """Create the event's notifications and mark it processed; returns the recipients."""
    AlertEvent.objects.filter(pk=event.pk, processed_at=None).update(attempts=F("attempts") + 1)
    chosen = recipients(event)
    # The rules once more (one query): recipients() is the people's, whole on its own.
    hooks = webhook_targets(event, matching_rules(event))
    at = now()
    with transaction.atomic():
        WebhookDelivery.objects.bulk_create(
            [WebhookDelivery(event=event, webhook_id=pk, created=at) for pk in hooks],
            ignore_conflicts=True,  # another delivery of this event got there first
        )
        Notification.objects.bulk_create(
            [
                Notification(
                    event=event,
                    user_id=r.user_id,
                    popup=r.popup,
                    email=Email.PENDING if r.email else Email.NONE,
                    created=at,
                )
                for r in chosen
            ],
            ignore_conflicts=True,  # another delivery of this event got there first
        )
        AlertEvent.objects.filter(pk=event.pk, processed_at=None).update(processed_at=at)
    return len(chosen)


def deliver(event_id: int) -> Result | None:
    """Fan the event out (the first time) and send its e-mails that are due.

    None when the event is gone: its job was deleted after it ended, and nobody is left to
    tell. Safe to call any number of times, also concurrently.
    """
    event = AlertEvent.objects.select_related("job").filter(pk=event_id).first()
    if event is None:
        log.info("Alert event %s no longer exists (its job was deleted); nothing to send", event_id)
        return None
    result = Result()
    if event.processed_at is None:
        result.notified = fan_out(event)
    send_emails(event, result)
    posted, retry_in = webhooks.send(event, message_context(event), backoff)
    result.posted += posted
    if retry_in is not None:
        result.retry_in = min(retry_in, result.retry_in or retry_in)
    return result


# --- e-mail ---------------------------------------------------------------------------------


def send_emails(event: AlertEvent, result: Result) -> None:
    pending = list(
        Notification.objects.filter(event=event, email=Email.PENDING)
        .select_related("user")
        .order_by("pk")
    )
    connection: Any = None
    down = ""  # the mail server's error, once it failed: the rest of this run waits too
    try:
        for notification in pending:
            if not is_due(notification, now()):
                continue
            claimed_at = claim(notification)
            if claimed_at is None:
                continue  # another delivery has it, or had it
            if down:
                attempt_failed(notification, down, claimed_at, result)
                continue
            try:
                message = build_message(event, notification)
                if message is None:
                    continue
                if connection is None:
                    connection = mail.get_connection()
                    connection.open()  # one connection for all of them, not one per message
                connection.send_messages([message])
            except MESSAGE_ERRORS as exc:
                attempt_failed(notification, describe(exc), claimed_at, result)
            except OSError as exc:
                down = describe(exc)
                attempt_failed(notification, down, claimed_at, result)
            except Exception as exc:
                log.exception("Could not build or send alert e-mail %s", notification.pk)
                attempt_failed(notification, describe(exc), claimed_at, result)
            else:
                Notification.objects.filter(pk=notification.pk).update(
                    email=Email.SENT, email_sent_at=now(), email_error=""
                )
                result.sent += 1
    finally:
        if connection is not None:
            try:
                connection.close()
            except OSError:
                log.warning("Could not close the connection to the mail server", exc_info=True)


def is_due(notification: Notification, at: dt.datetime) -> bool:
    last = notification.email_attempt_at
    attempts = notification.email_attempts
    return attempts == 0 or last is None or last + backoff(attempts) <= at


def claim(notification: Notification) -> dt.datetime | None:
    """Pending -> sending, unless another delivery changed the row since it was read."""
    at = now()
    n = Notification.objects.filter(
        pk=notification.pk, email=Email.PENDING, email_attempts=notification.email_attempts
    ).update(email=Email.SENDING, email_attempt_at=at)
    return at if n == 1 else None


def attempt_failed(
    notification: Notification, error: str, claimed_at: dt.datetime, result: Result
) -> None:
    attempts = notification.email_attempts + 1
    gave_up = attempts >= settings.BATCH_ALERT_EMAIL_ATTEMPTS
    Notification.objects.filter(pk=notification.pk, email=Email.SENDING).update(
        email=Email.FAILED if gave_up else Email.PENDING,
        email_attempts=attempts,
        email_error=error,
    )
    result.failed += 1
    if gave_up:
        log.error(
            "Alert e-mail %s to %s failed %s times; giving up: %s",
            notification.pk,
            notification.user,
            attempts,
            error,
        )
        return
    log.warning("Alert e-mail %s (attempt %s) failed: %s", notification.pk, attempts, error)
    wait = (claimed_at + backoff(attempts) - now()).total_seconds()
    result.retry_in = max(1.0, min(wait, result.retry_in or wait))


def give_up(notification: Notification, error: str) -> None:
    Notification.objects.filter(pk=notification.pk, email=Email.SENDING).update(
        email=Email.FAILED, email_error=error
    )
    log.warning("Alert e-mail %s not sent: %s", notification.pk, error)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def build_message(event: AlertEvent, notification: Notification) -> EmailMultiAlternatives | None:
    """The e-mail for one recipient, times in their zone; None (and failed) when it can't go."""
    user = notification.user
    if not user.is_active or not user.email:
        give_up(notification, "The user has no e-mail address or is deactivated.")
        return None
    context = message_context(event)
    with timezone.override(user_time_zone(user.pk)):
        subject = " ".join(render_to_string("alerts/email/subject.txt", context).split())
        text = render_to_string("alerts/email/body.txt", context)
        html = render_to_string("alerts/email/body.html", context)
    message = EmailMultiAlternatives(
        subject,
        text,
        to=[user.email],
        headers={
            # RFC 3834: no vacation auto-replies to a machine.
            "Auto-Submitted": "auto-generated",
            "X-Batchadmin-Alert": str(notification.pk),
        },
    )
    message.attach_alternative(html, "text/html")
    return message


def user_time_zone(user_id: int) -> ZoneInfo:
    name = (
        UserPreference.objects.filter(user_id=user_id).values_list("time_zone", flat=True).first()
    )
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def message_context(event: AlertEvent) -> dict[str, Any]:
    details: dict[str, Any] = event.details or {}
    started = _datetime(details.get("started_at"))
    ended = _datetime(details.get("ended_at"))
    failed = list(details.get("failed_tasks") or [])
    failed_count = int(details.get("failed_count") or len(failed))
    status = details.get("status", "")
    kind = AlertKind(event.kind)
    critical = bool(details.get("critical")) and kind == AlertKind.ERROR
    return {
        "kind": kind,
        "headline": f"{'Critical batch job' if critical else 'Batch job'} {event.job_id} "
        f"{HEADLINES[kind]}",
        "stuck": kind in STUCK_KINDS,
        "critical": critical,
        "job_id": event.job_id,
        "description": details.get("description") or event.job.description,
        "status": BatchStatus(status).label if status in BatchStatus.values else status,
        "status_value": status,
        "started_at": started,
        "ended_at": ended,
        "duration": durations.short(ended - started) if started and ended else "",
        "failed_tasks": failed,
        "failed_count": failed_count,
        "more_failed": max(failed_count - len(failed), 0),
        "reason": details.get("reason", ""),
        "url": link(event),
        "run_url": event.job_run_id is not None,
    }


def link(event: AlertEvent) -> str:
    """The run's history page while it exists (Save job to history may drop it), else the job."""
    if event.job_run_id is not None:
        path = reverse("jobs:history-run", args=[event.job_id, event.job_run_id])
    else:
        path = reverse("jobs:detail", args=[event.job_id])
    return settings.SITE_ROOT + path


def _datetime(value: object) -> dt.datetime | None:
    return parse_datetime(value) if isinstance(value, str) else None


# --- the tick's sweep -----------------------------------------------------------------------

SWEEP = every.Every("BATCH_ALERT_SWEEP_SECONDS", logger=log)


def handle_undelivered(at: dt.datetime) -> int:
    """Tick handler, at most every BATCH_ALERT_SWEEP_SECONDS: see ``sweep``."""
    return SWEEP.run(at, sweep, "The sweep of undelivered alerts")


def sweep(at: dt.datetime) -> int:
    """Resend deliveries that should have happened by now; returns how many were sent.

    1. E-mails "sending" for longer than BATCH_ALERT_SENDING_TIMEOUT_SECONDS lost their worker:
       back to pending (an attempt counted). At least once: the mail server may have accepted
       the message before the worker died, and then the recipient gets it twice.
    2. Events not processed BATCH_ALERT_SWEEP_SECONDS after they were written (the on-commit
       message was lost, the broker was down), and e-mails that long past their retry time.
    3. Their deliveries are sent again, unless deliveries wait in the alerts queue: then a
       worker will get to them (or to theirs), and more messages would only pile up.
    """
    grace = dt.timedelta(seconds=settings.BATCH_ALERT_SWEEP_SECONDS)
    limit = settings.BATCH_TICK_LIMIT
    free_interrupted(at)
    lost = AlertEvent.objects.filter(
        processed_at=None,
        created__lt=at - grace,
        # Crash-loop guard: an event whose fan-out keeps failing is left for the logs.
        attempts__lt=settings.BATCH_ALERT_EMAIL_ATTEMPTS,
    ).values_list("pk", flat=True)[:limit]
    retries = (
        Notification.objects.filter(overdue(at - grace))
        .order_by()
        .values_list("event_id", flat=True)
        .distinct()[:limit]
    )
    posts = (
        WebhookDelivery.objects.filter(overdue_posts(at - grace))
        .order_by()
        .values_list("event_id", flat=True)
        .distinct()[:limit]
    )
    event_ids = sorted(set(lost) | set(retries) | set(posts))
    if not event_ids:
        return 0
    if broker.queue_length(outbox.ALERT_QUEUE) > 0:
        return 0
    for event_id in event_ids:
        outbox.send(event_id)
    log.info("Resent the delivery of %s alert event(s)", len(event_ids))
    return len(event_ids)


def overdue(cutoff: dt.datetime) -> Q:
    """Pending e-mails whose next attempt was due before ``cutoff``."""
    # Never tried: the delivery that created it stopped before sending.
    due = Q(email_attempts=0, created__lt=cutoff)
    last = settings.BATCH_ALERT_EMAIL_ATTEMPTS
    for attempts in range(1, last):
        due |= Q(email_attempts=attempts, email_attempt_at__lt=cutoff - backoff(attempts))
    # A failed e-mail an operator set back to pending in the admin: one more try.
    due |= Q(email_attempts__gte=last, email_attempt_at__lt=cutoff - backoff(last))
    return Q(email=Email.PENDING) & due


def overdue_posts(cutoff: dt.datetime) -> Q:
    """Pending webhook deliveries whose next attempt was due before ``cutoff``."""
    due = Q(attempts=0, created__lt=cutoff)
    for attempts in range(1, settings.BATCH_WEBHOOK_ATTEMPTS):
        due |= Q(attempts=attempts, attempt_at__lt=cutoff - backoff(attempts))
    return Q(state=WebhookDelivery.State.PENDING) & due


def free_interrupted(at: dt.datetime) -> int:
    """E-mails and webhook requests still "sending" long after they were claimed lost their
    worker: back to pending (an attempt counted), or failed after the last attempt."""
    cutoff = at - dt.timedelta(seconds=settings.BATCH_ALERT_SENDING_TIMEOUT_SECONDS)
    return _free_emails(cutoff) + _free_posts(cutoff)


def _free_emails(cutoff: dt.datetime) -> int:
    stale = Notification.objects.filter(email=Email.SENDING, email_attempt_at__lt=cutoff)
    if not stale.exists():
        return 0
    # A message that keeps killing its worker must not be sent forever.
    last = settings.BATCH_ALERT_EMAIL_ATTEMPTS - 1
    n = stale.filter(email_attempts__gte=last).update(
        email=Email.FAILED, email_attempts=F("email_attempts") + 1, email_error=INTERRUPTED
    )
    n += stale.update(
        email=Email.PENDING, email_attempts=F("email_attempts") + 1, email_error=INTERRUPTED
    )
    if n:
        log.warning("%s alert e-mail(s) lost their worker while sending; trying again", n)
    return n


def _free_posts(cutoff: dt.datetime) -> int:
    # At least once, as e-mail: the receiver may have had the request that was interrupted.
    State = WebhookDelivery.State
    stale = WebhookDelivery.objects.filter(state=State.SENDING, attempt_at__lt=cutoff)
    if not stale.exists():
        return 0
    last = settings.BATCH_WEBHOOK_ATTEMPTS - 1
    n = stale.filter(attempts__gte=last).update(
        state=State.FAILED, attempts=F("attempts") + 1, last_error=INTERRUPTED_POST
    )
    n += stale.update(state=State.PENDING, attempts=F("attempts") + 1, last_error=INTERRUPTED_POST)
    if n:
        log.warning("%s webhook request(s) lost their worker while sending; trying again", n)
    return n
