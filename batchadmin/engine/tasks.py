"""Celery tasks: thin adapters that take ids and call the engine."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import IntegrityError

from batchadmin.engine import batches, dispatch, runner, worker
from batchadmin.engine import tick as engine_tick
from batchadmin.lib import db, tracing

log = logging.getLogger(__name__)


@shared_task(bind=True, name=dispatch.RUN_TASK, acks_late=True, ignore_result=True)
def run_batch_task(self: Task[Any, Any], task_id: int) -> None:
    _run_one(self, task_id)


@shared_task(bind=True, name=dispatch.RUN_TASKS, acks_late=True, ignore_result=True)
def run_batch_tasks(self: Task[Any, Any], task_ids: list[int]) -> None:
    """Several tasks of one queue and priority step, one after another (engine/batches.py)."""
    delivery = dict(self.request.delivery_info or {})
    queue = _queue(self)
    given = delivery.get("priority")  # the message's Redis priority step
    step = given if isinstance(given, int) else None
    given_back = not queue
    for i, task_id in enumerate(task_ids):
        rest = task_ids[i:]  # this one and those after it
        if not given_back and len(rest) > 1 and batches.WATCH.empty(queue):
            # Idle threads have nothing to take: let them have these. This process goes on
            # claiming them in turn too; a claim another server won skips the task.
            given_back = True
            dispatch.send(
                [(t, queue, step) if step is not None else (t, queue) for t in rest[1:]],
                together=False,
            )
        _run_one(self, task_id)


def _run_one(request_task: Task[Any, Any], task_id: int) -> None:
    """Run the task, then, for up to BATCH_FOLLOW_ON_SECONDS of this message, the task each
    finish released on this message's queue unless a message of a higher priority waited there
    (dispatch.keeping): a chain's next task without a trip through the broker. Claimed like
    any task; a claim lost drops it, as a message's would be."""
    queue = _queue(request_task)
    # Traced, each attempt's messages carry its trace to the next attempt: none kept then.
    follow_on = 0.0 if tracing.recording() else settings.BATCH_FOLLOW_ON_SECONDS
    began = time.monotonic()
    next_id: int | None = task_id
    while next_id is not None:
        keep = queue if time.monotonic() - began < follow_on else ""
        with dispatch.keeping(keep) as slot:
            _claim_and_run(request_task, next_id)
        kept = slot.take()
        next_id = kept[0] if kept is not None else None


def _queue(request_task: Task[Any, Any]) -> str:
    """The queue the message came from ("" when it does not say: run eagerly, in a test)."""
    delivery = request_task.request.delivery_info or {}
    return str(delivery.get("routing_key") or "")


def _claim_and_run(request_task: Task[Any, Any], task_id: int) -> None:
    hostname = request_task.request.hostname or ""
    # Recorded on the attempt so that an abort can revoke (kill) exactly this execution.
    celery_id = request_task.request.id or ""

    def run() -> None:
        runner.run_task(
            task_id=task_id,
            server_id=worker.server_id(hostname),
            hostname=worker.node_name(hostname),
            celery_task_id=celery_id,
        )

    try:
        # Connections are kept across tasks (CELERY_DB_REUSE_MAX) without a health-check
        # query per task; a broken one (PostgreSQL restarted) fails here once. Reconnect and
        # claim again: if the first try had claimed, this claim finds it taken and stops.
        db.retry(run, delays=(0,), log=log, what=f"running task {task_id}")
    except IntegrityError:
        # The claim referred to a server row deleted since this process cached its id (the
        # claim rolled back, the task is still Ready): register again and claim once more.
        worker.forget_server(hostname)
        run()


@shared_task(name="batchadmin.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """The clock: beat runs this in its own process every second (see engine/beat.py)."""
    return engine_tick.tick()
