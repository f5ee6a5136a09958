"""The REST API, /api/v1/: a thin layer over the functions the pages and `manage.py batch` call.

Each endpoint checks the caller's role as the pages do (jobs/access.py): 401 without a valid
token, 404 for a job the caller may not see (so ids of others' jobs do not leak), 403 for one
they see but may not act on, or for a role that may not act at all. Every error is JSON,
``{"message": ...}``, naming what is wrong. django-ninja turns the signatures and the schemas
(api/schemas.py) into the OpenAPI document at /api/openapi.json; /api/docs shows it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.paginator import EmptyPage, Paginator
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils.timezone import now
from ninja import NinjaAPI, Router, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import Swagger

# The function, not the annotation alias ninja.Query, which mypy reads as a generic type.
from ninja.params.functions import Query

from batchadmin.alerts.models import AlertRule, Webhook, WebhookDelivery
from batchadmin.api import schemas
from batchadmin.api.auth import TokenAuth, TokenThrottle
from batchadmin.api.schemas import Error
from batchadmin.audit import trail
from batchadmin.audit.models import AuditEntry
from batchadmin.engine import transitions
from batchadmin.jobs import access, copying, io, triggers
from batchadmin.jobs.filters import JobFilter
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    ActivePeriod,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    Calendar,
    Company,
    Priority,
    StatusChange,
)
from batchadmin.lib import daterange
from batchadmin.processes.registry import ProcessNotAllowed
from batchadmin.servers import coverage
from batchadmin.servers.models import BatchGroup, BatchServerReplica

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
STATUS_MOVES = {
    "waiting": BatchStatus.WAITING,
    "withhold": BatchStatus.WITHHOLD,
    "cancel": BatchStatus.CANCELING,
}
LEVELS = {"info": BatchLogEntry.Level.INFO, "warning": BatchLogEntry.Level.WARNING}
LEVELS["error"] = BatchLogEntry.Level.ERROR
LEVEL_NAMES = {level: name for name, level in LEVELS.items()}
# How often a long poll (/wait) looks at the job's status changes: one indexed query each time.
WAIT_POLL_SECONDS = 0.5
# The errors every authenticated endpoint may answer, for the OpenAPI document.
ERRORS: dict[int, type[Error]] = {400: Error, 401: Error, 403: Error, 404: Error, 429: Error}
UNAUTHORIZED = (
    "Missing or unknown API token: send 'Authorization: Bearer <token>' with a token from "
    "your settings page (or `manage.py batch token USERNAME`)."
)


class LocalSwagger(Swagger):
    """Swagger UI from django-ninja's own files (settings.NINJA_DIR), never from a CDN: ninja
    picks its files only when it is in INSTALLED_APPS, which it is not (see settings.py)."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        context = {
            "swagger_settings": json.dumps(self.settings, indent=1),
            "api": api,
            "add_csrf": False,  # tokens, not the session: no CSRF token to send
        }
        return render(request, self.template, context)


api = NinjaAPI(
    title="batchadmin",
    version="1",
    description=(
        "The batch jobs of batchadmin (D365 F&O's batch framework on Django and Celery). "
        "Authenticate with a personal API token: `Authorization: Bearer <token>`, made on your "
        "settings page. Each endpoint allows what your role allows on the pages. Requests "
        "are limited per token (see docs/api.md)."
    ),
    urls_namespace="api",
    auth=TokenAuth(),
    throttle=[TokenThrottle()],
    docs=LocalSwagger(),
    docs_url="/docs",
    openapi_url="/openapi.json",
)
v1 = Router(tags=["batch jobs"])
setup = Router(tags=["set-up"])


# --- errors ---------------------------------------------------------------------------------


