from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.timezone import get_current_timezone_name, now
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    trigger_client_event,
)

from batchadmin.alerts import forms as alert_forms
from batchadmin.alerts.models import BatchJobAlert
from batchadmin.audit import trail
from batchadmin.engine import transitions
from batchadmin.jobs import access, copying, forms, live, recurrence_forms, task_grid, triggers
from batchadmin.jobs.models import (
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    Company,
)
from batchadmin.lib import numbers
from batchadmin.lib.http import AuthedRequest, close_dialog, render_dialog
from batchadmin.processes.registry import ProcessNotAllowed


def _get_job(request: AuthedRequest, pk: int, *, change: bool = False) -> BatchJob:
    """The job if the user may see it (404 otherwise, so ids of others' jobs do not leak)."""
    # The header shows the recurrence and the active period: one query with the job.
    jobs = access.visible_jobs(request.user).select_related(
        "recurrence__paused_by", "active_period", "django_task"
    )
    job = get_object_or_404(jobs, pk=pk)
    if change and not access.can_change(request.user, job):
        raise Http404("You can't change this batch job.")
    return job


# --- The batch job form: header, task lines, diagram --------------------------------------

# Swap targets of the job page; each is a partial of jobs/job_detail.html named after its id.
DETAIL_TARGETS = ("job-header", "job-alerts", "task-grid", "job-diagram")


# The grid renders this many task lines with the page; the rest load in pages as it scrolls.
TASK_PAGE = 50
# Above this many tasks the diagram is drawn only on request (?diagram=1): its SVG would be
# most of a big job's page, and a thousand boxes are no overview anyway.
DIAGRAM_INLINE_MAX = 200


def _row_urls(job: BatchJob) -> dict[str, str]:
    """What every task line needs: one reversed prefix instead of four reverse() per line."""
    return {"task_base": reverse("jobs:detail", args=[job.pk]) + "tasks/"}


def _job_page(
    request: AuthedRequest, job: BatchJob, *, all_tasks: bool = False, **extra: Any
) -> dict[str, Any]:
    """The job page's context. Only the lines the page shows are loaded and explained: the
    first TASK_PAGE, every line with ?tasks=all or for the diagram, or for a live poll the
    ``lines`` the browser has loaded so far (static/app.js adds that to the poll)."""
    all_tasks = all_tasks or request.GET.get("tasks") == "all"
    want_diagram = request.GET.get("diagram") == "1"
    polled = request.GET.get("lines", "")
    limit: int | None = TASK_PAGE
    if all_tasks or want_diagram:
        limit = None
    elif (lines := numbers.whole(polled)) is not None:
        limit = max(lines, TASK_PAGE)
    # A job small enough to draw its diagram inline needs every task for the drawing.
    grid = task_grid.load(job, limit=limit, all_up_to=DIAGRAM_INLINE_MAX)
    draw = grid.total <= DIAGRAM_INLINE_MAX or want_diagram
    shown = grid.rows if all_tasks else grid.rows[:TASK_PAGE]
    can_change = access.can_change(request.user, job)
    editable = can_change and not job.is_running()
    context: dict[str, Any] = {
        "nav": "jobs",
        "job": job,
        # Live polls swap the status of every line the browser shows, out of band.
        "polled_rows": grid.rows,
        "rows": shown,
        "more": _more(job, grid, 0, len(shown)),
        "task_total": grid.total,
        "draw_diagram": draw,
        "diagram": (
            task_grid.build_diagram(grid.rows, task_grid.trigger_parents(job, grid.rows))
            if draw
            else None
        ),
        "status_counts": grid.counts,
        "job_why": grid.job_why,  # why a Withhold or Waiting job is not running
        "can_change": can_change,
        "editable": editable,
        "header_form": forms.JobForm(instance=job, user=request.user, read_only=not editable),
        "alert": BatchJobAlert.objects.filter(job=job, user=request.user).first(),
        # Lazy: read only when the header is rendered, not on every diagram poll.
        "missed": job.missed_occurrences.all()[:5],
        # Jobs that follow jobs: what triggers this one and what it triggers (links).
        "followers": job.followers.order_by("pk").only("pk", "description", "after_status"),
        "editing": None,
        "editor": None,
        **_row_urls(job),
    }
    context.update(extra)
    if "version" not in context:
        context["version"] = live.job_version(job)
    return context


