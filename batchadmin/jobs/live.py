"""Live pages: one poll per page, answered "nothing changed" (204) in one cheap query.

Every page that shows statuses (the job list, the job form, its history) polls while the tab is
visible, whatever was true when it was rendered: a page opened before a job existed or before
its start must still show it appear, start and end. A poll carries the *version* the page was
drawn from (``?v=``); when the version is unchanged the view answers 204 and htmx swaps
nothing, so an idle page costs the session, the user and one query every few seconds.

A version is a fingerprint of what may move a page's rows, read with index-only lookups:
- every status move of a job writes a ``StatusChange`` row (engine/transitions.py, in the
  same transaction), so its highest id moves with every start, end, cancel and release;
- every operator edit or action (the header, recurrence, skip, run now) writes an
  ``AuditEntry`` in its transaction;
- a new job moves the highest job id, a deleted one the count.
A running job's task lines move without any of these (a task ends, the next starts), so a page
showing a running job re-renders on each poll, as it did before.
"""

from __future__ import annotations

import hashlib

from django.db import connection
from django.http import HttpResponse

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, StatusChange
from batchadmin.lib.http import HtmxHttpRequest

# The poll interval of the list and the history; the job form's diagram keeps its 2 s.
POLL_SECONDS = 3


def list_version() -> str:
    """The job list's version: any job's status move, any audited edit, a new or deleted job.

    Global rather than per filter: a filter no index serves (the description search) would
    make the check cost as much as the page; a change elsewhere costs one extra re-render.
    """
    sql = (
        f"SELECT (SELECT MAX(id) FROM {StatusChange._meta.db_table}),"
        f" (SELECT MAX(id) FROM {AuditEntry._meta.db_table}),"
        f" (SELECT MAX(id) FROM {BatchJob._meta.db_table}),"
        f" (SELECT COUNT(*) FROM {BatchJob._meta.db_table})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return _opaque("-".join(str(value or 0) for value in row))


def job_version(job: BatchJob) -> str:
    """One job's version as the job page carries it: "STATE.LINES".

    STATE is its own row as loaded (status, start, run) and its latest status move: when it
    moves, the page redraws its header and task lines (job-changed). LINES is its latest audit
    entry (a line or the header edited, here or elsewhere): when only it moves, only the diagram
    redraws. Redrawing the lines for every edit raced the user's own next edit (the line they
    had just opened vanished under their typing).
    """
    sql = (
        f"SELECT (SELECT MAX(id) FROM {StatusChange._meta.db_table} WHERE job_id = %s),"
        f" (SELECT MAX(id) FROM {AuditEntry._meta.db_table} WHERE job_id = %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [job.pk, job.pk])
        changed, audited = cursor.fetchone()
    start = int(job.scheduled_start.timestamp() * 1000)
    state = _opaque(f"{job.status}-{start}-{job.current_run_id or 0}-{changed or 0}")
    return f"{state}.{_opaque(str(audited or 0))}"


def same_state(a: str, b: str) -> bool:
    """Whether two job versions (job_version) have the same STATE, whatever their LINES."""
    return a.partition(".")[0] == b.partition(".")[0]


def _opaque(fingerprint: str) -> str:
    """The fingerprint as the page carries it: it names ids and the number of jobs, which a
    batch user who sees only their own jobs has no business reading."""
    return hashlib.blake2s(fingerprint.encode(), digest_size=8).hexdigest()


def unchanged(request: HtmxHttpRequest, version: str) -> bool:
    """Whether this is a poll from a page drawn from ``version``."""
    return bool(request.htmx) and request.GET.get("v") == version


def no_change() -> HttpResponse:
    """htmx swaps nothing on 204 and keeps polling (286 would stop it)."""
    return HttpResponse(status=204)
