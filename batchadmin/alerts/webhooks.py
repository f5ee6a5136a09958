"""Webhooks, the third alert channel: one signed POST per alert event and webhook.

Delivered from the outbox like e-mail (alerts/delivery.py): the event's fan-out writes one
WebhookDelivery row per webhook that wants it (unique per event and webhook), and a delivery
claims a pending row with a conditional UPDATE (pending -> sending) before it posts, so
deliveries that race or run twice send one request between them. A server that is down,
times out or answers 5xx (or 408, 429) gets the request again after a backoff (the e-mails'
BATCH_ALERT_RETRY_*), up to BATCH_WEBHOOK_ATTEMPTS; another 4xx, or an address that is not
allowed, fails at once, since sending the same request again cannot help. As with e-mail a
worker that dies after the server answered and before the row was marked sent leaves it
"sending", and the sweep sends it again: at least once. Receivers can drop the repeat by the
``X-Batchadmin-Delivery`` header, which stays the same for every attempt.

Formats:
- json: the event as data (``payload``), for your own receiver;
- teams: a message with an Adaptive Card (Teams incoming webhooks and Workflows);
- slack: a message with Block Kit blocks (Slack incoming webhooks).
Every request is signed: ``X-Batchadmin-Signature: sha256=<hex HMAC-SHA256 of the body, keyed
with the webhook's secret>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from typing import Any

from django.conf import settings
from django.db.models import F
from django.urls import reverse
from django.utils.timezone import now

from batchadmin.alerts.models import AlertEvent, AlertKind, Webhook, WebhookDelivery
from batchadmin.lib import outbound

log = logging.getLogger(__name__)
State = WebhookDelivery.State

SIGNATURE_HEADER = "X-Batchadmin-Signature"
# Answers worth another try: the receiver is busy or was slow, not refusing the request.
RETRY_STATUSES = {408, 425, 429}
# Adaptive Card colours per kind: Teams shows "attention" red and "warning" amber.
TEAMS_COLOR = {
    AlertKind.ENDED: "good",
    AlertKind.ERROR: "attention",
    AlertKind.CANCELED: "warning",
}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def payload(event: AlertEvent, context: dict[str, Any], *, delivery_id: int) -> dict[str, Any]:
    """The JSON format: the job, the run, its status, times and failing tasks."""
    details: dict[str, Any] = event.details or {}
    job_link = settings.SITE_ROOT + reverse("jobs:detail", args=[event.job_id])
    run = None
    if event.job_run_id is not None:
        run = {
            "id": event.job_run_id,
            "link": settings.SITE_ROOT
            + reverse("jobs:history-run", args=[event.job_id, event.job_run_id]),
        }
    started, ended = context["started_at"], context["ended_at"]
    return {
        "event": event.kind,
        "event_id": event.pk,
        "delivery_id": delivery_id,
        "headline": context["headline"],
        "job": {
            "id": event.job_id,
            "description": context["description"],
            "link": job_link,
            "critical": bool(details.get("critical")),
        },
        "run": run,
        "status": context["status_value"],
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_seconds": round((ended - started).total_seconds()) if started and ended else None,
        "failed_tasks": context["failed_tasks"],
        "failed_count": context["failed_count"],
        "reason": context["reason"],
        "created": event.created.isoformat(),
    }


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _facts(context: dict[str, Any]) -> list[tuple[str, str]]:
    facts = [
        ("Job", f"{context['description']} (batch job {context['job_id']})"),
        ("Status", str(context["status"])),
    ]
    if context["started_at"]:
        facts.append(("Started", _when(context["started_at"])))
    if context["ended_at"]:
        facts.append(("Ended", _when(context["ended_at"])))
    if context["duration"]:
        facts.append(("Duration", context["duration"]))
    if context["reason"]:
        facts.append(("Why", context["reason"]))
    return facts


def _failed_lines(context: dict[str, Any]) -> list[str]:
    lines = [
        f"{t.get('key', '')} {t.get('description', '')}".strip()
        + (f": {t['error']}" if t.get("error") else "")
        for t in context["failed_tasks"]
    ]
    if context["more_failed"]:
        lines.append(f"and {context['more_failed']} more")
    return lines


def teams(context: dict[str, Any]) -> dict[str, Any]:
    """A Teams message carrying one Adaptive Card (the incoming-webhook format)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": context["headline"],
            "size": "Medium",
            "weight": "Bolder",
            "wrap": True,
            "color": TEAMS_COLOR.get(context["kind"], "warning"),
        },
        {
            "type": "FactSet",
            "facts": [{"title": title, "value": value} for title, value in _facts(context)],
        },
    ]
    failed = _failed_lines(context)
    if failed:
        body.append(
            {
                "type": "TextBlock",
                "text": f"Failed tasks ({context['failed_count']})",
                "weight": "Bolder",
                "wrap": True,
            }
        )
        body.extend({"type": "TextBlock", "text": f"- {line}", "wrap": True} for line in failed)
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "actions": [
            {
                "type": "Action.OpenUrl",
                "title": "Open the run" if context["run_url"] else "Open the job",
                "url": context["url"],
            }
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(context: dict[str, Any]) -> dict[str, Any]:
    """A Slack message in Block Kit: a headline linking to the run, its facts, failing tasks.
    ``text`` is the notification's and the fallback's."""
    headline = _slack_escape(context["headline"])
    link = f"<{context['url']}|{headline}>"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{link}*"}},
        {
            "type": "section",
            # Slack shows at most ten fields in a section.
            "fields": [
                {"type": "mrkdwn", "text": f"*{title}*\n{_slack_escape(value)}"}
                for title, value in _facts(context)[:10]
            ],
        },
    ]
    failed = _failed_lines(context)
    if failed:
        text = f"*Failed tasks ({context['failed_count']})*\n" + "\n".join(
            f"• {_slack_escape(line)}" for line in failed
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    return {"text": f"{context['headline']}: {context['description']}", "blocks": blocks}


def body_of(
    webhook: Webhook, event: AlertEvent, context: dict[str, Any], delivery_id: int
) -> bytes:
    if webhook.format == Webhook.Format.TEAMS:
        data = teams(context)
    elif webhook.format == Webhook.Format.SLACK:
        data = slack(context)
    else:
        data = payload(event, context, delivery_id=delivery_id)
    return json.dumps(data, ensure_ascii=False).encode()


# --- delivery -------------------------------------------------------------------------------


def is_due(delivery: WebhookDelivery, at: dt.datetime, backoff: Any) -> bool:
    last = delivery.attempt_at
    return delivery.attempts == 0 or last is None or last + backoff(delivery.attempts) <= at


def claim(delivery: WebhookDelivery) -> dt.datetime | None:
    """Pending -> sending, unless another delivery changed the row since it was read."""
    at = now()
    n = WebhookDelivery.objects.filter(
        pk=delivery.pk, state=State.PENDING, attempts=delivery.attempts
    ).update(state=State.SENDING, attempt_at=at)
    return at if n == 1 else None


def send(event: AlertEvent, context: dict[str, Any], backoff: Any) -> tuple[int, float | None]:
    """Post the event's pending deliveries that are due; (how many were sent, seconds until
    one that failed may be tried again, or None)."""
    sent = 0
    retry_in: float | None = None
    pending = WebhookDelivery.objects.filter(event=event, state=State.PENDING).select_related(
        "webhook"
    )
    for delivery in pending.order_by("pk"):
        if not is_due(delivery, now(), backoff):
            continue
        claimed_at = claim(delivery)
        if claimed_at is None:
            continue  # another delivery has it, or had it
        webhook = delivery.webhook
        if not webhook.enabled:
            _finish(delivery, State.FAILED, error="The webhook is disabled.")
            continue
        body = body_of(webhook, event, context, delivery.pk)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "batchadmin-webhooks/1",
            SIGNATURE_HEADER: sign(webhook.secret, body),
            "X-Batchadmin-Event": event.kind,
            "X-Batchadmin-Delivery": str(delivery.pk),
        }
        try:
            answer = outbound.post(
                webhook.url,
                body,
                headers,
                timeout=settings.BATCH_WEBHOOK_TIMEOUT_SECONDS,
                allow_private=settings.BATCH_WEBHOOK_ALLOW_PRIVATE,
            )
        except outbound.Refused as exc:
            _finish(delivery, State.FAILED, error=str(exc))
            log.error("Webhook %s refused: %s", webhook.code, exc)
            continue
        except OSError as exc:
            wait = _attempt_failed(delivery, claimed_at, backoff, status=None, error=_describe(exc))
        else:
            if 200 <= answer.status < 300:
                _finish(delivery, State.SENT, status=answer.status)
                sent += 1
                continue
            error = f"HTTP {answer.status}: {answer.body[:300]}".strip()
            if answer.status >= 500 or answer.status in RETRY_STATUSES:
                wait = _attempt_failed(
                    delivery, claimed_at, backoff, status=answer.status, error=error
                )
            else:
                _finish(delivery, State.FAILED, status=answer.status, error=error)
                log.error("Webhook %s refused alert %s: %s", webhook.code, event.pk, error)
                continue
        if wait is not None:
            retry_in = wait if retry_in is None else min(retry_in, wait)
    return sent, retry_in


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def _finish(
    delivery: WebhookDelivery, state: str, *, status: int | None = None, error: str = ""
) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk, state=State.SENDING).update(
        state=state,
        attempts=F("attempts") + 1,
        last_status=status,
        last_error=error[:1000],
        sent_at=now() if state == State.SENT else None,
    )


def _attempt_failed(
    delivery: WebhookDelivery,
    claimed_at: dt.datetime,
    backoff: Any,
    *,
    status: int | None,
    error: str,
) -> float | None:
    """Back to pending for a retry, or failed after the last attempt; the wait, if any."""
    attempts = delivery.attempts + 1
    gave_up = attempts >= settings.BATCH_WEBHOOK_ATTEMPTS
    WebhookDelivery.objects.filter(pk=delivery.pk, state=State.SENDING).update(
        state=State.FAILED if gave_up else State.PENDING,
        attempts=attempts,
        last_status=status,
        last_error=error[:1000],
    )
    if gave_up:
        log.error(
            "Webhook delivery %s failed %s times; giving up: %s", delivery.pk, attempts, error
        )
        return None
    log.warning("Webhook delivery %s (attempt %s) failed: %s", delivery.pk, attempts, error)
    wait: float = (claimed_at + backoff(attempts) - now()).total_seconds()
    return max(1.0, wait)
