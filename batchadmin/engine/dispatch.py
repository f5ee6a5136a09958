"""Sending "start this task now" messages to the batch groups' queues.

The database is the record; a message only tells some batch server of the task's group to try
to claim it. A lost message is harmless (the tick sends another), and so is a duplicate (the
claim is a conditional UPDATE that only one delivery wins).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.db import transaction

from batchadmin.celery import app
from batchadmin.engine import batches

log = logging.getLogger(__name__)
# (task id, queue) or (task id, queue, Redis priority step: lower is served first, see
# priority.py). Without a step the message goes at Normal's.
Message = tuple[int, str] | tuple[int, str, int]
NORMAL_STEP = 6  # priority.STEPS[Priority.NORMAL]; not imported, to keep this module light
# Sent by name: this module imports no task (tasks.py imports the engine, not the other way).
RUN_TASK = "batchadmin.run_batch_task"
# Several tasks in one message (engine/batches.py).
RUN_TASKS = "batchadmin.run_batch_tasks"


class Slot(threading.local):
    """A worker process's offer to run one task it releases itself (see ``keeping``)."""

    queue = ""  # the queue whose message may be kept; "": none
    kept: Message | None = None

    def take(self) -> Message | None:
        kept, self.kept = self.kept, None
        return kept


class _Gathering(threading.local):
    def __init__(self) -> None:
        self.stack: list[list[Message]] = []  # open gathered() blocks' buffers, innermost last


_slot = Slot()
_gathering = _Gathering()


def send_on_commit(tasks: Sequence[Message]) -> None:
    """Send messages (see ``Message``) once the current transaction has committed."""
    if not tasks:
        return
    batch = list(tasks)
    if _gathering.stack:
        # Added to the block's buffer at commit, so a rolled-back savepoint adds nothing.
        buffer = _gathering.stack[-1]
        transaction.on_commit(lambda: buffer.extend(batch))
    else:
        transaction.on_commit(lambda: send(_keep_one(batch)))


@contextmanager
def keeping(queue: str) -> Iterator[Slot]:
    """In a worker, around one task's run: of the messages its finish sends on commit, one for
    ``queue`` (the queue the worker took this task from) is kept instead of sent, unless a
    message of a higher priority waits in that queue: this process, free in a moment, runs it
    next (tasks.py) without a trip through the broker. The slot holds it after the block.
    "" keeps nothing.

    Messages of the same priority that wait are passed: the kept task continues work already
    under way (a chain's next step), so its job ends sooner and none ends later than it would
    have, as a thread keeps its job in D365. Other threads keep taking the waiting ones."""
    _slot.queue, _slot.kept = queue, None
    try:
        yield _slot
    except BaseException:
        # The run failed after its finish committed: this process will not run it, send it.
        kept = _slot.take()
        if kept is not None:
            send([kept])
        raise
    finally:
        _slot.queue = ""


def _keep_one(batch: list[Message]) -> list[Message]:
    """``batch`` less the message the open ``keeping`` block keeps, if any."""
    if not _slot.queue or _slot.kept is not None:
        return batch
    for i, (_, queue, *given) in enumerate(batch):
        if queue == _slot.queue:
            if batches.WATCH.empty(queue, before=given[0] if given else NORMAL_STEP):
                _slot.kept = batch[i]
                return batch[:i] + batch[i + 1 :]
            break
    return batch


@contextmanager
def gathered() -> Iterator[None]:
    """Inside one transaction: what is sent on commit in the block goes out in one send, after
    the commit, so tasks of one queue share messages across jobs (the tick's batched starts).

    The send is registered after every send_on_commit of the block, so it runs after them.
    An exception leaves the block: nothing is sent (the transaction rolls back too).
    """
    buffer: list[Message] = []
    _gathering.stack.append(buffer)
    try:
        yield
    finally:
        _gathering.stack.pop()
    transaction.on_commit(lambda: buffer and send(buffer))


def send(tasks: Sequence[Message], *, together: bool = True) -> int:
    """Publish the tasks over a single pooled connection; returns how many tasks went out.

    ``together``: many tasks of one queue and priority step share messages (batches.chunks);
    False: one message per task (a batch giving its rest back).

    Never raises: when the broker is unreachable the tasks stay Ready with their dispatch time
    recorded, and the tick re-sends them (tick.handle_lost_messages).
    """
    by_route: dict[tuple[str, int], list[int]] = {}
    for task_id, queue, *given in tasks:
        by_route.setdefault((queue, given[0] if given else NORMAL_STEP), []).append(task_id)
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for (queue, step), ids in by_route.items():
                for chunk in batches.chunks(ids) if together else [[i] for i in ids]:
                    args: tuple[int] | tuple[list[int]] = (
                        (chunk[0],) if len(chunk) == 1 else (chunk,)
                    )
                    app.send_task(
                        RUN_TASK if len(chunk) == 1 else RUN_TASKS,
                        args,
                        queue=queue,
                        producer=producer,
                        priority=step,
                    )
                    sent += len(chunk)
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
