"""The forms of the Calendars pages: a calendar, one of its dates, and an .ics import."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.db import transaction
from django.utils.timezone import localdate, now

from batchadmin.engine import transitions
from batchadmin.jobs.models import (
    CALENDAR_DATES_LIMIT,
    RUNNING_STATUSES,
    BatchRecurrence,
    Calendar,
    CalendarDate,
)
from batchadmin.lib import clock, ics

ICS_MAX_BYTES = 2 * 1024 * 1024  # a century of holidays is a few hundred kilobytes


class IcsFileField(forms.FileField):
    """An .ics upload, read into holidays when the form is cleaned."""

    def clean(self, data: Any, initial: Any = None) -> list[ics.Holiday] | None:
        upload = super().clean(data, initial)
        if not upload:
            return None
        if upload.size > ICS_MAX_BYTES:
            raise forms.ValidationError(
                f"{upload.name} is larger than {ICS_MAX_BYTES // (1024 * 1024)} MB: "
                "that is no calendar of holidays."
            )
        try:
            return ics.read_dates(upload.read(), today=localdate(), limit=CALENDAR_DATES_LIMIT)
        except ics.IcsError as exc:
            raise forms.ValidationError(f"{upload.name}: {exc} Nothing was imported.") from None


ICS_HELP = (
    "An iCalendar file (.ics) of all-day events, such as a holiday calendar exported from "
    "Outlook or Google Calendar. Each day an event covers becomes a date of the calendar."
)


class CalendarForm(forms.ModelForm[Calendar]):
    """A new calendar (optionally with the dates of an .ics file), or its code and description."""

    ics_file = IcsFileField(label="Dates from an .ics file", required=False, help_text=ICS_HELP)

    class Meta:
        model = Calendar
        fields = ["code", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            del self.fields["ics_file"]  # an existing calendar imports from its own page

    def save(self, commit: bool = True) -> Calendar:
        holidays: list[ics.Holiday] = self.cleaned_data.get("ics_file") or []
        with transaction.atomic():
            calendar = super().save(commit)
            if holidays:
                add_dates(calendar, holidays)
        return calendar


class CalendarDateForm(forms.ModelForm[CalendarDate]):
    class Meta:
        model = CalendarDate
        fields = ["date", "description"]
        field_classes = {"date": clock.DateField}

    def __init__(self, *args: Any, calendar: Calendar, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.calendar = calendar

    def clean_date(self) -> dt.date:
        date: dt.date = self.cleaned_data["date"]
        if CalendarDate.objects.filter(calendar=self.instance.calendar, date=date).exists():
            raise forms.ValidationError(
                f"{date:%Y-%m-%d} is already a date of {self.instance.calendar.code}."
            )
        if self.instance.calendar.dates.count() >= CALENDAR_DATES_LIMIT:
            raise forms.ValidationError(
                f"A calendar holds at most {CALENDAR_DATES_LIMIT:,} dates; remove old ones first."
            )
        return date


class IcsImportForm(forms.Form):
    ics_file = IcsFileField(label="iCalendar file (.ics)", help_text=ICS_HELP)
    replace = forms.BooleanField(
        label="Replace the calendar's dates",
        required=False,
        help_text="Off: the file's dates are added to those the calendar has.",
    )

    def __init__(self, *args: Any, calendar: Calendar, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calendar = calendar

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        holidays: list[ics.Holiday] = cleaned.get("ics_file") or []
        if holidays and not cleaned.get("replace"):
            kept = self.calendar.dates.exclude(date__in=[h.date for h in holidays]).count()
            if kept + len(holidays) > CALENDAR_DATES_LIMIT:
                self.add_error(
                    "ics_file",
                    f"With these the calendar would hold more than {CALENDAR_DATES_LIMIT:,} "
                    "dates. Replace its dates instead, or remove old ones first.",
                )
        return cleaned

    def save(self) -> int:
        """Add (or replace with) the file's dates; returns how many dates the file had."""
        holidays: list[ics.Holiday] = self.cleaned_data["ics_file"]
        with transaction.atomic():
            if self.cleaned_data.get("replace"):
                self.calendar.dates.all().delete()
            add_dates(self.calendar, holidays)
        return len(holidays)


def add_dates(calendar: Calendar, holidays: list[ics.Holiday]) -> None:
    """Add dates the calendar lacks; a date it has keeps its description."""
    CalendarDate.objects.bulk_create(
        [CalendarDate(calendar=calendar, date=h.date, description=h.description) for h in holidays],
        ignore_conflicts=True,
    )


def reschedule_users(calendar: Calendar, at: dt.datetime | None = None) -> int:
    """Waiting jobs on this calendar whose next start is ahead move to their first occurrence
    under its dates now; a due job keeps its start (it runs, then follows the new dates)."""
    at = at or now()
    moved = 0
    recurrences = BatchRecurrence.objects.filter(
        calendar=calendar, job__scheduled_start__gt=at
    ).exclude(job__status__in=RUNNING_STATUSES)
    for recurring in recurrences.select_related("job", "calendar"):
        if recurring.next_occurrence(at, inclusive=True) != recurring.job.scheduled_start:
            moved += transitions.reschedule_job(job_id=recurring.job_id, at=at)
    return moved
