"""Several ready tasks in one message, when one send puts many on a queue.

A message costs Celery about 2 ms of worker CPU and its sender about 0.7 ms (bench/README.md),
as much as the engine's own work for a short task. When one send puts many tasks of one queue
and priority step on the broker (a job start releasing its roots, the tick sending held or
retried tasks), they go up to BATCH_DISPATCH_MAX_TASKS to a message, but in no fewer than
SPREAD messages, so that every free thread still gets one.

A worker runs a message's tasks one after another, each claimed exactly as a task of its own
message is (a claim another server won skips that task). While the message still holds tasks
it watches the queue: once the queue is empty, idle threads have nothing to take, so it gives
the rest back as one message per task (``give_back``) and goes on claiming them in turn; whoever
claims a task first runs it. The tail of a big job is then as parallel as without batching.
A message lost with its worker is delivered again (acks_late): its finished tasks' claims
fail, the rest run. A task left Ready in a message that waits long is also sent again by the
tick like any lost message (tick.handle_lost_messages).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import redis
from django.conf import settings

from batchadmin.lib import broker

log = logging.getLogger(__name__)

# Never fewer messages than this for one queue and step: threads a send can keep busy at once.
SPREAD = 32


def chunks(task_ids: Sequence[int]) -> list[list[int]]:
    """``task_ids`` (of one queue and priority step) split into the messages to send."""
    size = min(settings.BATCH_DISPATCH_MAX_TASKS, len(task_ids) // SPREAD)
    if size <= 1:
        return [[task_id] for task_id in task_ids]
    return [list(task_ids[i : i + size]) for i in range(0, len(task_ids), size)]


class QueueWatch:
    """Is this worker's queue empty? One pipelined LLEN per priority list, on a client of its
    own per process (the broker module's, which gives up within a second). ``before``: only
    the lists of the priority steps served before that one."""

    _client: redis.Redis | None = None
    _pid = 0

    def empty(self, queue: str, *, before: int | None = None) -> bool:
        try:
            if self._client is None or self._pid != os.getpid():
                QueueWatch._client = broker.client(retries=1)
                QueueWatch._pid = os.getpid()
            assert self._client is not None
            with self._client.pipeline(transaction=False) as pipe:
                for key in broker.queue_keys(queue, before=before):
                    pipe.llen(key)
                return not any(int(n) for n in pipe.execute())
        except (redis.RedisError, OSError):
            # The broker is away: nothing could be given back anyway; keep running the rest.
            log.debug("Could not read the length of %s", queue, exc_info=True)
            return False


WATCH = QueueWatch()
