"""D365's Batch job history and Batch tasks inquiries: every run, and every task attempt, of
every job the user may see, filtered, sorted and paged.

The cost of a page does not grow with the history or the page: the page's ids come from one
query (an index scan in the default order, newest first: jobs 0015), the rows with their joins
from one more for the ids shown, the count from one query that stops at COUNT_CAP, and the
runs' task summary from one aggregate over the page's runs (bench/pages.py measures both
pages with 1,000,000 attempts; tests/jobs/test_inquiries.py counts the queries).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, DurationField, Exists, ExpressionWrapper, F, OuterRef
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from batchadmin.jobs import access
from batchadmin.jobs.filters import AttemptFilter, RunFilter
from batchadmin.jobs.models import BatchJobRun, BatchStatus, BatchTaskRun
from batchadmin.lib import clock
from batchadmin.lib.http import AuthedRequest

PAGE_SIZE = 50
# The count stops here ("more than 1,000"): counting a million attempts for a number nobody
# reads would cost more than the page.
COUNT_CAP = 1_000
# Each page's table polls this often while the tab is visible (a fixed number of queries per
# refresh, as for a first load).
POLL = "every 5s [document.visibilityState == 'visible']"

M = TypeVar("M", bound=models.Model)


@dataclass
class Slice(Generic[M]):
    """One page of an inquiry: its rows, where it starts and whether more follow."""

    number: int
    rows: list[M]
    has_next: bool
    count: int  # rows matching, at most COUNT_CAP + 1
    start: int  # 1-based index of the first row

    @property
    def capped(self) -> bool:
        return self.count > COUNT_CAP

    @property
    def end(self) -> int:
        return self.start + len(self.rows) - 1

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def shown_count(self) -> str:
        return f"more than {COUNT_CAP:,}" if self.capped else f"{self.count:,}"


def page_of(
    qs: models.QuerySet[M],
    number_text: str | None,
    *,
    select: tuple[str, ...],
    defer: tuple[str, ...] = (),
) -> Slice[M]:
    """Page ``number_text`` of ``qs`` (ordered): ids by OFFSET (index-only in the default
    order), then the rows with ``select`` for those ids only."""
    number = int(number_text) if number_text and number_text.isdigit() else 1
    number = max(number, 1)
    offset = (number - 1) * PAGE_SIZE
    ids = list(qs.values_list("pk", flat=True)[offset : offset + PAGE_SIZE + 1])
    has_next = len(ids) > PAGE_SIZE
    ids = ids[:PAGE_SIZE]
    if not ids and number > 1:
        # Past the end (rows went away, or a typed number): say so on the first page instead.
        return page_of(qs, "1", select=select, defer=defer)
    if number == 1 and not has_next:
        count = len(ids)  # the whole result is on this page: nothing to count
    else:
        count = qs.order_by().values("pk")[: COUNT_CAP + 1].count()
    rows = qs.model._default_manager.select_related(*select).defer(*defer).in_bulk(ids)
    return Slice(number, [rows[pk] for pk in ids if pk in rows], has_next, count, offset + 1)


def _require_role(request: AuthedRequest) -> None:
    if not (access.is_manager(request.user) or access.roles(request.user)):
        raise PermissionDenied("You have no batch role.")


def _ordered(qs: models.QuerySet[M], request: AuthedRequest) -> models.QuerySet[M]:
    """The filter's order (or newest first), always ending in the id so pages never overlap."""
    order = list(qs.query.order_by) if request.GET.get("o") else []
    if not order:
        return qs.order_by("-started_at", "-pk")
    last = str(order[-1]) if order else ""
    return qs.order_by(*order, "-pk" if last.startswith("-") else "pk")


def _query(request: AuthedRequest) -> str:
    """The filters and order as a query string, without the page (for pager and sort links)."""
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


def _template(request: AuthedRequest, name: str, target: str) -> str:
    return f"{name}#{target}" if request.htmx and request.htmx.target == target else name


# --- Batch job history -----------------------------------------------------------------------


