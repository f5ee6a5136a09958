from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from batchadmin.jobs import access, transitions
from batchadmin.jobs.filters import JobFilter
from batchadmin.jobs.models import RUNNING_JOB_STATUSES, BatchJob, BatchStatus
from batchadmin.lib.http import AuthedRequest

PAGE_SIZE = 50
BULK_ACTIONS = {
    "waiting": BatchStatus.WAITING,
    "withhold": BatchStatus.WITHHOLD,
    "cancel": BatchStatus.CANCELING,
}
# While any visible job is in one of these, the list polls for fresh statuses.
LIVE_STATUSES = (*RUNNING_JOB_STATUSES, BatchStatus.WAITING)


def _get_job(request: AuthedRequest, pk: int, *, change: bool = False) -> BatchJob:
    """The job if the user may see it (404 otherwise, so ids of others' jobs do not leak)."""
    job = get_object_or_404(access.visible_jobs(request.user), pk=pk)
    if change and not access.can_change(request.user, job):
        raise Http404("You can't change this batch job.")
    return job


@require_GET
def job_list(request: AuthedRequest) -> HttpResponse:
    jobs = access.visible_jobs(request.user).select_related("created_by", "run_as")
    filterset = JobFilter(request.GET, queryset=jobs)
    qs = filterset.qs if filterset.is_valid() else jobs.none()
    if not request.GET.get("o"):
        qs = qs.order_by("-pk")
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    live = any(job.status in LIVE_STATUSES for job in rows)
    if request.htmx and request.htmx.target == "job-table" and request.GET.get("poll") and not live:
        # Nothing visible can change by itself any more: stop the polling.
        response: HttpResponse = HttpResponseStopPolling()
        return response
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("poll", None)
    context = {
        "nav": "jobs",
        "filter": filterset,
        "page": page,
        "rows": rows,
        "live": live,
        "query": query.urlencode(),
        "order": request.GET.get("o", ""),
        "now": now(),
        "can_create": access.can_create(request.user),
        "bulk_actions": BULK_ACTIONS,
    }
    template = "jobs/job_list.html"
    if request.htmx and request.htmx.target == "job-table":
        template += "#job-table"
    return render(request, template, context)


@require_POST
def bulk_status(request: AuthedRequest) -> HttpResponse:
    """Change status of the selected jobs at once; each job is checked on its own."""
    action = request.POST.get("action", "")
    if action not in BULK_ACTIONS:
        messages.error(request, "Choose Waiting, Withhold or Cancel.")
        return redirect(_back(request))
    ids = [int(pk) for pk in request.POST.getlist("job") if pk.isdigit()]
    if not ids:
        messages.warning(request, "Select one or more jobs first.")
        return redirect(_back(request))
    done: list[str] = []
    refused: list[str] = []
    for job in access.visible_jobs(request.user).filter(pk__in=ids).order_by("pk"):
        if not access.can_change(request.user, job):
            refused.append(f"{job.pk} (not yours to change)")
            continue
        try:
            ok = transitions.change_status(
                job_id=job.pk, to=BULK_ACTIONS[action], by_id=request.user.pk
            )
        except transitions.IllegalMove:
            refused.append(f"{job.pk} ({job.get_status_display()})")
            continue
        (done if ok else refused).append(str(job.pk) if ok else f"{job.pk} (changed meanwhile)")
    if done:
        messages.success(request, f"Changed {len(done)} job(s): {', '.join(done)}.")
    if refused:
        messages.error(request, f"Not changed: {', '.join(refused)}.")
    return redirect(_back(request))


def _back(request: AuthedRequest) -> str:
    query = request.POST.get("query", "")
    return f"/jobs/?{query}" if query else "/jobs/"


@require_GET
def job_row(request: AuthedRequest, pk: int) -> HttpResponse:
    """One row of the list, polled while the job is live; a finished row stops polling."""
    job = get_object_or_404(
        access.visible_jobs(request.user).select_related("created_by", "run_as"), pk=pk
    )
    return render(request, "jobs/job_list.html#job-row", {"job": job})


# TODO(job form): replaced by the batch job form (header + task grid + diagram).
@require_GET
def job_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    raise Http404("The batch job form is being built.")


@require_GET
def job_create(request: AuthedRequest) -> HttpResponse:
    raise Http404("The batch job form is being built.")
