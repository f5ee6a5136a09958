"""Celery tasks of the alerts app: thin adapters over alerts.delivery."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from batchadmin.alerts import delivery, outbox
from batchadmin.lib import db

log = logging.getLogger(__name__)


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
    # A connection kept across tasks broke (PostgreSQL restarted): reconnect, try once more.
    result = db.retry(
        lambda: delivery.deliver(event_id),
        delays=(0,),
        log=log,
        what=f"delivering alert event {event_id}",
    )
    if result is not None and result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