def _error(
    request: HttpRequest, status: int, message: str, errors: dict[str, list[str]] | None = None
) -> HttpResponse:
    body: dict[str, Any] = {"message": message}
    if errors:
        body["errors"] = errors
    return api.create_response(request, body, status=status)


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = _error(request, 401, UNAUTHORIZED)
    response["WWW-Authenticate"] = 'Bearer realm="batchadmin"'
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 429:
        limit, window = settings.BATCH_API_RATE_LIMIT, settings.BATCH_API_RATE_WINDOW
        return _error(
            request, 429, f"Too many requests: at most {limit} per {window} s for each token."
        )
    return _error(request, exc.status_code, str(exc))


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """Pydantic's errors as one sentence per field: 'body.status: Input should be ...'."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        # ("body", <parameter>, "status") or ("query", "timeout"): the field is what the caller
        # sent; the parameter's name is ours.
        loc = [str(part) for part in error.get("loc", ())]
        where = ".".join(loc[2:] if loc[:1] == ["body"] and len(loc) > 2 else loc[1:] or loc)
        errors.setdefault(where, []).append(str(error.get("msg", "invalid")))
    message = "; ".join(f"{where}: {' '.join(msgs)}" for where, msgs in errors.items())
    return _error(request, 400, f"Invalid request: {message}.", errors)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, 404, str(exc) or "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return _error(request, 403, str(exc) or "Your role may not do this.")


# --- access ---------------------------------------------------------------------------------


def _job(request: HttpRequest, pk: int, *, change: bool = False) -> BatchJob:
    """The job if the caller may see it (404 otherwise); with ``change``, 403 when they may
    see it but not change it."""
    job = access.visible_jobs(request.user).filter(pk=pk).first()
    if job is None:
        raise Http404(f"There is no batch job {pk} that you can see.")
    if change and not access.can_change(request.user, job):
        raise PermissionDenied(f"You can see batch job {pk} but your role may not change it.")
    return job


def _caller(request: HttpRequest) -> User:
    """The token's user (TokenAuth put it on the request)."""
    assert isinstance(request.user, User)
    return request.user


def _require_role(request: HttpRequest) -> None:
    if not (access.is_manager(request.user) or access.roles(request.user)):
        raise PermissionDenied("You have no batch role; ask a Batch job manager for one.")


def _require_manager(request: HttpRequest, what: str) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied(f"Only a Batch job manager can {what}.")


def _paged(qs: Any, page: int, page_size: int) -> tuple[list[Any], int, int]:
    """The rows of ``page`` (past the last: none), the count and the number of pages."""
    paginator = Paginator(qs, min(max(page_size, 1), MAX_PAGE_SIZE))
    try:
        rows = list(paginator.page(page).object_list)
    except EmptyPage:
        rows = []
    return rows, paginator.count, paginator.num_pages


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def _priority_name(value: int | None) -> str | None:
    return Priority(value).name.lower() if value is not None else None


# --- jobs -----------------------------------------------------------------------------------


def _summary(job: BatchJob) -> dict[str, Any]:
    return {
        "id": job.pk,
        "description": job.description,
        "status": job.status,
        "scheduled_start": job.scheduled_start,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "priority": _priority_name(job.priority) if job.priority_overridden else None,
        "critical": job.critical,
        "created_by": _username(job.created_by),
        "run_as": _username(job.run_as),
        "recurrence": job.recurrence_words,
        "overlap": recurring.overlap if (recurring := job.get_recurrence()) else None,
        "paused": job.pause_note,
        "url": settings.SITE_ROOT + reverse("jobs:detail", args=[job.pk]),
    }


def _filter_data(
    request: HttpRequest,
    status: list[str],
    group: str,
    q: str,
    created_by: str,
    run_as: str,
    scheduled_after: dt.date | None,
    scheduled_before: dt.date | None,
    has_errors: bool,
    o: str,
) -> QueryDict:
    """The list page's query string (jobs/filters.py) from the API's names: codes and user
    names instead of ids."""
    data = QueryDict(mutable=True)
    data.setlist("status", status)
    if group:
        pk = BatchGroup.objects.filter(code=group).values_list("pk", flat=True).first()
        if pk is None:
            raise HttpError(400, f"Unknown batch group {group!r}.")
        data["group"] = str(pk)
    users = get_user_model().objects
    for name, value in (("created_by", created_by), ("run_as", run_as)):
        if value:
            pk = users.filter(username=value).values_list("pk", flat=True).first()
            if pk is None:
                raise HttpError(400, f"{name}: unknown user {value!r}.")
            data[name] = str(pk)
    if q:
        data["description"] = q
    if scheduled_after:
        data["scheduled_after"] = scheduled_after.isoformat()
    if scheduled_before:
        data["scheduled_before"] = scheduled_before.isoformat()
    if has_errors:
        data["has_errors"] = "on"
    if o:
        data["o"] = o
    return data


