"""Beat's scheduler: django-celery-beat's DatabaseScheduler, with the tick run in-process.

The release tick is a PeriodicTask row like any other (seeded by a migration, retuned in the
admin), but beat calls it directly instead of sending it to a queue: time-based releases must
never wait behind busy batch threads, and beat is the one process there is exactly one of.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.timezone import now
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from batchadmin.lib import db

log = logging.getLogger(__name__)

TICK_TASK = "batchadmin.tick"
IN_PROCESS_TASKS = frozenset({TICK_TASK})
# Beat's liveness (for /healthz and /metrics) is the tick row's PeriodicTask.last_run_at,
# written after a tick that worked. Why there and not in Redis: it survives a Redis flush or
# restart, the health check of beat then does not depend on the broker (a Redis outage shows
# as a broker failure, not as a dead beat too), no new table is needed, and the admin's "Last
# run at" column shows the truth. django-celery-beat itself saves last_run_at only when it
# syncs (every 3 minutes), too rarely for a liveness check; a write per tick (every second)
# would be an UPDATE per second for nothing, so it is throttled to one per this many seconds.
LIVENESS_WRITE_SECONDS = 5.0


# Beat started while the database is away waits for it, trying again after each of these
# (the last repeats), as a worker starts and waits for its first heartbeat to get through.
STARTUP_RETRY_SECONDS = (1.0, 2.0, 5.0)


class BatchScheduler(DatabaseScheduler):  # type: ignore[misc]
    _liveness_written_at = float("-inf")  # time.monotonic() of the last liveness write
    _waiting_for_database = False  # in setup_schedule's loop

    def setup_schedule(self) -> None:
        """Read the schedule, waiting for the database when it is down at beat's start.

        django-celery-beat lives through database errors once running, but an error in this
        first read ends the process; a beat restarted by its supervisor while PostgreSQL is
        away would crash-loop and give up. So keep trying until the database answers.
        """
        if BatchScheduler._waiting_for_database:
            # Re-entered: beat's SIGTERM/SIGINT handler syncs "the" scheduler, which is the one
            # still being built here, so it builds another. Stop, as the signal asked.
            raise SystemExit("beat stopped while waiting for the database")
        BatchScheduler._waiting_for_database = True
        try:
            for tries in itertools.count():
                try:
                    super().setup_schedule()
                    return
                except db.BLIPS as exc:
                    delay = STARTUP_RETRY_SECONDS[min(tries, len(STARTUP_RETRY_SECONDS) - 1)]
                    log.warning("The database is unavailable (%s); retrying in %ss", exc, delay)
                    db.reset()
                    self._initial_read = True  # the read that failed must happen again
                    time.sleep(delay)
        finally:
            BatchScheduler._waiting_for_database = False

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
            # Not a run: keep this attempt's time out of last_run_at (beat's liveness) when
            # the scheduler next saves its entries.
            self._dirty.discard(entry.name)
        else:
            if counts and any(counts.values()):
                log.info("%s: %s", entry.task, counts)
            self.record_liveness(entry.model.pk)

    def record_liveness(self, periodic_task_id: int) -> None:
        t = time.monotonic()
        if t - self._liveness_written_at < LIVENESS_WRITE_SECONDS:
            return
        try:
            # update(), not save(): no pre_save signal, so the scheduler does not take it for
            # an edit of the schedule and reload every entry.
            PeriodicTask.objects.filter(pk=periodic_task_id).update(last_run_at=now())
        except Exception:
            log.warning("Could not record beat's liveness; retrying after the next tick")
        else:
            self._liveness_written_at = t


@dataclass(frozen=True)
class Liveness:
    """What the database says about beat's tick: the one reading of beat's health that
    /healthz, /metrics and the explanations share."""

    exists: bool  # the tick's PeriodicTask row exists (the migration seeded it)
    enabled: bool = False  # ... and is enabled
    last_tick: dt.datetime | None = None  # last successful tick of an enabled row

    def age(self, at: dt.datetime) -> dt.timedelta | None:
        return at - self.last_tick if self.last_tick is not None else None

    def alive(self, at: dt.datetime) -> bool:
        """Enabled and ticked within BATCH_BEAT_STALE_SECONDS."""
        age = self.age(at)
        return self.enabled and age is not None and age <= stale_after()


def stale_after() -> dt.timedelta:
    """Beat is down when its last successful tick is older than this."""
    return dt.timedelta(seconds=settings.BATCH_BEAT_STALE_SECONDS)


def liveness() -> Liveness:
    """Beat's liveness from the tick's PeriodicTask row(s), in one query."""
    rows = list(PeriodicTask.objects.filter(task=TICK_TASK).values_list("enabled", "last_run_at"))
    ticks = [last for enabled, last in rows if enabled and last is not None]
    return Liveness(
        exists=bool(rows),
        enabled=any(enabled for enabled, _ in rows),
        last_tick=max(ticks, default=None),
    )


def last_tick() -> dt.datetime | None:
    """When beat last ran the tick successfully (to within LIVENESS_WRITE_SECONDS), or None."""
    return liveness().last_tick
