"""The Batch jobs list: the live table, its bulk actions, saved filters and exports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet, Window
from django.http import HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from batchadmin.engine import transitions
from batchadmin.jobs import access, exports, live
from batchadmin.jobs.filters import JobFilter
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, SavedJobFilter
from batchadmin.lib import numbers
from batchadmin.lib.http import AuthedRequest

S = BatchStatus
PAGE_SIZE = 50
BULK_ACTIONS = {
    "waiting": S.WAITING,
    "withhold": S.WITHHOLD,
    "cancel": S.CANCELING,
}
# "All jobs matching the filter" changes at most this many at once: each job is checked and
# moved in its own transaction, and the confirmation lists them.
BULK_MAX = 1000
NO_TASKS = ""  # BulkPlan: left alone because it has no tasks
BULK_LABELS = {"waiting": "Set Waiting", "withhold": "Withhold", "cancel": "Cancel"}
# Parameters of the list's own machinery, never part of a filter (saved, exported, linked).
NOT_FILTER = ("page", "poll", "v")


def _jobs(request: AuthedRequest) -> tuple[JobFilter, QuerySet[BatchJob]]:
    """The jobs the user may see, filtered and sorted as the query string says."""
    jobs = access.visible_jobs(request.user).select_related(
        "created_by", "run_as", "recurrence__paused_by", "django_task"
    )
    filterset = JobFilter(request.GET, queryset=jobs)  # adds the last run and the status rank
    qs = filterset.qs if filterset.is_valid() else jobs.none()
    if not request.GET.get("o"):
        qs = qs.order_by("-pk")
    return filterset, qs


def _filter_query(query: QueryDict) -> str:
    kept = query.copy()
    for name in NOT_FILTER:
        kept.pop(name, None)
    return kept.urlencode()


@require_GET
def job_list(request: AuthedRequest) -> HttpResponse:
    """The list, and its live refresh: the table polls every POLL_SECONDS while the tab is
    visible, and an unchanged version answers 204 in one query (jobs/live.py)."""
    polled = bool(request.htmx and request.htmx.target == "job-table")
    version = live.list_version()
    if polled and live.unchanged(request, version):
        return live.no_change()
    filterset, qs = _jobs(request)
    searched = bool(filterset.is_valid() and filterset.form.cleaned_data.get("description"))
    page, rows = _page(qs, request.GET.get("page"), count_in_page=searched)
    query = _filter_query(request.GET)
    context = {
        "nav": "jobs",
        "filter": filterset,
        "page": page,
        "rows": rows,
        "version": version,
        "poll_seconds": live.POLL_SECONDS,
        "query": query,
        "order": request.GET.get("o", ""),
        "now": now(),
        "can_create": access.can_create(request.user),
        "can_bulk": can_bulk(request.user),
        "can_export": can_export(request.user),
        "bulk_actions": BULK_LABELS,
        "saved_filters": [] if polled else list(request.user.saved_job_filters.all()),
    }
    template = "jobs/job_list.html"
    if polled:
        template += "#job-table"
    return render(request, template, context)


def _page(
    qs: QuerySet[BatchJob], number: str | None, *, count_in_page: bool = False
) -> tuple[Page[int], list[BatchJob]]:
    """Page ``number`` of the list and its jobs. The OFFSET reads every row it skips, so it
    runs on the job ids alone; the jobs with their joins are read for the 50 shown only (page
    500 of 100,000 jobs: the joins ran for 25,000 rows, bench/pages.py).

    ``count_in_page``: a filter no index serves in order (the description search, through its
    trigram index) makes PostgreSQL read every match for the page as for the count, so the
    page's query also counts them (COUNT(*) OVER ()) and the matches are read once, not twice.
    A page past the last one finds no row to count on, and the paginator counts as usual.
    """
    paginator = Paginator(qs.values_list("pk", flat=True), PAGE_SIZE)
    page: Page[int] | None = None
    if count_in_page and (not number or (numbers.whole(number) or 0) > 0):
        wanted = int(number or 1)
        start = (wanted - 1) * PAGE_SIZE
        counted = qs.annotate(total=Window(Count("pk"))).values_list("pk", "total")
        found = list(counted[start : start + PAGE_SIZE])
        if found or wanted == 1:
            paginator.count = found[0][1] if found else 0  # a cached_property: set, not counted
            page = paginator.page(wanted)
            page.object_list = [pk for pk, _ in found]
    if page is None:
        page = paginator.get_page(number)
    ids = list(page.object_list)
    jobs = qs.in_bulk(ids)
    return page, [jobs[pk] for pk in ids if pk in jobs]  # one deleted meanwhile is left out


# --- Bulk actions: the Change status dialog's rules, for many jobs -------------------------


def can_bulk(user: Any) -> bool:
    """Bulk actions are for those who may change jobs; a Viewer changes nothing.

    A batch user sees only the jobs they may change (access.visible_jobs), so "every visible
    job" is "every job they may change" for both roles that get the buttons."""
    return access.can_create(user)


