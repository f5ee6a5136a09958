"""Operator actions on a job's runs: Skip, Rerun from here, Run now with parameter overrides
(docs/operator-actions.md); and pausing or resuming its recurrence.

Each is a dialog loaded into #dialog by GET; its POST acts through the engine's transition
(which writes the audit entry), closes the dialog and sends job-changed, so the job page and
the history refresh what changed. Every view checks the role on the server: a job the user
can't see answers 404, one they see but may not change answers 403.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.timezone import now
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from batchadmin.engine import transitions
from batchadmin.jobs import access
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.lib.http import AuthedRequest, render_dialog
from batchadmin.processes import registry

S = BatchStatus
# The Run now dialog offers parameter fields for at most this many tasks; a bigger job's
# overrides go through `manage.py batch run JOB_ID --param KEY.NAME=VALUE`.
OVERRIDE_TASKS_SHOWN = 50


def _job_to_operate(request: AuthedRequest, pk: int) -> BatchJob:
    """404 for a job the user can't see; 403 for one they see but may not change."""
    job = get_object_or_404(access.visible_jobs(request.user).select_related("recurrence"), pk=pk)
    if not access.can_change(request.user, job):
        raise PermissionDenied("You can see this batch job but not act on it.")
    return job


def _done(request: AuthedRequest, job: BatchJob, notice: str) -> HttpResponse:
    """Close the dialog and let the pages refresh; without htmx, back where the user was."""
    if not request.htmx:
        messages.success(request, notice)
        if request.POST.get("back") == "history":
            return redirect("jobs:history", pk=job.pk)
        return redirect("jobs:detail", job.pk)
    response = HttpResponse()
    for event in ("dialog-close", "job-changed", "history-changed"):
        trigger_client_event(response, event)
    return response


def _back(request: AuthedRequest) -> str:
    return "history" if request.GET.get("back", request.POST.get("back")) == "history" else ""


# --- Skip ----------------------------------------------------------------------------------


class SkipForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "autofocus": True}),
        help_text="Why it is skipped: the audit trail and the run's history keep it.",
    )


@require_http_methods(["GET", "POST"])
def task_skip(request: AuthedRequest, pk: int, task_pk: int) -> HttpResponse:
    """Skip a task with a reason (transitions.skip_task); the dialog says what it will do."""
    job = _job_to_operate(request, pk)
    task = get_object_or_404(BatchTask, job=job, pk=task_pk)
    form = SkipForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            done = transitions.skip_task(
                task_id=task.pk, reason=form.cleaned_data["reason"], by_id=request.user.pk
            )
        except transitions.Refused as exc:
            form.add_error(None, str(exc))
        else:
            if done:
                return _done(request, job, f"Skipped task {task.key}.")
            form.add_error(None, "The task or the job changed meanwhile. Look again.")
        job.refresh_from_db()
        task.refresh_from_db()
    effect, refusal = "", ""
    try:
        effect = transitions.skip_effect(job, task)
    except transitions.Refused as exc:
        refusal = str(exc)
    context = {
        "job": job,
        "task": task,
        "form": form,
        "effect": effect,
        "refusal": refusal,
        "back": _back(request),
        "released": _waiting_on(job, task) if effect != transitions.SKIP_NEXT_RUN else [],
    }
    return render_dialog(request, "jobs/task_skip.html", context, nav="jobs")


def _waiting_on(job: BatchJob, task: BatchTask) -> list[BatchTask]:
    """The tasks downstream of ``task``, to say what may run once it is skipped."""
    down = transitions.downstream_of(job.pk, [task.pk])
    return list(BatchTask.objects.filter(pk__in=down).order_by("position", "pk")[:12])