@v1.get("/jobs", response={200: schemas.JobPage, **ERRORS}, summary="List batch jobs")
def job_list(
    request: HttpRequest,
    status: list[str] | None = Query(
        None, description="Repeat for several: ?status=error&status=ended"
    ),
    group: str = Query("", description="Jobs with a task in this batch group (its code)."),
    q: str = Query("", description="Description contains."),
    created_by: str = Query("", description="Username."),
    run_as: str = Query("", description="Username."),
    scheduled_after: dt.date | None = None,
    scheduled_before: dt.date | None = None,
    has_errors: bool = False,
    o: str = Query("", description="Sort: id, description, status, scheduled_start, ... (-desc)."),
    page: int = Query(1, ge=1),
    page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> dict[str, Any]:
    """The Batch jobs list with its filters; the jobs the caller may see, newest first."""
    _require_role(request)
    data = _filter_data(
        request,
        status or [],
        group,
        q,
        created_by,
        run_as,
        scheduled_after,
        scheduled_before,
        has_errors,
        o,
    )
    jobs = access.visible_jobs(request.user)
    filterset = JobFilter(data, queryset=jobs)
    if not filterset.is_valid():
        errors = {k: [str(m) for m in v] for k, v in filterset.errors.items()}
        message = "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        return _error(request, 400, f"Invalid filter: {message}", errors)  # type: ignore[return-value]
    qs: QuerySet[BatchJob] = filterset.qs
    if not o:
        qs = qs.order_by("-pk")
    ids, count, pages = _paged(qs.values_list("pk", flat=True), page, page_size)
    found = qs.select_related("created_by", "run_as", "recurrence__paused_by").in_bulk(ids)
    rows = [_summary(found[pk]) for pk in ids if pk in found]
    return schemas.page_of(rows, count=count, page=page, pages=pages)


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": 'One job, or {"groups": [...], "jobs": [...]}: the '
                    "JSON `manage.py batch import` reads (docs/api.md).",
                }
            }
        },
    }
}


@v1.post(
    "/jobs",
    response={201: schemas.Created, **ERRORS},
    summary="Create jobs from the import JSON",
    openapi_extra=IMPORT_BODY,
)
def job_create(request: HttpRequest) -> Any:
    """Create the jobs (and groups) the body describes, as `batch import` does: all or nothing,
    with the same messages. Batch users and managers; groups, Run by, critical and alerts for
    other users are for managers, as on the pages."""
    if not access.can_create(request.user):
        raise PermissionDenied("Your role may not create batch jobs.")
    try:
        data = io.parse_json(request.body.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"The body is not valid JSON: {exc}.") from None
    except io.ImportFailure as exc:
        raise HttpError(400, f"Nothing was imported. {exc}") from None
    if not access.is_manager(request.user):
        culprit = io.needs_manager(data, username=request.user.get_username())
        if culprit:
            raise PermissionDenied(f"Nothing was imported. {culprit}")
    try:
        jobs = io.import_data(data, user=request.user)
    except io.ImportRefused as exc:  # a process or time limit the caller's role may not have
        raise PermissionDenied(f"Nothing was imported. {exc}") from None
    except io.ImportFailure as exc:
        raise HttpError(400, f"Nothing was imported. {exc}") from None
    return Status(201, {"ids": [job.pk for job in jobs]})