def _more(job: BatchJob, grid: task_grid.Grid, offset: int, shown: int) -> dict[str, Any] | None:
    """The "Load more" line after the ``shown`` lines from ``offset``, or None after the last."""
    end = offset + shown
    if end >= grid.total:
        return None
    next_pk = grid.rows[shown].task.pk if len(grid.rows) > shown else grid.next_pk
    base = reverse("jobs:task-page", args=[job.pk])
    return {"url": f"{base}?offset={end}", "left": grid.total - end, "next_pk": next_pk}


@require_http_methods(["GET", "POST"])
def job_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    """D365's enhanced batch job form: the header, the task lines and their diagram.

    POST saves the header. An htmx GET returns the partial its target names, so the page's
    sections refresh themselves on the events other actions send (job-changed, alerts-changed).
    """
    if request.method == "POST":
        return _save_header(request, pk)
    job = _get_job(request, pk)
    target = request.htmx.target if request.htmx else None
    if target == "job-diagram":
        return _diagram(request, job)
    template = "jobs/job_detail.html"
    if target in DETAIL_TARGETS:
        template += f"#{target}"
    return render(request, template, _job_page(request, job))


def _save_header(request: AuthedRequest, pk: int) -> HttpResponse:
    job = _get_job(request, pk, change=True)
    form = forms.JobForm(request.POST, instance=job, user=request.user)
    error = ""
    if form.is_valid():
        try:
            form.save_header(by=request.user)
        except (transitions.ChangeRefused, triggers.TriggerError) as exc:
            error = str(exc)
        else:
            if not request.htmx:
                messages.success(request, "Saved the job header.")
                return redirect("jobs:detail", job.pk)
            job.refresh_from_db()
            form = forms.JobForm(instance=job, user=request.user)
    context = _job_page(request, job, header_form=form, header_error=error, header_saved=not error)
    template = "jobs/job_detail.html"
    if request.htmx:
        template += "#job-header"
    return render(request, template, context)


def _diagram(request: AuthedRequest, job: BatchJob) -> HttpResponse:
    """The diagram; polled every 2 s while the job is live, with the status badges as OOB swaps.

    A poll says which state the page shows (editable=0/1). When that no longer holds (the job
    started or ended), the response also sends job-changed once it has settled, so the other
    sections re-render for the new state; the new diagram polls with the new state, so this
    happens once.
    """
    version = live.job_version(job)
    polled = bool(request.GET.get("poll"))
    if polled and not job.is_running() and live.unchanged(request, version):
        # Nothing moved since the page was drawn; a running job's task lines move without
        # a version change, so those polls always re-render.
        return live.no_change()
    context = _job_page(request, job, version=version)
    if not polled:
        return render(request, "jobs/job_detail.html#job-diagram", context)
    html = render_to_string(
        "jobs/job_detail.html#job-diagram", context | {"oob": True}, request=request
    )
    response = HttpResponse(html)
    # Started, ended, rescheduled or edited elsewhere since the page was drawn.
    moved = "v" in request.GET and not live.same_state(request.GET["v"], version)
    if moved or (request.GET.get("editable") == "1") != context["editable"]:
        trigger_client_event(response, "job-changed", after="settle")
    return response


