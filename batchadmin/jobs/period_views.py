"""Active periods for batch jobs (D365 System administration > Setup > Active periods for
batch jobs): the time-of-day windows a job header can pick. Batch job managers only.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, ProtectedError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_http_methods

from batchadmin.audit import trail
from batchadmin.jobs import access
from batchadmin.jobs.models import ActivePeriod
from batchadmin.jobs.recurrence_forms import ActivePeriodForm
from batchadmin.lib.http import AuthedRequest, close_dialog, render_dialog

# What the audit trail compares of an active period (the form's fields).
PERIOD_AUDIT_FIELDS = ["code", "name", "start_time", "end_time", "time_zone"]


def _require_manager(request: AuthedRequest) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can manage active periods.")


@require_GET
def period_list(request: AuthedRequest) -> HttpResponse:
    _require_manager(request)
    at = now()
    periods = ActivePeriod.objects.annotate(job_count=Count("jobs")).order_by("code")
    context = {"nav": "periods", "rows": [(p, p.is_open(at)) for p in periods]}
    template = "jobs/active_period_list.html"
    if request.htmx and request.htmx.target == "period-table":
        template += "#period-table"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
def period_create(request: AuthedRequest) -> HttpResponse:
    return _period_form(request, None)


@require_http_methods(["GET", "POST"])
def period_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    return _period_form(request, get_object_or_404(ActivePeriod, pk=pk))


def _period_form(request: AuthedRequest, period: ActivePeriod | None) -> HttpResponse:
    _require_manager(request)
    before = trail.snapshot(period, PERIOD_AUDIT_FIELDS) if period else {}
    form = ActivePeriodForm(request.POST or None, instance=period)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            saved = form.save()
            trail.record_edit(
                trail.Action.PERIOD_EDIT if period else trail.Action.PERIOD_ADD,
                before=before,
                after=trail.snapshot(saved, PERIOD_AUDIT_FIELDS),
                user=request.user,
                target=f"active period {saved.code}",
            )
        verb = "Saved" if period else "Created"
        messages.success(request, f"{verb} active period {saved.code}: {saved.describe()}.")
        return close_dialog(request, "periods-changed", "periods:list")
    jobs = period.jobs.count() if period else 0
    return render_dialog(
        request,
        "jobs/active_period_form.html",
        {"form": form, "period": period, "jobs": jobs},
        nav="periods",
    )


@require_http_methods(["GET", "POST"])
def period_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    """Delete an active period no job uses; one in use is refused with the count of its jobs."""
    _require_manager(request)
    period = get_object_or_404(ActivePeriod, pk=pk)
    used = period.jobs.count()
    if request.method == "POST" and not used:
        code = period.code
        before = trail.snapshot(period, PERIOD_AUDIT_FIELDS)
        try:
            with transaction.atomic():
                period.delete()
                trail.record(
                    trail.Action.PERIOD_DELETE,
                    user=request.user,
                    target=f"active period {code}",
                    changes=trail.changed(before, {}),
                )
        except ProtectedError:
            # A job header picked it between the count and the delete (the FK protects it).
            used = period.jobs.count()
        else:
            messages.success(request, f"Deleted active period {code}.")
            return close_dialog(request, "periods-changed", "periods:list")
    problem = ""
    if used:
        problem = (
            f"Active period {period.code} is used by {used} batch job{'s' if used != 1 else ''}. "
            "Choose another active period (or Any time) in their headers first."
        )
    if request.method == "POST" and not request.htmx:
        messages.error(request, problem)
        return redirect("periods:list")
    return render_dialog(
        request,
        "jobs/active_period_delete.html",
        {"period": period, "problem": problem, "used": used},
        nav="periods",
    )
