"""Sending "start this task now" messages to the batch groups' queues.

The database is the record; a message only tells some batch server of the task's group to try
to claim it. A lost message is harmless (the tick sends another), and so is a duplicate (the
claim is a conditional UPDATE that only one delivery wins).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import transaction

from batchadmin.celery import app

log = logging.getLogger(__name__)
# (task id, queue) or (task id, queue, Redis priority step: lower is served first, see
# priority.py). Without a step the message goes at Normal's.
Message = tuple[int, str] | tuple[int, str, int]
NORMAL_STEP = 6  # priority.STEPS[Priority.NORMAL]; not imported, to keep this module light
# Sent by name: this module imports no task (tasks.py imports the engine, not the other way).
RUN_TASK = "batchadmin.run_batch_task"


def send_on_commit(tasks: Sequence[Message]) -> None:
    """Send messages (see ``Message``) once the current transaction has committed."""
    if tasks:
        batch = list(tasks)
        transaction.on_commit(lambda: send(batch))


def send(tasks: Sequence[Message]) -> int:
    """Publish one message per task over a single pooled connection; returns how many went out.

    Never raises: when the broker is unreachable the tasks stay Ready with their dispatch time
    recorded, and the tick re-sends them (tick.handle_lost_messages).
    """
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for task_id, queue, *step in tasks:
                app.send_task(
                    RUN_TASK,
                    (task_id,),
                    queue=queue,
                    producer=producer,
                    priority=step[0] if step else NORMAL_STEP,
                )
                sent += 1
    except Exception:
        log.exception(
            "Could not send %d of %d task messages; the tick will resend them",
            len(tasks) - sent,
            len(tasks),
        )
    return sent


def revoke(celery_task_id: str) -> bool:
    """Abort: kill the worker process running this Celery task (and drop it if not started).

    SIGKILL, not SIGTERM: the process already had the grace period to stop when asked, and a
    hung one (a C call, a handler that swallows SIGTERM) may never act on a softer signal.
    Celery acknowledges a terminated task's message, so it is not redelivered; if it were,
    the claim refuses it (the task is no longer Ready). Never raises: the caller settles the
    attempt anyway, and the orphan's late result is then discarded.
    """
    try:
        app.control.revoke(celery_task_id, terminate=True, signal="SIGKILL")
    except Exception:
        log.exception("Could not revoke Celery task %s", celery_task_id)
        return False
    return True