@require_http_methods(["GET", "POST"])
def job_create(request: AuthedRequest) -> HttpResponse:
    """New batch job: the header first; the job starts in Withhold so tasks can be added."""
    if not access.can_create(request.user):
        raise PermissionDenied("You can't create batch jobs.")
    companies = list(Company.objects.all()[:2])
    # D365 fills in the company the user works in; with one company there is nothing to pick.
    initial = {"company": companies[0].pk} if len(companies) == 1 else {}
    form = forms.JobForm(
        request.POST or None,
        instance=BatchJob(created_by=request.user),
        initial=initial,
        user=request.user,
    )
    form.fields["description"].widget.attrs["autofocus"] = True
    if request.method == "POST" and form.is_valid():
        job = form.save(commit=False)
        job.created_by = request.user
        job.status = BatchStatus.WITHHOLD  # docs/architecture.md: jobs made in the form start held
        with transaction.atomic():
            job.save()
            trail.record_edit(
                trail.Action.JOB_CREATE,
                before={},
                after=trail.snapshot(job, [*forms.HEADER_FIELDS, "after_job", "after_status"]),
                user=request.user,
                job=job,
                target="job",
            )
        messages.success(
            request,
            f"Created batch job {job.pk} in Withhold. Add its tasks, then set it to Waiting "
            "with Change status.",
        )
        return redirect("jobs:detail", job.pk)
    return render(request, "jobs/job_create.html", {"nav": "jobs", "form": form})


# --- Task lines ---------------------------------------------------------------------------


def _task(job: BatchJob, task_pk: int) -> BatchTask:
    return get_object_or_404(BatchTask, job=job, pk=task_pk)


@require_http_methods(["GET", "POST"])
def task_new(request: AuthedRequest, pk: int) -> HttpResponse:
    """A new task line in edit mode (Add task, Alt+N); ?cancel=1 puts the empty slot back (Esc)."""
    job = _get_job(request, pk, change=True)
    if request.method == "GET" and request.GET.get("cancel"):
        if not request.htmx:
            return redirect("jobs:detail", job.pk)
        return render(request, "jobs/job_detail.html#task-new", {"job": job})
    return _task_editor(request, job, None)


@require_http_methods(["GET", "POST"])
def task_edit(request: AuthedRequest, pk: int, task_pk: int) -> HttpResponse:
    job = _get_job(request, pk, change=True)
    return _task_editor(request, job, _task(job, task_pk))


def _task_editor(request: AuthedRequest, job: BatchJob, task: BatchTask | None) -> HttpResponse:
    if request.method == "GET":
        editor = forms.task_editor(job, task, user=request.user)
        if job.is_running():
            editor.error = (
                f"The job is {job.get_status_display()}: its tasks can't be changed until it ends."
            )
    else:
        add = "add-condition" in request.POST
        editor = forms.task_editor(
            job, task, user=request.user, data=request.POST, add_condition=add
        )
        if not add and editor.is_valid():
            try:
                saved = editor.save(by=request.user)
            except transitions.ChangeRefused as exc:
                editor.error = str(exc)
            else:
                return _task_saved(request, job, saved, created=task is None)
    if not request.htmx:
        context = _job_page(request, job, all_tasks=True, editing=editor.task_ref, editor=editor)
        return render(request, "jobs/job_detail.html", context)
    return render(request, "jobs/job_detail.html#task-form", {"job": job, "editor": editor})


def _task_saved(
    request: AuthedRequest, job: BatchJob, task: BatchTask, *, created: bool
) -> HttpResponse:
    if not request.htmx:
        messages.success(request, f"Saved task {task.key}.")
        return redirect(reverse("jobs:detail", args=[job.pk]) + f"#task-{task.pk}")
    context = {"job": job, "row": task_grid.row(job, task.pk), "editable": True, **_row_urls(job)}
    html = render_to_string("jobs/job_detail.html#task-row", context, request=request)
    if created:
        # The line replaces the new-task slot; a fresh slot follows it for the next Alt+N.
        html += render_to_string("jobs/job_detail.html#task-new", context, request=request)
    response = HttpResponse(html)
    trigger_client_event(response, "tasks-changed")
    return response


@require_GET
def task_row(request: AuthedRequest, pk: int, task_pk: int) -> HttpResponse:
    """One task line, read-only: what Esc puts back in place of its editor."""
    job = _get_job(request, pk)
    if not request.htmx:
        return redirect(reverse("jobs:detail", args=[job.pk]) + f"#task-{task_pk}")
    context = {
        "job": job,
        "row": task_grid.row(job, task_pk),
        "editable": access.can_change(request.user, job) and not job.is_running(),
        **_row_urls(job),
    }
    return render(request, "jobs/job_detail.html#task-row", context)