@v1.get("/jobs/{job_id}", response={200: schemas.JobShown, **ERRORS}, summary="Show a job")
def job_show(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """The job and its tasks: what `manage.py batch show ID --json` prints."""
    return io.show_job(_job(request, job_id))


@v1.get("/jobs/{job_id}/export", response={200: dict[str, Any], **ERRORS}, summary="Export a job")
def job_export(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """The job as JSON that POST /api/v1/jobs (and `batch import`) accepts."""
    return io.export_job(_job(request, job_id))


@v1.delete("/jobs/{job_id}", response={204: None, 409: Error, **ERRORS}, summary="Delete a job")
def job_delete(request: HttpRequest, job_id: int) -> Any:
    """Delete a job that is not running, with its tasks and history."""
    job = _job(request, job_id, change=True)
    try:
        with transaction.atomic():
            transitions.lock_editable_job(job.pk)
            job.delete()
    except transitions.ChangeRefused as exc:
        raise HttpError(
            409, str(exc).replace("Nothing was saved.", "Nothing was deleted.")
        ) from None
    return Status(204, None)


@v1.post(
    "/jobs/{job_id}/status",
    response={200: schemas.JobStatus, 409: Error, **ERRORS},
    summary="Change status",
)
def job_status(request: HttpRequest, job_id: int, body: schemas.StatusIn) -> dict[str, Any]:
    """The Change status dialog: waiting (run, or run again), withhold, or cancel."""
    job = _job(request, job_id, change=True)
    try:
        moved = transitions.change_status(
            job_id=job.pk, to=STATUS_MOVES[body.status], by_id=request.user.pk, via=trail.Via.API
        )
    except transitions.IllegalMove as exc:
        raise HttpError(409, str(exc)) from None
    if not moved:
        raise HttpError(409, f"Job {job.pk} changed status meanwhile; look again and retry.")
    return {
        "id": job.pk,
        "status": BatchJob.objects.values_list("status", flat=True).get(pk=job.pk),
    }


def _status_of(job_id: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": BatchJob.objects.values_list("status", flat=True).get(pk=job_id),
    }


def _task_key(job: BatchJob, key: str | None, what: str) -> int:
    if not key:
        raise HttpError(400, f"{what}: name a task ID (key) of job {job.pk}.")
    task_id = job.tasks.filter(key=key).values_list("pk", flat=True).first()
    if task_id is None:
        raise HttpError(400, f"{what}: job {job.pk} has no task {key!r}.")
    return task_id


def _act(job: BatchJob, action: Any) -> dict[str, Any]:
    """An operator action (skip, rerun, run now), as the pages and `batch` run it."""
    try:
        done = action()
    except transitions.Refused as exc:
        raise HttpError(409, f"Nothing was changed. {exc}") from None
    if not done:
        raise HttpError(409, f"Job {job.pk} changed meanwhile; nothing was changed. Try again.")
    return _status_of(job.pk)


@v1.post(
    "/jobs/{job_id}/rerun",
    response={200: schemas.JobStatus, 409: Error, **ERRORS},
    summary="Rerun a finished job now",
)
def job_rerun(request: HttpRequest, job_id: int, body: schemas.RerunIn) -> dict[str, Any]:
    """Batch job history > Rerun, started at once: the whole job, only the tasks that failed or
    did not run, or from a task (that task and everything downstream of it). A recurring job
    keeps its next occurrence and its remaining runs."""
    job = _job(request, job_id, change=True)
    start = _task_key(job, body.from_task, "from_task") if body.what == "from" else None
    return _act(
        job,
        lambda: transitions.rerun_job(
            job_id=job.pk,
            by_id=request.user.pk,
            only_failed=body.what == "failed",
            from_task_id=start,
            via=trail.Via.API,
        ),
    )


@v1.post(
    "/jobs/{job_id}/skip",
    response={200: schemas.JobStatus, 409: Error, **ERRORS},
    summary="Skip a task",
)
def job_skip(request: HttpRequest, job_id: int, body: schemas.SkipIn) -> dict[str, Any]:
    """Skip a task in Error, Waiting or Ready, with a reason: it counts as Ended for the tasks
    after it and never fails the job; a finished job resumes (docs/operator-actions.md)."""
    job = _job(request, job_id, change=True)
    task_id = _task_key(job, body.task, "task")
    return _act(
        job,
        lambda: transitions.skip_task(
            task_id=task_id, reason=body.reason, by_id=request.user.pk, via=trail.Via.API
        ),
    )


@v1.post(
    "/jobs/{job_id}/run-now",
    response={200: schemas.JobStatus, 409: Error, **ERRORS},
    summary="Run a job now",
)
def job_run_now(request: HttpRequest, job_id: int, body: schemas.RunNowIn) -> dict[str, Any]:
    """Run now, optionally with parameters for this run only (validated by each task's
    process form; the stored parameters do not change). A recurring job keeps its next
    occurrence and its remaining runs."""
    job = _job(request, job_id, change=True)
    return _act(
        job,
        lambda: transitions.run_job_now(
            job_id=job.pk, by_id=request.user.pk, overrides=body.overrides, via=trail.Via.API
        ),
    )


def _pause_state(job_id: int) -> dict[str, Any]:
    job = BatchJob.objects.select_related("recurrence__paused_by").get(pk=job_id)
    recurring = job.get_recurrence()
    return {
        "id": job.pk,
        "status": job.status,
        "paused": bool(recurring and recurring.is_paused()),
        "note": recurring.pause_note() if recurring else "",
        "paused_until": recurring.paused_until if recurring else None,
    }


@v1.post(
    "/jobs/{job_id}/pause",
    response={200: schemas.PauseOut, 409: Error, **ERRORS},
    summary="Pause a job's recurrence",
)
def job_pause(request: HttpRequest, job_id: int, body: schemas.PauseIn) -> dict[str, Any]:
    """Pause the recurrence with a note (why, and optionally until when): no run starts until
    it is resumed, by hand or at ``until``. A run in progress finishes."""
    job = _job(request, job_id, change=True)
    recurring = job.get_recurrence()
    if recurring is None:
        raise HttpError(409, f"Nothing was changed. Job {job.pk} has no recurrence to pause.")
    until = recurring.aware(body.until) if body.until else None
    _act(
        job,
        lambda: transitions.pause_recurrence(
            job_id=job.pk,
            by_id=request.user.pk,
            reason=body.reason,
            until=until,
            via=trail.Via.API,
        ),
    )
    return _pause_state(job.pk)


@v1.post(
    "/jobs/{job_id}/resume",
    response={200: schemas.PauseOut, 409: Error, **ERRORS},
    summary="Resume a job's paused recurrence",
)
def job_resume(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """Resume the paused recurrence: the job next starts at its first occurrence from now (the
    ones that passed while paused are recorded as missed)."""
    job = _job(request, job_id, change=True)
    _act(
        job,
        lambda: transitions.resume_recurrence(
            job_id=job.pk, by_id=request.user.pk, via=trail.Via.API
        ),
    )
    return _pause_state(job.pk)


@v1.get(
    "/jobs/{job_id}/trigger",
    response={200: schemas.TriggerShown, **ERRORS},
    summary="The job this job runs after",
)
def job_trigger_show(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """The job this one runs after (``after`` null: none), on which final status, and the
    jobs that run after this one (``followers``)."""
    return io.show_trigger(_job(request, job_id))


@v1.put(
    "/jobs/{job_id}/trigger",
    response={200: schemas.TriggerShown, 400: Error, **ERRORS},
    summary="Set the job this job runs after",
)
def job_trigger(request: HttpRequest, job_id: int, body: schemas.TriggerIn) -> dict[str, Any]:
    """The job runs each time a run of ``after`` ends with ``status`` (besides its recurrence,
    if it has one); ``after`` null: it follows no job. Triggers that would loop are refused."""
    job = _job(request, job_id, change=True)
    if body.after is not None and not access.visible_jobs(request.user).filter(pk=body.after):
        raise HttpError(400, f"There is no batch job {body.after} that you can see to follow.")
    try:
        triggers.set_trigger(
            job_id=job.pk,
            after_id=body.after,
            status=body.status,
            by=request.user,
            via=trail.Via.API,
        )
    except triggers.TriggerError as exc:
        raise HttpError(400, f"Nothing was changed. {exc}") from None
    job.refresh_from_db()
    return io.show_trigger(job)


@v1.post(
    "/jobs/{job_id}/backfill",
    response={200: schemas.BackfillOut, 409: Error, **ERRORS},
    summary="Backfill missed occurrences",
)
def job_backfill(request: HttpRequest, job_id: int, body: schemas.BackfillIn) -> dict[str, Any]:
    """Run a recurring job once for each occurrence missed from ``from`` to ``to`` (or only
    the last), one after the other, each run recording its occurrence; ``dry_run`` previews.
    Batch job managers only, as `batch backfill`."""
    job = _job(request, job_id)
    _require_manager(request, "backfill a job")
    try:
        times = transitions.backfill_job(
            job_id=job.pk,
            first_day=body.from_,
            last_day=body.to,
            only_last=body.last,
            dry_run=body.dry_run,
            by_id=request.user.pk,
            via=trail.Via.API,
        )
    except transitions.Refused as exc:
        raise HttpError(409, f"Nothing was started. {exc}") from None
    return {"id": job.pk, "occurrences": times, "started": 0 if body.dry_run else len(times)}


@v1.get(
    "/jobs/{job_id}/audit",
    response={200: list[schemas.AuditOut], **ERRORS},
    summary="A job's audit trail",
)
def job_audit(request: HttpRequest, job_id: int) -> list[dict[str, Any]]:
    """Every operator action on the job, oldest first (the same entries as `batch audit`)."""
    job = _job(request, job_id)
    return [
        {
            "at": e.at,
            "user": e.username,
            "action": e.action,
            "reason": e.reason,
            "target": e.target,
            "changes": e.changes,
            "via": e.via,
        }
        for e in AuditEntry.objects.of_job(job.pk).order_by("at", "pk")
    ]


@v1.post(
    "/jobs/{job_id}/copy",
    response={201: schemas.CopyCreated, **ERRORS},
    summary="Copy a job",
)
def job_copy(request: HttpRequest, job_id: int, body: schemas.CopyIn) -> Any:
    """Copy batch job: a new job in Withhold with the tasks, conditions, recurrence and alerts.
    Left out: the source's description, company and scheduled start; Run by (managers only)."""
    job = _job(request, job_id, change=True)
    description = body.description if body.description is not None else job.description
    if not description.strip() or len(description) > 200:
        raise HttpError(400, "description: 1 to 200 characters.")
    company = job.company
    if body.company is not None:
        company = Company.objects.filter(code=body.company).first() if body.company else None
        if body.company and company is None:
            raise HttpError(400, f"company: unknown company {body.company!r}.")
    run_as = None
    if body.run_as:
        if not access.is_manager(request.user):
            raise PermissionDenied("Only a Batch job manager can change Run by.")
        run_as = get_user_model().objects.filter(username=body.run_as, is_active=True).first()
        if run_as is None:
            raise HttpError(400, f"run_as: unknown user {body.run_as!r}.")
    if body.scheduled_start is not None:
        problem = daterange.problem(body.scheduled_start, "scheduled_start")
        if problem:
            raise HttpError(400, problem)
    try:
        new = copying.copy_job(
            job,
            by=_caller(request),
            description=description,
            company=company,
            scheduled_start=body.scheduled_start or job.scheduled_start,
            run_as=run_as,
        )
    except ProcessNotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    return Status(201, {"id": new.pk})


@v1.get("/jobs/{job_id}/wait", response={200: schemas.Waited, **ERRORS}, summary="Wait for a run")
def job_wait(
    request: HttpRequest,
    job_id: int,
    timeout: float = Query(
        10, ge=0, description="Seconds to wait at most (capped by BATCH_API_WAIT_MAX_SECONDS)."
    ),
    after: int | None = Query(
        None, description="A status change id from an earlier answer: wait for an end after it."
    ),
) -> dict[str, Any]:
    """Long poll until the job's run is over, as `batch wait`: answers at once for a job that is
    not waiting or running, else when its run ends (done) or after ``timeout`` (not done).

    The end is read from the job's status changes, so a recurring job that is Waiting again a
    moment after its run ended still answers with that end, when ``after`` says from where.
    """
    job = _job(request, job_id)
    changes = StatusChange.objects.filter(job_id=job.pk)
    seen = after
    if seen is None:
        seen = changes.order_by("-pk").values_list("pk", flat=True).first() or 0
        job.refresh_from_db(fields=["status"])  # read after ``seen``: an end from here is past it
        if job.status not in (*RUNNING_STATUSES, BatchStatus.WAITING):
            return {"id": job.pk, "status": job.status, "done": True, "change": seen}
    ends = changes.filter(pk__gt=seen, new_status__in=transitions.TERMINAL_JOB_STATUSES)
    deadline = time.monotonic() + min(timeout, settings.BATCH_API_WAIT_MAX_SECONDS)
    while True:
        end = ends.order_by("pk").values_list("pk", "new_status").first()
        if end is not None:
            return {"id": job.pk, "status": end[1], "done": True, "change": end[0]}
        if time.monotonic() >= deadline:
            status = BatchJob.objects.values_list("status", flat=True).get(pk=job.pk)
            return {"id": job.pk, "status": status, "done": False, "change": seen}
        time.sleep(WAIT_POLL_SECONDS)


# --- history --------------------------------------------------------------------------------


def _run(job: BatchJob, run_id: int) -> BatchJobRun:
    run = BatchJobRun.objects.filter(job=job, pk=run_id).first()
    if run is None:
        raise Http404(f"Batch job {job.pk} has no run {run_id} (its history may not be kept).")
    return run


@v1.get("/jobs/{job_id}/runs", response={200: schemas.RunPage, **ERRORS}, summary="A job's runs")
def run_list(
    request: HttpRequest,
    job_id: int,
    page: int = Query(1, ge=1),
    page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> dict[str, Any]:
    """Batch job history: the job's runs, newest first."""
    job = _job(request, job_id)
    runs = BatchJobRun.objects.filter(job=job).select_related("run_by", "canceled_by")
    rows, count, pages = _paged(runs.order_by("-started_at", "-pk"), page, page_size)
    results = [
        {
            "id": r.pk,
            "status": r.status,
            "scheduled_start": r.scheduled_start,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "run_by": _username(r.run_by),
            "canceled_by": _username(r.canceled_by),
            "trigger": r.trigger,
            "note": r.note,
            "occurrence": r.occurrence,
        }
        for r in rows
    ]
    return schemas.page_of(results, count=count, page=page, pages=pages)


@v1.get(
    "/jobs/{job_id}/runs/{run_id}/attempts",
    response={200: schemas.AttemptPage, **ERRORS},
    summary="A run's task attempts",
)
def attempt_list(
    request: HttpRequest,
    job_id: int,
    run_id: int,
    page: int = Query(1, ge=1),
    page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> dict[str, Any]:
    """Each attempt of each task in the run, with its error message and traceback."""
    run = _run(_job(request, job_id), run_id)
    attempts = (
        BatchTaskRun.objects.filter(job_run=run)
        .select_related("task", "server")
        .order_by("task__position", "task_id", "attempt")
    )
    rows, count, pages = _paged(attempts, page, page_size)
    results = [
        {
            "id": a.pk,
            "task": a.task.key,
            "attempt": a.attempt,
            "status": a.status,
            "server": a.server.name if a.server else None,
            "hostname": a.hostname,
            "started_at": a.started_at,
            "ended_at": a.ended_at,
            "error": a.error_message,
            "traceback": a.traceback,
        }
        for a in rows
    ]
    return schemas.page_of(results, count=count, page=page, pages=pages)


@v1.get(
    "/jobs/{job_id}/runs/{run_id}/log",
    response={200: schemas.LogPage, **ERRORS},
    summary="A run's log lines",
)
def log_list(
    request: HttpRequest,
    job_id: int,
    run_id: int,
    level: Literal["info", "warning", "error"] = Query(
        "info", description="The lowest level shown."
    ),
    attempt: int | None = Query(None, description="Only this attempt's lines (its id)."),
    page: int = Query(1, ge=1),
    page_size: int = Query(500, ge=1, le=2000),
) -> dict[str, Any]:
    """The Log (D365's Infolog) of the run: task by task, attempt by attempt, in order."""
    run = _run(_job(request, job_id), run_id)
    lines = BatchLogEntry.objects.filter(task_run__job_run=run, level__gte=LEVELS[level])
    if attempt is not None:
        lines = lines.filter(task_run_id=attempt)
    ordered = lines.select_related("task_run__task").order_by(
        "task_run__task__position", "task_run__task_id", "task_run__attempt", "pk"
    )
    paginator = Paginator(ordered, page_size)
    try:
        rows = list(paginator.page(page).object_list)
    except EmptyPage:
        rows = []
    results = [
        {
            "id": line.pk,
            "attempt": line.task_run_id,
            "task": line.task_run.task.key,
            "at": line.created,
            "level": LEVEL_NAMES.get(line.level, "info"),
            "message": line.message,
        }
        for line in rows
    ]
    return schemas.page_of(results, count=paginator.count, page=page, pages=paginator.num_pages)


# --- set-up ---------------------------------------------------------------------------------


@setup.get("/groups", response={200: list[schemas.GroupOut], **ERRORS}, summary="Batch groups")
def group_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Batch groups with their servers and whether an online server serves them now."""
    _require_role(request)
    groups = list(BatchGroup.objects.order_by("code"))
    servers = coverage.servers_with_settings()
    cover = coverage.coverage(groups, servers)
    running = dict(
        BatchTask.objects.running().values_list("group_id").order_by().annotate(n=Count("pk"))
    )
    return [
        {
            "code": g.code,
            "description": g.description,
            "priority": _priority_name(g.default_priority),
            "max_concurrency": g.max_concurrency,
            "reserved_capacity": g.reserved_capacity,
            "max_tasks": g.max_tasks,
            "running_tasks": running.get(g.pk, 0),
            "servers": [s.name for s in servers if g in s.groups.all()],
            "served": cover[g.pk].ok,
            "waiting_tasks": cover[g.pk].waiting_tasks,
        }
        for g in groups
    ]


@setup.get("/servers", response={200: list[schemas.ServerOut], **ERRORS}, summary="Batch servers")
def server_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Batch servers with their groups, schedule and the replicas online now."""
    _require_role(request)
    at = now()
    servers = coverage.servers_with_settings()
    replicas: dict[int, list[BatchServerReplica]] = {}
    for r in BatchServerReplica.objects.online(at).order_by("hostname"):
        replicas.setdefault(r.server_id, []).append(r)
    return [
        {
            "name": s.name,
            "description": s.description,
            "enabled": s.enabled,
            "time_zone": s.time_zone,
            "groups": [g.code for g in s.groups.all()],
            "schedule": [
                {"start_time": r.start_time, "end_time": r.end_time, "max_threads": r.max_threads}
                for r in s.schedule.all()
            ],
            "threads_now": s.max_threads_at(at),
            "replicas_online": [
                {
                    "hostname": r.hostname,
                    "pid": r.pid,
                    "threads": r.concurrency,
                    "busy": r.busy,
                    "started_at": r.started_at,
                    "last_heartbeat": r.last_heartbeat,
                }
                for r in replicas.get(s.pk, [])
            ],
        }
        for s in servers
    ]


@setup.get(
    "/active-periods", response={200: list[schemas.PeriodOut], **ERRORS}, summary="Active periods"
)
def period_list(request: HttpRequest) -> list[dict[str, Any]]:
    """Active periods for batch jobs (Batch job managers, as the page)."""
    _require_manager(request, "manage active periods")
    at = now()
    return [
        {
            "code": p.code,
            "name": p.name,
            "start_time": p.start_time,
            "end_time": p.end_time,
            "time_zone": p.time_zone,
            "open_now": p.is_open(at),
            "described": p.describe(),
        }
        for p in ActivePeriod.objects.order_by("code")
    ]


@setup.get("/calendars", response={200: list[schemas.CalendarOut], **ERRORS}, summary="Calendars")
def calendars(request: HttpRequest) -> list[dict[str, Any]]:
    """Calendars of dates a recurrence skips or moves (docs/calendars.md); any role may read
    them, as the Recurrence dialog offers them to every role that edits a job."""
    _require_role(request)
    return [
        {
            "code": c.code,
            "description": c.description,
            "dates": [d.date for d in c.dates.all()],
        }
        for c in Calendar.objects.prefetch_related("dates").order_by("code")
    ]


@setup.get("/alert-rules", response={200: list[schemas.RuleOut], **ERRORS}, summary="Alert rules")
def rule_list(request: HttpRequest) -> list[dict[str, Any]]:
    """The caller's alert rules (Batch job managers, as the page)."""
    _require_manager(request, "set up alert rules")
    rules = (
        AlertRule.objects.filter(user=_caller(request))
        .select_related("group")
        .prefetch_related("webhooks")
    )
    return [
        {
            "id": r.pk,
            "group": r.group.code if r.group else None,
            "priority": _priority_name(r.priority),
            "ended": r.ended,
            "error": r.error,
            "canceled": r.canceled,
            "stuck": r.stuck,
            "popup": r.popup,
            "email": r.email,
            "webhooks": sorted(h.code for h in r.webhooks.all()),
        }
        for r in rules
    ]


@setup.get("/webhooks", response={200: list[schemas.WebhookOut], **ERRORS}, summary="Webhooks")
def webhook_list(request: HttpRequest) -> list[dict[str, Any]]:
    """The webhooks alerts are posted to (Batch job managers, as the page)."""
    _require_manager(request, "set up webhooks")
    return [
        {
            "code": h.code,
            "description": h.description,
            "url": h.url,
            "format": h.format,
            "enabled": h.enabled,
        }
        for h in Webhook.objects.order_by("code")
    ]


@setup.get(
    "/webhooks/deliveries",
    response={200: schemas.DeliveryPage, **ERRORS},
    summary="The webhook delivery log",
)
def delivery_list(
    request: HttpRequest,
    webhook: str = Query("", description="Only this webhook's (its code)."),
    state: str = Query("", description="pending, sending, sent or failed."),
    page: int = Query(1, ge=1),
    page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> dict[str, Any]:
    """Each alert posted to a webhook, newest first: its state, attempts and last answer."""
    _require_manager(request, "see the webhook delivery log")
    deliveries = WebhookDelivery.objects.select_related("webhook", "event")
    if webhook:
        deliveries = deliveries.filter(webhook__code=webhook)
    if state:
        deliveries = deliveries.filter(state=state)
    rows, count, pages = _paged(deliveries.order_by("-created", "-pk"), page, page_size)
    results = [
        {
            "id": d.pk,
            "webhook": d.webhook.code,
            "job": d.event.job_id,
            "event": d.event.kind,
            "state": d.state,
            "attempts": d.attempts,
            "last_status": d.last_status,
            "last_error": d.last_error,
            "created": d.created,
            "sent_at": d.sent_at,
        }
        for d in rows
    ]
    return schemas.page_of(results, count=count, page=page, pages=pages)


api.add_router("/v1/", v1)
api.add_router("/v1/", setup)
