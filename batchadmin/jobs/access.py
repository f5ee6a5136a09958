"""Who may see and do what: D365's batch roles as Django groups.

- Batch job manager (D365 "Batch job manager"): sees and manages every job, changes Run by,
  copies, configures groups, servers and active periods.
- Batch user: creates jobs; sees and changes only the jobs they created or run as.
- Viewer: sees every job, changes nothing.
Superusers can do everything. Views call these helpers on every request, GET and POST alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from batchadmin.accounts.models import BATCH_USER, MANAGER, ROLES, VIEWER
from batchadmin.jobs.models import BatchJob, BatchJobQuerySet, BatchJobRun, BatchTaskRun
from batchadmin.processes import registry


def roles(user: Any) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached: set[str] | None = getattr(user, "_batch_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._batch_roles = cached
    return cached


def is_manager(user: Any) -> bool:
    return bool(user.is_superuser or MANAGER in roles(user))


def can_create(user: Any) -> bool:
    return is_manager(user) or BATCH_USER in roles(user)


def can_view_all(user: Any) -> bool:
    return is_manager(user) or VIEWER in roles(user)


def visible_jobs(user: Any) -> BatchJobQuerySet:
    jobs = BatchJob.objects.all()
    if can_view_all(user):
        return jobs
    if BATCH_USER in roles(user):
        return jobs.filter(Q(created_by=user) | Q(run_as=user))
    return jobs.none()


def can_change(user: Any, job: BatchJob) -> bool:
    if is_manager(user):
        return True
    return BATCH_USER in roles(user) and user.pk in (job.created_by_id, job.run_as_id)


def visible_runs(user: Any) -> models.QuerySet[BatchJobRun]:
    """The runs of the jobs ``user`` may see (visible_jobs' rule); no subquery for the roles
    that see every job, so the history inquiry's default order stays one index scan."""
    runs = BatchJobRun.objects.all()
    return runs if can_view_all(user) else runs.filter(job__in=visible_jobs(user).values("pk"))


def visible_attempts(user: Any) -> models.QuerySet[BatchTaskRun]:
    """The task attempts of the jobs ``user`` may see (visible_jobs' rule)."""
    attempts = BatchTaskRun.objects.all()
    if can_view_all(user):
        return attempts
    return attempts.filter(task__job__in=visible_jobs(user).values("pk"))


# --- what a task may run ----------------------------------------------------------------------


def may_run(user: Any, process: registry.BatchProcess) -> bool:
    """May ``user`` put ``process`` in a task, and may a task run it as them?

    ``None`` is the system (a job no user made: the seeded clean-up, a django.tasks job without
    RUN_AS): it runs everything. Superusers pass every rule, as Django's own has_perm does.
    """
    if user is None or process.run_by == registry.ANYONE:
        return True
    if process.run_by == MANAGER:
        return is_manager(user)
    if process.run_by == BATCH_USER:
        return can_create(user)
    return bool(user.is_active and user.has_perm(process.run_by))


def check_processes(user: Any, names: Iterable[str], *, where: str = "") -> None:
    """Raise ProcessNotAllowed for the first of ``names`` that ``user`` may not run (unknown
    names pass here: the callers refuse those with their own message)."""
    for name in names:
        try:
            process = registry.get(name)
        except registry.UnknownProcess:
            continue
        if not may_run(user, process):
            raise registry.ProcessNotAllowed(
                f"{where}User {user.get_username()} may not run the batch process {name} "
                f"({process.run_by_text()})."
            )


def time_limit_ceiling(user: Any) -> int | None:
    """The longest time limit (seconds) a task run as ``user`` may have: the
    BATCH_USER_MAX_TIME_LIMIT for anyone but managers and the system; None: no ceiling."""
    ceiling: int = settings.BATCH_USER_MAX_TIME_LIMIT
    if user is None or not ceiling or is_manager(user):
        return None
    return ceiling