# --- Rerun from here -----------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def task_rerun_from(request: AuthedRequest, pk: int, task_pk: int) -> HttpResponse:
    """Rerun from a task: it and everything downstream of it run again now."""
    job = _job_to_operate(request, pk)
    task = get_object_or_404(BatchTask, job=job, pk=task_pk)
    error = ""
    if request.method == "POST":
        try:
            done = transitions.rerun_job(job_id=job.pk, by_id=request.user.pk, from_task_id=task.pk)
        except transitions.Refused as exc:
            error = str(exc)
        else:
            if done:
                return _done(request, job, f"Job {job.pk} runs again from task {task.key}.")
            error = "The job changed meanwhile. Look again."
        job.refresh_from_db()
    again = transitions.downstream_of(job.pk, [task.pk])
    tasks = list(
        BatchTask.objects.filter(job=job)
        .order_by("position", "pk")
        .only("key", "description", "status")
    )
    context = {
        "job": job,
        "task": task,
        "error": error,
        "back": _back(request),
        "again": [t for t in tasks if t.pk in again],
        "kept": [t for t in tasks if t.pk not in again and t.pk != task.pk],
        "running": job.is_running(),
    }
    return render_dialog(request, "jobs/task_rerun_from.html", context, nav="jobs")


# --- Run now -------------------------------------------------------------------------------


@dataclass
class TaskOverrides:
    """One task's parameter form in the Run now dialog, filled with its stored parameters."""

    task: BatchTask
    process: registry.BatchProcess
    form: forms.Form

    def overrides(self) -> dict[str, Any]:
        """The fields changed from the stored parameters, as typed (the transition cleans)."""
        return {name: self.form[name].data for name in self.form.changed_data}


def _override_forms(job: BatchJob, data: Any, user: Any) -> tuple[list[TaskOverrides], int]:
    """The parameter forms of the job's tasks that have parameters and whose process ``user``
    may run (OVERRIDE_TASKS_SHOWN at most), and how many tasks with parameters were left out."""
    shown: list[TaskOverrides] = []
    left_out = 0
    for task in job.tasks.order_by("position", "pk"):
        try:
            process = registry.get(task.process)
        except registry.UnknownProcess:
            continue
        if not process.form_class.base_fields or not access.may_run(user, process):
            continue
        if len(shown) >= OVERRIDE_TASKS_SHOWN:
            left_out += 1
            continue
        form = process.form_class(
            data=data, initial=task.parameters or {}, prefix=f"t{task.pk}", auto_id="run-%s"
        )
        shown.append(TaskOverrides(task, process, form))
    return shown, left_out


@require_http_methods(["GET", "POST"])
def job_run_now(request: AuthedRequest, pk: int) -> HttpResponse:
    """Run now, optionally with parameter overrides for this run only."""
    job = _job_to_operate(request, pk)
    data = request.POST if request.method == "POST" else None
    tasks, left_out = _override_forms(job, data, request.user)
    error = ""
    if request.method == "POST" and all(t.form.is_valid() for t in tasks):
        overrides = {t.task.key: t.overrides() for t in tasks if t.form.changed_data}
        try:
            done = transitions.run_job_now(
                job_id=job.pk, by_id=request.user.pk, overrides=overrides
            )
        except transitions.Refused as exc:
            error = str(exc)
        else:
            if done:
                what = " with parameter overrides" if overrides else ""
                return _done(request, job, f"Job {job.pk} is running now{what}.")
            error = "The job changed meanwhile. Look again."
        job.refresh_from_db()
    context = {
        "job": job,
        "tasks": tasks,
        "left_out": left_out,
        "error": error,
        "task_count": job.tasks.count(),
        "recurring": job.get_recurrence() is not None,
        "running": job.is_running(),
        "finished": job.status in transitions.TERMINAL_JOB_STATUSES,
    }
    return render_dialog(request, "jobs/job_run_now.html", context, nav="jobs")


# --- Pause and resume a recurrence -----------------------------------------------------------


class PauseForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=transitions.PAUSE_REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "autofocus": True}),
        help_text="Why: shown with the job on the list and its page, and kept in the audit trail.",
    )
    until = forms.CharField(
        label="Resume by itself at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="In the recurrence's zone. Empty: until someone resumes it.",
    )

    def __init__(self, *args: Any, recurring: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recurring = recurring
        self.fields[
            "until"
        ].help_text = (
            f"In the recurrence's zone ({recurring.time_zone}). Empty: until someone resumes it."
        )

    def clean_until(self) -> Any:
        text = (self.cleaned_data.get("until") or "").strip()
        if not text:
            return None
        try:
            return self.recurring.aware(dt.datetime.fromisoformat(text))
        except ValueError:
            raise forms.ValidationError(
                "Write a date and time as YYYY-MM-DD HH:MM, or leave it empty."
            ) from None


@require_http_methods(["GET", "POST"])
def job_pause(request: AuthedRequest, pk: int) -> HttpResponse:
    """Pause the job's recurrence with a note (transitions.pause_recurrence)."""
    job = _job_to_operate(request, pk)
    recurring = job.get_recurrence()
    if recurring is None:
        raise Http404("This batch job has no recurrence to pause.")
    form = PauseForm(request.POST or None, recurring=recurring)
    if request.method == "POST" and form.is_valid():
        try:
            done = transitions.pause_recurrence(
                job_id=job.pk,
                by_id=request.user.pk,
                reason=form.cleaned_data["reason"],
                until=form.cleaned_data["until"],
            )
        except transitions.Refused as exc:
            form.add_error(None, str(exc))
        else:
            if done:
                return _done(request, job, f"Paused the recurrence of job {job.pk}.")
            form.add_error(None, "The job changed meanwhile. Look again.")
    context = {"job": job, "form": form, "recurring": recurring}
    return render_dialog(request, "jobs/job_pause.html", context, nav="jobs")


@require_POST
def job_resume(request: AuthedRequest, pk: int) -> HttpResponse:
    """Resume the paused recurrence (transitions.resume_recurrence)."""
    job = _job_to_operate(request, pk)
    try:
        transitions.resume_recurrence(job_id=job.pk, by_id=request.user.pk)
    except transitions.Refused as exc:
        if not request.htmx:
            messages.error(request, str(exc))
            return redirect("jobs:detail", job.pk)
        return HttpResponse(str(exc), status=409)
    return _done(request, job, f"Resumed the recurrence of job {job.pk}.")


# --- Backfill ------------------------------------------------------------------------------


class BackfillForm(forms.Form):
    first_day = forms.DateField(
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The first day, included, in the recurrence's zone.",
    )
    last_day = forms.DateField(
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The last day, included; only occurrences that have passed count.",
    )
    only_last = forms.BooleanField(
        label="Only the last missed occurrence",
        required=False,
        help_text="One run, not one per day.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        first, last = cleaned.get("first_day"), cleaned.get("last_day")
        if first and last and last < first:
            self.add_error("last_day", f"The range ends ({last}) before it starts ({first}).")
        return cleaned


@require_http_methods(["GET", "POST"])
def job_backfill(request: AuthedRequest, pk: int) -> HttpResponse:
    """Backfill (managers): run a recurring job once per occurrence missed in a date range, or
    only the last, one after the other. The dialog previews the occurrences (how many runs it
    starts) before the manager starts it; "Preview" posts without starting anything."""
    job = _job_to_operate(request, pk)
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can backfill a job.")
    recurring = job.get_recurrence()
    if recurring is None:
        raise PermissionDenied(f"Job {job.pk} has no recurrence: there is nothing to backfill.")
    tz = recurring.rule().tz
    today = now().astimezone(tz).date()
    form = BackfillForm(
        request.POST or None,
        initial={"first_day": today - dt.timedelta(days=7), "last_day": today},
    )
    preview: list[dt.datetime] | None = None
    if request.method == "POST" and form.is_valid():
        dry_run = "preview" in request.POST
        try:
            times = transitions.backfill_job(
                job_id=job.pk,
                first_day=form.cleaned_data["first_day"],
                last_day=form.cleaned_data["last_day"],
                only_last=form.cleaned_data["only_last"],
                dry_run=dry_run,
                by_id=request.user.pk,
            )
        except transitions.Refused as exc:
            form.add_error(None, str(exc))
        else:
            if not dry_run and times:
                return _done(
                    request, job, f"Backfill started: {len(times)} run(s), one after the other."
                )
            preview = [t.astimezone(tz) for t in times]
    context = {"job": job, "form": form, "preview": preview}
    return render_dialog(request, "jobs/job_backfill.html", context, nav="jobs")