@dataclass
class BulkPlan:
    """What a bulk action will do, told before it acts (as the single-job dialog does)."""

    action: str
    jobs: list[BatchJob]
    will: list[str] = field(default_factory=list)  # "2 executing jobs will be canceled"
    unchanged: list[str] = field(default_factory=list)  # "1 job is Waiting: not changed"
    movable: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # job id: why it stays as it is
    danger: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _plan(action: str, jobs: list[BatchJob]) -> BulkPlan:
    """Sort the chosen jobs by what the action does to each, by the rules of USER_MOVES."""
    plan = BulkPlan(action=action, jobs=jobs, danger=action == "cancel")
    to = BULK_ACTIONS[action]
    with_tasks = set(
        BatchTask.objects.filter(job__in=[job.pk for job in jobs])
        .values_list("job_id", flat=True)
        .distinct()
    )
    at = now()
    groups: Counter[tuple[str, str]] = Counter()  # (which jobs, what happens to them)
    skipped: Counter[str] = Counter()  # a status label, or NO_TASKS
    for job in jobs:
        status = S(job.status)
        if to not in transitions.USER_MOVES.get(status, ()):
            skipped[f"{status.label}"] += 1
            plan.refused[job.pk] = str(status.label)
            continue
        if to == S.WAITING and job.pk not in with_tasks:
            # As the Change status dialog: an empty job is set Waiting only when meant.
            skipped[NO_TASKS] += 1
            plan.refused[job.pk] = "no tasks: use Change status on the job to run it empty"
            continue
        plan.movable.append(job.pk)
        if to == S.CANCELING:
            groups["executing", "will be canceled: running tasks are asked to stop"] += 1
        elif to == S.WAITING and status in transitions.TERMINAL_JOB_STATUSES:
            groups["finished", "will run again: every task starts from scratch"] += 1
        elif to == S.WAITING and job.scheduled_start <= at:
            groups["held", "will start within seconds (the scheduled start has passed)"] += 1
        elif to == S.WAITING:
            groups["held", "will wait for the scheduled start"] += 1
        elif status == S.WAITING:
            groups["waiting", "will be held (Withhold) and not start"] += 1
        else:
            groups["finished", "will be set to Withhold"] += 1
    for (which, what), n in groups.items():
        plan.will.append(f"{n} {which} job{'' if n == 1 else 's'} {what}")
    for why, n in skipped.items():
        if why == NO_TASKS:
            plan.unchanged.append(
                f"{_plural(n, 'job')} without tasks: not changed (set an empty job Waiting "
                "with Change status on the job, which asks first)"
            )
        else:
            plan.unchanged.append(
                f"{_plural(n, 'job')} {'is' if n == 1 else 'are'} {why}: not changed"
            )
    return plan


def _chosen(request: AuthedRequest) -> tuple[list[BatchJob], bool, str]:
    """The jobs a bulk POST names: the ticked ones, or with scope=all every job matching the
    filter it was sent from (read again now, not trusted from the page)."""
    query = request.POST.get("query", "")
    if request.POST.get("scope") == "all":
        get = request.GET
        try:
            request.GET = QueryDict(query)
            _, qs = _jobs(request)
        finally:
            request.GET = get
        return list(qs.order_by("pk")[: BULK_MAX + 1]), True, query
    ids = [pk for pk in map(numbers.whole, request.POST.getlist("job")) if pk is not None]
    jobs = access.visible_jobs(request.user).filter(pk__in=ids).order_by("pk")
    return list(jobs), False, query