@require_GET
def task_page(request: AuthedRequest, pk: int) -> HttpResponse:
    """The next TASK_PAGE task lines from ?offset=, followed by the next "Load more" line."""
    job = _get_job(request, pk)
    start = numbers.whole(request.GET.get("offset", ""))
    if start is None:
        return HttpResponse("offset must be a whole number of lines.", status=400)
    if not request.htmx:
        # Without htmx the link shows the whole grid, on the line where the page stopped.
        return redirect(reverse("jobs:detail", args=[job.pk]) + "?tasks=all")
    grid = task_grid.load(job, offset=start, limit=TASK_PAGE)
    context = {
        "job": job,
        "rows": grid.rows,
        "more": _more(job, grid, start, len(grid.rows)),
        "editable": access.can_change(request.user, job) and not job.is_running(),
        **_row_urls(job),
    }
    return render(request, "jobs/job_detail.html#task-page", context)


@require_GET
def task_parameters(request: AuthedRequest, pk: int) -> HttpResponse:
    """The parameter fields of the process chosen in a task line (swapped in on change)."""
    job = _get_job(request, pk, change=True)
    ref = numbers.whole(request.GET.get("task", forms.NEW))
    task = _task(job, ref) if ref is not None else None
    editor = forms.task_editor(job, task, user=request.user, process=request.GET.get("process", ""))
    if not request.htmx:
        context = _job_page(request, job, all_tasks=True, editing=editor.task_ref, editor=editor)
        return render(request, "jobs/job_detail.html", context)
    return render(request, "jobs/job_detail.html#task-parameters", {"editor": editor})


@require_POST
def task_delete(request: AuthedRequest, pk: int, task_pk: int) -> HttpResponse:
    """Delete a task line and its conditions, including the conditions other tasks had on it."""
    job = _get_job(request, pk, change=True)
    task = _task(job, task_pk)
    try:
        with transaction.atomic():
            transitions.lock_editable_job(job.pk)
            dependents = list(task.dependents.values_list("task_id", flat=True))
            before = trail.task_snapshot(task, forms.TASK_FIELDS)
            task.delete()
            trail.record(
                trail.Action.TASK_DELETE,
                user=request.user,
                job=job,
                target=f"task {task.key}",
                changes=trail.changed(before, {}),
            )
    except transitions.ChangeRefused as exc:
        if not request.htmx:
            messages.error(request, str(exc))
            return redirect("jobs:detail", job.pk)
        context = {
            "job": job,
            "row": task_grid.row(job, task_pk),
            "row_error": str(exc),
            **_row_urls(job),
        }
        return render(request, "jobs/job_detail.html#task-row", context)
    if not request.htmx:
        messages.success(request, f"Deleted task {task.key}.")
        return redirect("jobs:detail", job.pk)
    # The line goes; the lines that had a condition on it lose that condition (out of band).
    # Most deleted tasks have none: no grid to load then.
    changed = task_grid.load(job, pks=dependents).rows if dependents else []
    html = "".join(
        render_to_string(
            "jobs/job_detail.html#task-row",
            {"job": job, "row": row, "editable": True, "oob": True, **_row_urls(job)},
            request=request,
        )
        for row in changed
    )
    response = HttpResponse(html)
    trigger_client_event(response, "tasks-changed")
    return response


# --- Dialogs: Change status, Alerts, Copy batch job ---------------------------------------


@require_http_methods(["GET", "POST"])
def change_status(request: AuthedRequest, pk: int) -> HttpResponse:
    """Functions > Change status: only the moves transitions.USER_MOVES offers from here."""
    job = _get_job(request, pk, change=True)
    empty = not job.tasks.exists()
    form = forms.ChangeStatusForm(request.POST or None, job=job, empty=empty)
    if request.method == "POST" and form.is_valid():
        to = form.cleaned_data["status"]
        try:
            moved = transitions.change_status(job_id=job.pk, to=to, by_id=request.user.pk)
        except transitions.IllegalMove as exc:
            form.add_error("status", str(exc))
        else:
            if moved:
                if not request.htmx:
                    job.refresh_from_db()
                    messages.success(request, f"The job is now {job.get_status_display()}.")
                return close_dialog(request, "job-changed", "jobs:detail", job.pk)
            form.add_error(None, "The job changed status meanwhile. Look again and choose.")
        job.refresh_from_db()
    return render_dialog(
        request, "jobs/job_change_status.html", _change_status_context(job, form), nav="jobs"
    )