@dataclass
class RunLine:
    run: BatchJobRun
    spec: str  # format_when spec of its times: milliseconds when it was short
    tasks: list[tuple[str, str, int]] = field(default_factory=list)  # status, label, tasks
    retries: int = 0  # attempts that were retried

    @property
    def end_spec(self) -> str:
        return clock.end_precision(self.run.started_at, self.run.ended_at)


@require_GET
def run_inquiry(request: AuthedRequest) -> HttpResponse:
    """Batch job history: every run of every job the user may see."""
    _require_role(request)
    runs = access.visible_runs(request.user).annotate(
        took=ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField())
    )
    filterset = RunFilter(request.GET, queryset=runs)
    qs = filterset.qs if filterset.is_valid() else runs.none()
    page = page_of(
        _ordered(qs, request),
        request.GET.get("page"),
        select=("job", "run_by"),
        defer=("parameters",),
    )
    # What the page's runs did: their tasks by final status (the last attempt of each; a
    # retried attempt counts as a retry, as on the job's history page), one aggregate.
    by_run: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    retries: dict[int, int] = defaultdict(int)
    later = BatchTaskRun.objects.filter(
        job_run=OuterRef("job_run"), task=OuterRef("task"), attempt__gt=OuterRef("attempt")
    )
    counts = (
        BatchTaskRun.objects.filter(job_run__in=[r.pk for r in page.rows])
        .exclude(started_at=None)
        .order_by()
        .values_list("job_run_id", "status", Exists(later))
        .annotate(n=Count("pk"))
    )
    order = list(BatchStatus.values)
    for run_id, status, retried, n in sorted(counts, key=lambda c: (c[0], order.index(c[1]))):
        if retried:
            retries[run_id] += n
        else:
            by_run[run_id].append((status, str(BatchStatus(status).label), n))
    lines = [
        RunLine(run, clock.precision(run.started_at, run.ended_at), by_run[run.pk], retries[run.pk])
        for run in page.rows
    ]
    context: dict[str, Any] = {
        "nav": "runs",
        "filter": filterset,
        "page": page,
        "lines": lines,
        "query": _query(request),
        "poll": POLL,
    }
    return render(request, _template(request, "jobs/jobrun_list.html", "run-table"), context)


# --- Batch tasks -----------------------------------------------------------------------------


@dataclass
class AttemptLine:
    attempt: BatchTaskRun
    spec: str

    @property
    def end_spec(self) -> str:
        return clock.end_precision(self.attempt.started_at, self.attempt.ended_at)

    @property
    def error_title(self) -> str:
        text = self.attempt.error_message.strip()
        return text.splitlines()[0] if text else ""


@require_GET
def attempt_inquiry(request: AuthedRequest) -> HttpResponse:
    """Batch tasks: every attempt of every task of the jobs the user may see."""
    _require_role(request)
    # Attempts only: a run's "kept" rows (attempt 0: a task a rerun did not run again) never
    # started.
    attempts = (
        access.visible_attempts(request.user)
        .exclude(started_at=None)
        .annotate(
            took=ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField()),
            wait=ExpressionWrapper(F("started_at") - F("ready_at"), output_field=DurationField()),
        )
    )
    filterset = AttemptFilter(request.GET, queryset=attempts)
    qs = filterset.qs if filterset.is_valid() else attempts.none()
    page = page_of(
        _ordered(qs, request),
        request.GET.get("page"),
        select=("task__group", "server", "job_run__job", "job_run__run_by"),
        # The traceback is for the Log; the parameters of run and task are not shown.
        defer=("traceback", "task__parameters", "job_run__parameters"),
    )
    lines = [AttemptLine(a, clock.precision(a.started_at, a.ended_at)) for a in page.rows]
    context: dict[str, Any] = {
        "nav": "attempts",
        "filter": filterset,
        "page": page,
        "lines": lines,
        "query": _query(request),
        "poll": POLL,
    }
    return render(request, _template(request, "jobs/taskrun_list.html", "attempt-table"), context)
