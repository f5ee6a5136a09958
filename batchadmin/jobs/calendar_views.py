"""Calendars (beyond D365): named sets of dates, such as holidays, that a recurrence skips or
moves to the next working day (docs/calendars.md). Batch job managers only, as active periods.

A change of dates applies at once to the jobs that use the calendar: a waiting job whose next
start is still ahead is rescheduled to its first occurrence under the new dates.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Min, ProtectedError, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.timezone import localdate
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from batchadmin.jobs import access
from batchadmin.jobs.calendar_forms import (
    CalendarDateForm,
    CalendarForm,
    IcsImportForm,
    reschedule_users,
)
from batchadmin.jobs.models import BatchRecurrence, Calendar, CalendarDate
from batchadmin.lib.http import AuthedRequest, close_dialog, render_dialog


def _require_manager(request: AuthedRequest) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can manage calendars.")


@require_GET
def calendar_list(request: AuthedRequest) -> HttpResponse:
    _require_manager(request)
    today = localdate()
    calendars = Calendar.objects.annotate(
        date_count=Count("dates", distinct=True),
        next_date=Min("dates__date", filter=Q(dates__date__gte=today)),
        recurrence_count=Count("recurrences", distinct=True),
    ).order_by("code")
    template = "jobs/calendar_list.html"
    if request.htmx and request.htmx.target == "calendar-table":
        template += "#calendar-table"
    return render(request, template, {"nav": "calendars", "calendars": calendars})


@require_http_methods(["GET", "POST"])
def calendar_create(request: AuthedRequest) -> HttpResponse:
    _require_manager(request)
    form = CalendarForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        calendar = form.save()
        count = calendar.dates.count()
        messages.success(
            request,
            f"Created calendar {calendar.code} with {count} date{'s' if count != 1 else ''}.",
        )
        return close_dialog(request, "calendars-changed", "calendars:list")
    return render_dialog(
        request, "jobs/calendar_form.html", {"form": form, "calendar": None}, nav="calendars"
    )


def _dates_context(calendar: Calendar, form: CalendarDateForm | None = None) -> dict[str, object]:
    today = localdate()
    return {
        "nav": "calendars",
        "calendar": calendar,
        "dates": list(calendar.dates.all()),
        "today": today,
        "form": form or CalendarDateForm(calendar=calendar),
        "jobs": list(
            BatchRecurrence.objects.filter(calendar=calendar)
            .select_related("job")
            .order_by("job_id")
            .values_list("job_id", "job__description", "on_calendar_date")
        ),
    }


@require_GET
def calendar_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    """The calendar's dates, with Add date, Import .ics, Edit and Delete."""
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    template = "jobs/calendar_detail.html"
    if request.htmx and request.htmx.target == "calendar-dates":
        template += "#calendar-dates"
    return render(request, template, _dates_context(calendar))


@require_POST
def date_add(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    form: CalendarDateForm | None = CalendarDateForm(request.POST, calendar=calendar)
    assert form is not None
    if form.is_valid():
        added = form.save()
        moved = reschedule_users(calendar)
        note = f" {moved} waiting job{'s' if moved != 1 else ''} rescheduled." if moved else ""
        messages.success(request, f"Added {added.date:%Y-%m-%d} to {calendar.code}.{note}")
        if not request.htmx:
            return redirect("calendars:detail", calendar.pk)
        form = None  # a fresh form for the next date
    elif not request.htmx:
        for error in form.errors.get("date", []):
            messages.error(request, str(error))
        return redirect("calendars:detail", calendar.pk)
    return render(
        request, "jobs/calendar_detail.html#calendar-dates", _dates_context(calendar, form)
    )


@require_POST
def date_remove(request: AuthedRequest, pk: int, date_pk: int) -> HttpResponse:
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    removed, _ = CalendarDate.objects.filter(pk=date_pk, calendar=calendar).delete()
    if removed:
        moved = reschedule_users(calendar)
        note = f" {moved} waiting job{'s' if moved != 1 else ''} rescheduled." if moved else ""
        messages.success(request, f"Removed the date from {calendar.code}.{note}")
    if not request.htmx:
        return redirect("calendars:detail", calendar.pk)
    return render(request, "jobs/calendar_detail.html#calendar-dates", _dates_context(calendar))


@require_http_methods(["GET", "POST"])
def calendar_import(request: AuthedRequest, pk: int) -> HttpResponse:
    """Import .ics: the file's all-day events become dates (added, or replacing them all)."""
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    form = IcsImportForm(request.POST or None, request.FILES or None, calendar=calendar)
    if request.method == "POST" and form.is_valid():
        count = form.save()
        moved = reschedule_users(calendar)
        note = f" {moved} waiting job{'s' if moved != 1 else ''} rescheduled." if moved else ""
        verb = "Replaced the dates of" if form.cleaned_data.get("replace") else "Imported into"
        messages.success(
            request, f"{verb} {calendar.code}: {count} date{'s' if count != 1 else ''}.{note}"
        )
        return close_dialog(request, "calendar-changed", "calendars:detail", calendar.pk)
    return render_dialog(
        request,
        "jobs/calendar_import.html",
        {"form": form, "calendar": calendar},
        nav="calendars",
    )


@require_http_methods(["GET", "POST"])
def calendar_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    form = CalendarForm(request.POST or None, instance=calendar)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        messages.success(request, f"Saved calendar {saved.code}.")
        return close_dialog(request, "calendar-changed", "calendars:detail", saved.pk)
    return render_dialog(
        request, "jobs/calendar_form.html", {"form": form, "calendar": calendar}, nav="calendars"
    )


@require_http_methods(["GET", "POST"])
def calendar_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    """Delete a calendar no recurrence uses; one in use is refused with the count of its jobs."""
    _require_manager(request)
    calendar = get_object_or_404(Calendar, pk=pk)
    used = calendar.recurrences.count()
    if request.method == "POST" and not used:
        code = calendar.code
        try:
            calendar.delete()
        except ProtectedError:
            used = calendar.recurrences.count()  # a recurrence chose it meanwhile
        else:
            messages.success(request, f"Deleted calendar {code}.")
            if request.htmx:
                # The dialog opens from the calendar's own page, which is gone with it.
                return HttpResponseClientRedirect(reverse("calendars:list"))
            return redirect("calendars:list")
    problem = ""
    if used:
        problem = (
            f"Calendar {calendar.code} is used by the recurrence of {used} batch "
            f"job{'s' if used != 1 else ''}. Choose another calendar (or none) in their "
            "Recurrence dialogs first."
        )
    if request.method == "POST" and not request.htmx:
        messages.error(request, problem)
        return redirect("calendars:detail", calendar.pk)
    return render_dialog(
        request,
        "jobs/calendar_delete.html",
        {"calendar": calendar, "problem": problem, "count": calendar.dates.count()},
        nav="calendars",
    )