def _change_status_context(job: BatchJob, form: forms.ChangeStatusForm) -> dict[str, Any]:
    moves = transitions.USER_MOVES.get(BatchStatus(job.status), ())
    tasks = list(job.tasks.order_by("position", "pk").only("key", "description", "status"))
    return {
        "job": job,
        "form": form,
        "moves": [m.value for m in moves],
        "stopping": [t for t in tasks if t.status == BatchStatus.EXECUTING],
        "already_stopping": [t for t in tasks if t.status == BatchStatus.CANCELING],
        "not_run": [t for t in tasks if t.status in (BatchStatus.WAITING, BatchStatus.READY)],
        "start_passed": job.scheduled_start <= now(),
        "rerun": job.status in transitions.TERMINAL_JOB_STATUSES,
        "empty": not tasks,
    }


@require_http_methods(["GET", "POST"])
def job_alerts(request: AuthedRequest, pk: int) -> HttpResponse:
    """Alerts: which ends of this job the signed-in user hears about, by popup and/or e-mail."""
    job = _get_job(request, pk, change=True)
    alert = BatchJobAlert.objects.filter(job=job, user=request.user).first()
    before = alert.describe() if alert else ""  # read first: the form writes onto the row
    form = alert_forms.AlertForm(
        request.POST or None,
        instance=alert or BatchJobAlert(job=job, user=request.user),
        user=request.user,
    )
    # The job's webhooks (its own, not the user's): saved with the same button.
    hooks = alert_forms.JobWebhooksForm(request.POST or None, job=job)
    if request.method == "POST" and form.is_valid() and hooks.is_valid():
        with transaction.atomic():
            form.save_or_delete()
            hooks.save()
            trail.record_edit(
                trail.Action.ALERTS_EDIT,
                before={"Alerts": before},
                after={"Alerts": form.instance.describe()},
                user=request.user,
                job=job,
                target=f"alerts of {request.user.get_username()}",
            )
        if not request.htmx:
            messages.success(request, "Saved your alerts for this job.")
        return close_dialog(request, "alerts-changed", "jobs:detail", job.pk)
    context = {"job": job, "form": form, "hooks": hooks}
    return render_dialog(request, "jobs/job_alerts.html", context, nav="jobs")


@require_http_methods(["GET", "POST"])
def job_copy(request: AuthedRequest, pk: int) -> HttpResponse:
    """Copy batch job: a new job in Withhold with the tasks, conditions, recurrence and alerts."""
    job = _get_job(request, pk, change=True)
    form = forms.CopyJobForm(request.POST or None, user=request.user, source=job)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            with transaction.atomic():
                new = copying.copy_job(
                    job,
                    by=request.user,
                    description=data["description"],
                    company=data["company"],
                    scheduled_start=data["scheduled_start"],
                    run_as=data["run_as"],
                )
                trail.record(
                    trail.Action.JOB_COPY,
                    user=request.user,
                    job=new,
                    target=f"copy of job {job.pk}",
                    changes=trail.changed({}, trail.snapshot(new, forms.HEADER_FIELDS)),
                )
        except ProcessNotAllowed as exc:
            form.add_error(None, str(exc))
            return render_dialog(
                request,
                "jobs/job_copy.html",
                {"job": job, "form": form, "task_count": job.tasks.count()},
                nav="jobs",
            )
        messages.success(
            request,
            f"Copied job {job.pk} to job {new.pk}, which is in Withhold: set it to Waiting "
            "with Change status to run it.",
        )
        url = reverse("jobs:detail", args=[new.pk])
        if request.htmx:
            return HttpResponseClientRedirect(url)
        return redirect(url)
    return render_dialog(
        request,
        "jobs/job_copy.html",
        {"job": job, "form": form, "task_count": job.tasks.count()},
        nav="jobs",
    )


# --- Recurrence ---------------------------------------------------------------------------


