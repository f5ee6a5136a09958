"""Jobs that follow jobs: who triggers whom, and the rule that the chain never loops.

A job follows at most one job (``BatchJob.after_job``), so the jobs above one form a chain; a
trigger would close a cycle when the job it names is, or follows, the job being changed.
The form, the import and the API all ask ``check`` before they save, and ``set_trigger``
saves under row locks so two requests cannot close a cycle between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from batchadmin.audit import trail
from batchadmin.jobs.models import AfterStatus, BatchJob

__all__ = ["TriggerError", "chain_above", "check", "cycle_in", "describe", "set_trigger"]

CHAIN_LIMIT = 1000  # a chain longer than this is refused as if it looped (it cannot be real)


class TriggerError(ValueError):
    """The trigger can't be saved; the message names the culprit. Nothing was saved."""


def chain_above(job_id: int) -> list[int]:
    """The jobs ``job_id`` follows, nearest first (its parent, the parent's parent, ...)."""
    chain: list[int] = []
    current = _parent(job_id)
    # Stops at the top, or at a job seen already (a loop saved before this check existed).
    while current is not None and current not in chain and len(chain) < CHAIN_LIMIT:
        chain.append(current)
        current = _parent(current)
    return chain


def _parent(job_id: int) -> int | None:
    return BatchJob.objects.filter(pk=job_id).values_list("after_job_id", flat=True).first()


def check(job_id: int | None, after_id: int | None) -> None:
    """Refuse a trigger that names a missing job or closes a cycle (a job after itself)."""
    if after_id is None:
        return
    if not BatchJob.objects.filter(pk=after_id).exists():
        raise TriggerError(f"There is no batch job {after_id} to follow.")
    if job_id is None:
        return  # a new job: nothing follows it yet
    if after_id == job_id:
        raise TriggerError(f"Job {job_id} can't be triggered by itself.")
    above = chain_above(after_id)
    if job_id in above:
        loop = [after_id, *above[: above.index(job_id) + 1]]
        path = " → ".join(str(pk) for pk in [job_id, *loop])
        raise TriggerError(
            f"Job {job_id} can't follow job {after_id}: job {after_id} already runs after job "
            f"{job_id}, and the triggers would loop ({path})."
        )


def cycle_in(edges: Mapping[str, str | None]) -> list[str] | None:
    """A loop in {name: the name it follows} (an import file's keys), or None."""
    for start in edges:
        seen = [start]
        current = edges.get(start)
        while current is not None and current in edges:
            if current in seen:
                return [*seen[seen.index(current) :], current]
            seen.append(current)
            current = edges.get(current)
    return None


def describe(after_id: int | None, status: str) -> str | None:
    """The trigger in words for the audit trail: "12 (Ended or error)"."""
    return None if after_id is None else f"{after_id} ({AfterStatus(status).label})"


def set_trigger(
    *,
    job_id: int,
    after_id: int | None,
    status: str = AfterStatus.ENDED,
    by: Any = None,
    via: str = trail.Via.WEB,
) -> bool:
    """Make ``job_id`` follow ``after_id`` on ``status`` (None: follow no job), audited;
    returns whether anything changed. Both rows are locked, in id order, before the check,
    so two requests making two jobs follow each other cannot both pass it."""
    with transaction.atomic():
        ids = sorted({job_id} | ({after_id} if after_id is not None else set()))
        rows = BatchJob.objects.select_for_update().filter(pk__in=ids)
        before = {pk: (a, s) for pk, a, s in rows.values_list("pk", "after_job_id", "after_status")}
        check(job_id, after_id)
        status = AfterStatus(status)
        old = describe(*before[job_id])
        n = (
            BatchJob.objects.filter(pk=job_id)
            .exclude(after_job_id=after_id, after_status=status)
            .update(after_job_id=after_id, after_status=status)
        )
        new = describe(after_id, status)
        if n and old != new:
            trail.record(
                trail.Action.TRIGGER_EDIT,
                user=by,
                job=job_id,
                target="job",
                changes={"Triggered by job": [old, new]},
                via=via,
            )
        return bool(n)
