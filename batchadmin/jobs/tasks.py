"""Celery tasks: thin adapters that take ids and call the engine."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from batchadmin.jobs import runner, scheduler
from batchadmin.servers import worker


@shared_task(bind=True, name="batchadmin.run_batch_task", acks_late=True, ignore_result=True)
def run_batch_task(self: Task[Any, Any], task_id: int) -> None:
    hostname = self.request.hostname or ""
    runner.run_task(task_id=task_id, server_id=worker.server_id(hostname), hostname=hostname)


@shared_task(name="batchadmin.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """The clock: beat runs this in its own process every second (see jobs/beat.py)."""
    return scheduler.tick()