@require_POST
def bulk_status(request: AuthedRequest) -> HttpResponse:
    """Set Waiting, Withhold or Cancel many jobs: first a confirmation that says what will
    happen; only the confirmed POST (confirm=1) acts, each job checked and moved on its own."""
    if not can_bulk(request.user):
        raise PermissionDenied("Viewers can't change batch jobs.")
    action = request.POST.get("action", "")
    if action not in BULK_ACTIONS:
        messages.error(request, "Choose Waiting, Withhold or Cancel.")
        return _back(request)
    jobs, everything, query = _chosen(request)
    if not jobs:
        messages.warning(request, "Select one or more jobs first.")
        return _back(request)
    if len(jobs) > BULK_MAX:
        messages.error(
            request,
            f"More than {BULK_MAX} jobs match the filter: narrow it down to change them at once.",
        )
        return _back(request)
    if request.POST.get("confirm") != "1":
        context = {
            "nav": "jobs",
            "plan": _plan(action, jobs),
            "label": BULK_LABELS[action],
            "everything": everything,
            "query": query,
        }
        template = "jobs/job_bulk_confirm.html"
        if request.htmx:
            template += "#dialog"
        return render(request, template, context)
    done: list[str] = []
    refused: list[str] = []
    plan = _plan(action, jobs)  # read again: what the confirmation showed may have moved
    for job in jobs:
        if job.pk in plan.refused:
            refused.append(f"{job.pk} ({plan.refused[job.pk]})")
            continue
        if not access.can_change(request.user, job):
            refused.append(f"{job.pk} (not yours to change)")
            continue
        try:
            ok = transitions.change_status(
                job_id=job.pk, to=BULK_ACTIONS[action], by_id=request.user.pk
            )
        except transitions.IllegalMove:
            ok = False
        (done if ok else refused).append(str(job.pk) if ok else f"{job.pk} (changed meanwhile)")
    if done:
        messages.success(request, f"Changed {len(done)} job(s): {_ids(done)}.")
    if refused:
        messages.error(request, f"Not changed: {_ids(refused)}.")
    return _back(request)


def _ids(items: list[str], most: int = 20) -> str:
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


def _back(request: AuthedRequest) -> HttpResponse:
    query = request.POST.get("query", "")
    url = f"/jobs/?{query}" if query else "/jobs/"
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


# --- Saved filters and exports ---------------------------------------------------------------


@require_POST
def filter_save(request: AuthedRequest) -> HttpResponse:
    """Save the list's current filter under a name, for the signed-in user only."""
    name = request.POST.get("name", "").strip()
    query = _filter_query(QueryDict(request.POST.get("query", "")))
    if not name:
        messages.error(request, "Give the filter a name to save it.")
    elif len(name) > 80:
        messages.error(request, "A filter's name has at most 80 characters.")
    elif len(query) > 2000:
        messages.error(request, "This filter is too long to save.")
    else:
        try:
            with transaction.atomic():
                SavedJobFilter.objects.update_or_create(
                    user=request.user, name=name, defaults={"query": query}
                )
        except IntegrityError:  # two saves of the same name at once: the other one won
            pass
        messages.success(request, f"Saved the filter “{name}”.")
    return redirect(f"/jobs/?{query}" if query else "/jobs/")


@require_POST
def filter_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    saved = get_object_or_404(SavedJobFilter, pk=pk, user=request.user)  # 404: not yours
    saved.delete()
    messages.success(request, f"Deleted the saved filter “{saved.name}”.")
    return redirect("jobs:list")


def can_export(user: Any) -> bool:
    """Anyone with a batch role may take the jobs they see with them; no role, no export."""
    return bool(access.roles(user)) or access.is_manager(user)


@require_GET
def job_export(request: AuthedRequest, fmt: str) -> HttpResponseBase:
    """Every job matching the list's filter and sort (not only the page) as CSV or Excel."""
    if not can_export(request.user):
        raise PermissionDenied("You need a batch role to export batch jobs.")
    filterset, qs = _jobs(request)
    if not filterset.is_valid():
        return HttpResponse(f"The filter is not valid: {filterset.errors}", status=400)
    if fmt == "xlsx":
        return exports.xlsx_response(qs)
    return exports.csv_response(qs)