def _get_job_to_change(request: AuthedRequest, pk: int) -> BatchJob:
    """404 for a job the user can't see; 403 for one they see but may not change."""
    job = _get_job(request, pk)
    if not access.can_change(request.user, job):
        raise PermissionDenied("You can see this batch job but not change it.")
    return job


def _recurrence_dialog(job: BatchJob, data: Any = None) -> dict[str, Any]:
    """The dialog's form and the saved recurrence in words.

    The words are read first: validating the form writes the posted values onto the saved row.
    """
    saved = job.get_recurrence()
    current = saved.describe() if saved else ""
    # The viewer's zone (TimezoneMiddleware): a new recurrence's default and the preview's
    # second column.
    form = recurrence_forms.RecurrenceForm(data, job=job, viewer_zone=get_current_timezone_name())
    return {"job": job, "form": form, "current": current}


def _with_preview(context: dict[str, Any]) -> dict[str, Any]:
    """The next runs, each with when the job's active period lets it start if it holds it."""
    form: recurrence_forms.RecurrenceForm = context["form"]
    job: BatchJob = context["job"]
    runs = form.next_runs() if form.is_bound else []
    period = job.active_period if runs else None
    held = [
        period.next_opening(run.viewer).astimezone(run.viewer.tzinfo)
        if period is not None and not run.skipped and not period.is_open(run.viewer)
        else None
        for run in runs
    ]
    return context | {
        "runs": list(zip(runs, held, strict=True)),
        "run_count": sum(1 for run in runs if run.number is not None),
        "calendar_rows": any(run.skipped or run.moved_from for run in runs),
        "held": any(held),
        "words": form.describe() if form.is_bound else "",
        "preview_size": recurrence_forms.PREVIEW_RUNS,
    }


@require_http_methods(["GET", "POST"])
def job_recurrence(request: AuthedRequest, pk: int) -> HttpResponse:
    """Define recurrence. Saving reschedules the job to the first occurrence from now on; a
    running job keeps its run and takes the change when the run ends (docs/architecture.md, section 5)."""
    job = _get_job_to_change(request, pk)
    context = _recurrence_dialog(job, request.POST or None)
    form: recurrence_forms.RecurrenceForm = context["form"]
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            trail.record_edit(
                trail.Action.RECURRENCE_EDIT,
                before={"Recurrence": context["current"]},
                after={"Recurrence": form.describe()},
                user=request.user,
                job=job,
                target="recurrence",
            )
        if not request.htmx:
            messages.success(request, f"Saved the recurrence: {form.describe()}.")
        return close_dialog(request, "job-changed", "jobs:detail", job.pk)
    return render_dialog(request, "jobs/job_recurrence.html", _with_preview(context), nav="jobs")


@require_POST
def recurrence_preview(request: AuthedRequest, pk: int) -> HttpResponse:
    """The next runs of what the dialog holds, without saving it.

    For htmx only the preview is swapped, with each field's errors out of band, so the input
    the user is in stays as it is.
    """
    job = _get_job_to_change(request, pk)
    context = _with_preview(_recurrence_dialog(job, request.POST))
    if request.htmx:
        return render(
            request, "jobs/job_recurrence.html#recurrence-preview", context | {"oob": True}
        )
    return render(request, "jobs/job_recurrence.html", {"nav": "jobs"} | context)


@require_POST
def recurrence_remove(request: AuthedRequest, pk: int) -> HttpResponse:
    """Remove recurrence: the job keeps its scheduled start and runs once more."""
    job = _get_job_to_change(request, pk)
    with transaction.atomic():
        words = job.recurrence_words
        removed, _ = BatchRecurrence.objects.filter(job=job).delete()
        if removed:
            trail.record(
                trail.Action.RECURRENCE_REMOVE,
                user=request.user,
                job=job,
                target="recurrence",
                changes={"Recurrence": [words, None]},
            )
    if not request.htmx:
        if removed:
            messages.success(request, "Removed the recurrence: the job runs once.")
        else:
            messages.info(request, "The job had no recurrence.")
    return close_dialog(request, "job-changed", "jobs:detail", job.pk)
