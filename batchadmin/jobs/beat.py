"""Beat's scheduler: django-celery-beat's DatabaseScheduler, with the tick run in-process.

The release tick is a PeriodicTask row like any other (seeded by a migration, retuned in the
admin), but beat calls it directly instead of sending it to a queue: time-based releases must
never wait behind busy batch threads, and beat is the one process there is exactly one of.
"""

from __future__ import annotations

import logging
from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler

log = logging.getLogger(__name__)

IN_PROCESS_TASKS = frozenset({"batchadmin.tick"})


class BatchScheduler(DatabaseScheduler):  # type: ignore[misc]
    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if entry.task not in IN_PROCESS_TASKS:
            super().apply_entry(entry, producer=producer)
            return
        task = self.app.tasks[entry.task]
        try:
            counts = task(*entry.args, **entry.kwargs)
        except Exception:
            # Database or broker down: log it and try again on the next tick (celery-beat's
            # own scheduler loop survives DB errors the same way).
            log.exception("%s failed; retrying on the next tick", entry.task)
        else:
            if counts and any(counts.values()):
                log.info("%s: %s", entry.task, counts)
