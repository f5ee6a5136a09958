"""Celery tasks of the alerts app: thin adapters over alerts.delivery."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError, connection

from batchadmin.alerts import delivery, outbox


@shared_task(
    bind=True,
    name=outbox.DELIVER_TASK,
    ignore_result=True,
    acks_late=True,
    # The database counts e-mail attempts and gives up (BATCH_ALERT_EMAIL_ATTEMPTS), not Celery.
    max_retries=None,
)
def deliver_alerts(self: Task[Any, Any], event_id: int) -> None:
    """Fan an alert event out to its recipients and send its e-mails (outbox.record sends it)."""
    try:
        result = delivery.deliver(event_id)
    except (OperationalError, InterfaceError):
        # A connection kept across tasks broke (PostgreSQL restarted): reconnect, try once more.
        connection.close()
        result = delivery.deliver(event_id)
    if result is not None and result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
