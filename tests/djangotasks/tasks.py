"""Task functions the tests enqueue: defined as any Django project would define its own."""

from __future__ import annotations

from typing import Any

from batchadmin.djangotasks.compat import TaskContext, task


class LedgerLocked(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fail(message: str) -> None:
    raise LedgerLocked(message)


@task(takes_context=True)
def flaky(context: TaskContext, failures: int) -> dict[str, Any]:
    """Fails its first ``failures`` attempts, then says which attempt it was."""
    if context.attempt <= failures:
        raise RuntimeError(f"attempt {context.attempt} failed")
    return {"attempt": context.attempt, "result_id": context.task_result.id}


@task(queue_name="Reporting", priority=60)
def report(days: int = 7) -> str:
    return f"report of {days} days"


@task
def not_json() -> object:
    return object()


@task
async def slow_add(a: int, b: int) -> int:
    return a + b
