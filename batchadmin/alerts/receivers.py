"""The alerts' side of the engine's signals (engine/signals.py), connected in apps.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from batchadmin.alerts import deadlines, delivery, outbox, stuck
from batchadmin.jobs.models import BatchJob, BatchStatus


def on_job_settled(
    sender: Any,
    *,
    job: BatchJob,
    run_id: int | None,
    final: BatchStatus,
    at: dt.datetime,
    **kwargs: Any,
) -> None:
    """One alert event per run, written in the settling transaction (and one more for a run
    that ended after its deadline)."""
    outbox.job_ended(job, run_id=run_id, final=final, at=at)
    deadlines.job_settled(job, run_id=run_id, final=final, at=at)


def on_tick(sender: Any, *, at: dt.datetime, **kwargs: Any) -> dict[str, int]:
    """The checks the tick runs for the alerts: each throttled (every 30 s), none raises."""
    return {
        "running_long": stuck.handle_long_running(at),
        "unserved": stuck.handle_unserved(at),
        "deadlines": deadlines.handle_deadlines(at),
        "alerts_resent": delivery.handle_undelivered(at),
    }
