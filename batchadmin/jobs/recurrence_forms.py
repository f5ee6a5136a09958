"""The Recurrence dialog (D365 "Define recurrence") and the Active periods form.

``RecurrenceForm`` validates the dialog with the same rules the engine uses
(``batchadmin.lib.recurrence``) and, before anything is saved, lists the next five runs in the
recurrence's zone and in the viewer's (``next_runs``). Saving reschedules a job that is not
running to the first occurrence from now on; a running job takes the change when its run ends.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.db import transaction
from django.utils.timezone import now

from batchadmin.engine import transitions
from batchadmin.jobs.models import ActivePeriod, BatchJob, BatchRecurrence, Calendar, CalendarDate
from batchadmin.lib import clock, recurrence

Unit = BatchRecurrence.Unit
END_NONE, END_AFTER, END_BY = "none", "after", "by"
ON_DAY, ON_WEEKDAY = "day", "weekday"
PREVIEW_RUNS = 5


@dataclass(frozen=True)
class RunTime:
    """One upcoming run, in the recurrence's zone and in the viewer's.

    With a calendar the preview also lists the occurrences it skips (``skipped``: the times
    are the occurrence's) and says where it moved one (``moved_from``, in the recurrence's
    zone; ``merged`` when that time runs anyway). ``number`` counts runs only; ``note`` is what
    the calendar says of the date ("Christmas").
    """

    local: dt.datetime
    viewer: dt.datetime
    number: int | None = None
    skipped: bool = False
    moved_from: dt.datetime | None = None
    merged: bool = False
    note: str = ""


class OnCalendarDateField(forms.TypedChoiceField):
    """Skip or next working day; not posted (no calendar chosen, an older client) means skip,
    and is no change."""

    def __init__(self, **kwargs: Any) -> None:
        model_field = BatchRecurrence._meta.get_field("on_calendar_date")
        kwargs.setdefault("label", model_field.verbose_name.capitalize())
        kwargs.setdefault("help_text", model_field.help_text)
        super().__init__(
            choices=BatchRecurrence.OnCalendarDate.choices,
            required=False,
            initial=BatchRecurrence.OnCalendarDate.SKIP,
            **kwargs,
        )

    def to_python(self, value: Any) -> str:
        return str(super().to_python(value) or BatchRecurrence.OnCalendarDate.SKIP)


class OverlapField(forms.TypedChoiceField):
    """The overlap policy; not posted (an older client, a script) means skip, today's
    behaviour, and is no change."""

    def __init__(self, **kwargs: Any) -> None:
        model_field = BatchRecurrence._meta.get_field("overlap")
        kwargs.setdefault("label", model_field.verbose_name.capitalize())
        kwargs.setdefault("help_text", model_field.help_text)
        super().__init__(
            choices=BatchRecurrence.Overlap.choices,
            required=False,
            initial=BatchRecurrence.Overlap.SKIP,
            **kwargs,
        )

    def to_python(self, value: Any) -> str:
        return str(super().to_python(value) or BatchRecurrence.Overlap.SKIP)


class RecurrenceForm(forms.ModelForm[BatchRecurrence]):
    """Start date and time, time zone, range (end), pattern and the missed-runs policy.

    ``viewer_zone`` is the zone of the person looking at the dialog: the default zone of a new
    recurrence and the second column of the preview.
    """

    time_zone = clock.ZoneField(
        label="Time zone",
        help_text="The start, the end date and the pattern are read in this zone.",
    )
    end = forms.ChoiceField(
        label="End",
        choices=[(END_NONE, "No end date"), (END_AFTER, "End after"), (END_BY, "End by")],
        initial=END_NONE,
        widget=forms.RadioSelect,
    )
    weekdays = forms.MultipleChoiceField(
        label="On",
        choices=BatchRecurrence.Weekday.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Weeks: the days of the week it runs on.",
    )
    on_calendar_date = OnCalendarDateField(widget=forms.RadioSelect)
    overlap = OverlapField(widget=forms.RadioSelect)
    on = forms.ChoiceField(
        label="Months and years",
        choices=[(ON_DAY, "Day of the month"), (ON_WEEKDAY, "The first ... last weekday")],
        initial=ON_DAY,
        widget=forms.RadioSelect,
    )

    class Meta:
        model = BatchRecurrence
        fields = [
            "start_date",
            "start_time",
            "time_zone",
            "end_after",
            "end_by",
            "unit",
            "every",
            "weekdays",
            "day",
            "nth",
            "weekday",
            "month",
            "cron",
            "missed",
            "overlap",
            "calendar",
            "on_calendar_date",
        ]
        field_classes = {
            "start_date": clock.DateField,
            "start_time": clock.TimeField,
            "end_by": clock.DateField,
        }
        widgets = {
            "unit": forms.RadioSelect,
            "missed": forms.RadioSelect,
        }

    def __init__(
        self,
        *args: Any,
        job: BatchJob,
        viewer_zone: str | None = None,
        at: dt.datetime | None = None,
        **kwargs: Any,
    ) -> None:
        self.job = job
        self.at = at or now()
        self.viewer_zone = viewer_zone or settings.TIME_ZONE
        if kwargs.get("instance") is None:
            kwargs["instance"] = job.get_recurrence() or BatchRecurrence(job=job)
        instance: BatchRecurrence = kwargs["instance"]
        initial = kwargs.setdefault("initial", {})
        if instance._state.adding:
            # D365 fills in the start from the job's scheduled start (now if that has passed).
            zone = self.viewer_zone
            start = max(job.scheduled_start, self.at).astimezone(recurrence.zone(zone))
            start = start.replace(second=0, microsecond=0)
            defaults = {
                "time_zone": zone,
                "start_date": start.date(),
                "start_time": start.time(),
                "weekdays": [recurrence.WEEKDAYS[start.weekday()]],
                "day": start.day,
                "month": start.month,
            }
        else:
            defaults = {
                "end": END_AFTER if instance.end_after else END_BY if instance.end_by else END_NONE,
                "on": ON_WEEKDAY if instance.nth is not None else ON_DAY,
            }
        for key, value in defaults.items():
            initial.setdefault(key, value)
        super().__init__(*args, **kwargs)
        for name in ("every", "end", "on"):
            self.fields[name].required = False  # a cron pattern has no count; radios default
        calendar = self.fields["calendar"]
        assert isinstance(calendar, forms.ModelChoiceField)
        calendar.empty_label = "(none): every date of the pattern"
        # The dialog shows these selects without labels of their own: their empty choice says
        # what they are for.
        for name, empty, choices in (
            ("nth", "which", BatchRecurrence.Nth.choices),
            ("weekday", "weekday", BatchRecurrence.Weekday.choices),
            ("month", "month", BatchRecurrence.Month.choices),
        ):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [("", f"({empty})"), *choices]
        self.rule: recurrence.Rule | None = None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None
        self._clean_end(data)
        self._clean_pattern(data)
        if self.errors or data.get("start_date") is None or data.get("start_time") is None:
            return data
        weekday = data.get("weekday") or None
        calendar: Calendar | None = data.get("calendar")
        if calendar is None:
            data["on_calendar_date"] = BatchRecurrence.OnCalendarDate.SKIP  # it means nothing
        rule = recurrence.Rule(
            start=dt.datetime.combine(data["start_date"], data["start_time"]),
            time_zone=data["time_zone"],
            unit=data["unit"],
            every=data.get("every") or 1,
            weekdays=tuple(recurrence.weekday_number(w) for w in data.get("weekdays", [])),
            day=data.get("day"),
            nth=data.get("nth"),
            weekday=recurrence.weekday_number(weekday) if weekday else None,
            month=data.get("month"),
            cron=data.get("cron", ""),
            end_after=data.get("end_after"),
            end_by=data.get("end_by"),
            calendar=calendar.date_set() if calendar is not None else frozenset(),
            on_calendar_date=data["on_calendar_date"],
            calendar_name=calendar.code if calendar is not None else "",
        )
        try:
            rule.check()
        except recurrence.RuleError as exc:
            field = exc.field if exc.field in self.fields else None
            self.add_error(field, str(exc))
        else:
            self.rule = rule
        return data

    def _clean_end(self, data: dict[str, Any]) -> None:
        end = data.get("end")
        if end == END_AFTER and not data.get("end_after"):
            self.add_error("end_after", "How many runs?")
        if end == END_BY and not data.get("end_by"):
            self.add_error("end_by", "Until which date?")
        if end != END_AFTER:
            data["end_after"] = None
        if end != END_BY:
            data["end_by"] = None

    def _clean_pattern(self, data: dict[str, Any]) -> None:
        """Keep only the fields of the chosen unit, so the saved row says one thing."""
        unit = data.get("unit")
        on_weekday = data.get("on") == ON_WEEKDAY
        if unit == Unit.WEEKS and not data.get("weekdays"):
            self.add_error("weekdays", "Choose at least one day of the week.")
        if unit in (Unit.MONTHS, Unit.YEARS):
            if on_weekday and (data.get("nth") is None or not data.get("weekday")):
                self.add_error("nth", "Choose which weekday: first to fourth or last.")
            if not on_weekday and not data.get("day"):
                self.add_error("day", "Which day of the month?")
        if unit == Unit.YEARS and not data.get("month"):
            self.add_error("month", "Which month?")
        if unit == Unit.CRON and not data.get("cron", "").strip():
            self.add_error("cron", "Enter a cron expression.")
        # A shortcut (@daily) is saved as the five fields it stands for, which the preview
        # and the job list put in words.
        data["cron"] = recurrence.expand_cron(data.get("cron", "")) if unit == Unit.CRON else ""
        if unit == Unit.CRON:
            data["every"] = 1
        if unit != Unit.WEEKS:
            data["weekdays"] = []
        else:
            chosen = set(data.get("weekdays") or [])
            data["weekdays"] = [w for w in recurrence.WEEKDAYS if w in chosen]
        if unit not in (Unit.MONTHS, Unit.YEARS) or on_weekday:
            data["day"] = None
        if unit not in (Unit.MONTHS, Unit.YEARS) or not on_weekday:
            data["nth"], data["weekday"] = None, ""
        if unit != Unit.YEARS:
            data["month"] = None

    def next_runs(self, n: int = PREVIEW_RUNS) -> list[RunTime]:
        """The next ``n`` runs from now, as saving would schedule them (empty while invalid),
        with the occurrences a calendar skips or moves among them."""
        if not self.is_valid() or self.rule is None:
            return []
        rule = self.rule
        viewer = recurrence.zone(self.viewer_zone)
        # Saving restarts the count of End after, so the preview does too.
        plan = rule.plan(self.at, n)
        calendar: Calendar | None = self.cleaned_data.get("calendar")
        notes: dict[dt.date, str] = {}
        if calendar is not None:
            days = {p.original.astimezone(rule.tz).date() for p in plan if p.skipped or p.moved}
            notes = dict(
                CalendarDate.objects.filter(calendar=calendar, date__in=days).values_list(
                    "date", "description"
                )
            )
        rows, number = [], 0
        for p in plan:
            if not p.skipped and not p.merged:
                number += 1
            original = p.original.astimezone(rule.tz)
            rows.append(
                RunTime(
                    local=p.when.astimezone(rule.tz),
                    viewer=p.when.astimezone(viewer),
                    number=None if p.skipped or p.merged else number,
                    skipped=p.skipped,
                    moved_from=original if p.moved else None,
                    merged=p.merged,
                    note=notes.get(original.date(), ""),
                )
            )
        return rows

    def describe(self) -> str:
        """The rule in words as the job list will show it once saved ("" while invalid)."""
        return self.rule.describe() if self.is_valid() and self.rule is not None else ""

    def save(self, commit: bool = True) -> BatchRecurrence:
        recurring = super().save(commit=False)
        recurring.job = self.job
        if self.has_changed() or recurring._state.adding:
            recurring.runs = 0  # a new range: End after counts from here
        if commit:
            with transaction.atomic():
                recurring.save()
                transitions.reschedule_job(job_id=self.job.pk, at=self.at)
        return recurring


class ActivePeriodForm(forms.ModelForm[ActivePeriod]):
    """System administration > Setup > Active periods for batch jobs."""

    time_zone = clock.ZoneField(
        label="Time zone",
        initial="UTC",
        help_text="The times are read in this zone and follow its daylight saving time.",
    )

    class Meta:
        model = ActivePeriod
        fields = ["code", "name", "start_time", "end_time", "time_zone"]
        field_classes = {"start_time": clock.TimeField, "end_time": clock.TimeField}

    def describe(self) -> str:
        """The window in words: "18:00 to 08:00 (next day) Europe/Oslo" ("" while invalid)."""
        if not self.is_valid():
            return ""
        data = self.cleaned_data
        return ActivePeriod(
            start_time=data["start_time"], end_time=data["end_time"], time_zone=data["time_zone"]
        ).describe()
