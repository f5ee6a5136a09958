"""Backfill: which occurrences of a recurring job in a date range were missed.

An occurrence was missed when it is in the past and no run stands for it: no run records it
as its occurrence (a scheduled run since runs recorded one, or a backfill), no scheduled run
of the job started for it (runs from before), and no backfill of it is queued. The run the
job is waiting to start (its scheduled start) is not missed: the tick starts it.
Runs that "Save job to history" dropped count as missed: the history is the record.
"""

from __future__ import annotations

import datetime as dt

from django.db.models import Q

from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, QueuedRun
from batchadmin.lib import recurrence

__all__ = ["LIMIT", "BackfillError", "missed"]

LIMIT = 1000  # runs one backfill may start: a wider range is a mistake more often than not
SCAN_LIMIT = 10 * LIMIT  # occurrences looked at in the range


class BackfillError(ValueError):
    """The backfill can't be done; the message says why. Nothing was queued."""


def missed(
    job: BatchJob,
    first_day: dt.date,
    last_day: dt.date,
    *,
    at: dt.datetime,
    only_last: bool = False,
) -> list[dt.datetime]:
    """The missed occurrences from ``first_day`` to ``last_day`` (both included, in the
    recurrence's zone), oldest first; with ``only_last``, the latest of them alone."""
    recurring = job.get_recurrence()
    if recurring is None:
        raise BackfillError(
            f"Job {job.pk} has no recurrence: there are no occurrences to backfill."
        )
    if last_day < first_day:
        raise BackfillError(f"The range ends ({last_day}) before it starts ({first_day}).")
    try:
        rule = recurring.rule()
        tz = rule.tz
        since = recurrence.localize(dt.datetime.combine(first_day, dt.time()), tz)
        until = recurrence.localize(
            dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time()), tz
        )
        times: list[dt.datetime] = []
        for t in rule.occurrences(since - dt.timedelta(microseconds=1)):
            if t >= until or t >= at:
                break
            times.append(t)
            if len(times) > SCAN_LIMIT:
                # Enough to say the range is too wide (and "the last" unknown without
                # walking every occurrence of, say, a year of minutes).
                raise BackfillError(
                    f"More than {SCAN_LIMIT:,} occurrences from {first_day} to {last_day}: "
                    "choose a shorter range."
                )
    except recurrence.RuleError as exc:
        raise BackfillError(f"Job {job.pk} has an invalid recurrence: {exc}") from None
    if not times:
        return []
    ran = set(
        BatchJobRun.objects.filter(job=job)
        .filter(
            Q(occurrence__in=times)
            | Q(trigger=BatchJobRun.Trigger.SCHEDULED, scheduled_start__in=times)
        )
        .values_list("occurrence", "scheduled_start")
        .iterator()
    )
    done = {o for o, _ in ran if o is not None} | {s for o, s in ran if o is None}
    queued = QueuedRun.objects.pending().filter(job=job, occurrence__in=times)
    done |= {t for t in queued.values_list("occurrence", flat=True) if t is not None}
    if job.status == BatchStatus.WAITING:
        done.add(job.scheduled_start)  # due: the tick starts it, it is no missed run
    left = [t for t in times if t not in done]
    if only_last:
        return left[-1:]
    if len(left) > LIMIT:
        raise BackfillError(
            f"{len(left):,} occurrences were missed from {first_day} to {last_day}; a backfill "
            f"starts at most {LIMIT:,} runs: choose a shorter range."
        )
    return left
