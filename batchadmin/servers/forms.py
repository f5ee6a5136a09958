from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from batchadmin.lib import clock
from batchadmin.servers.models import (
    MAX_THREADS_LIMIT,
    PAUSED,
    BatchGroup,
    BatchServer,
    BatchServerSchedule,
)

DAY = 24 * 3600


MAX_CONCURRENCY_ERROR = (
    f"Max concurrency must be a whole number from -1 to {MAX_THREADS_LIMIT}: "
    "-1 pauses the group, 0 means no limit, N allows N tasks of each job at once."
)


KEPT_WHEN_LEFT_OUT = ("default_priority", "reserved_capacity", "max_tasks")


class GroupForm(forms.ModelForm[BatchGroup]):
    max_concurrency = forms.IntegerField(
        label="Max concurrency",
        min_value=PAUSED,
        max_value=MAX_THREADS_LIMIT,
        initial=0,
        required=False,
        help_text=BatchGroup._meta.get_field("max_concurrency").help_text,
        error_messages={
            "invalid": MAX_CONCURRENCY_ERROR,
            "min_value": MAX_CONCURRENCY_ERROR,
            "max_value": MAX_CONCURRENCY_ERROR,
        },
    )

    class Meta:
        model = BatchGroup
        fields = [
            "code",
            "description",
            "default_priority",
            "max_concurrency",
            "max_tasks",
            "reserved_capacity",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # The code names the group's Celery queue; messages already queued under the old
            # name would be stranded by a rename. D365 does not rename groups either.
            self.fields["code"].disabled = True
            self.fields["code"].help_text = "A group's code can't be changed once created."
        for name in KEPT_WHEN_LEFT_OUT:
            self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        for name in KEPT_WHEN_LEFT_OUT:
            # Not posted (an older form, a script): keep what the group has, or the default.
            if cleaned.get(name) in (None, ""):
                cleaned[name] = getattr(self.instance, name)
        return cleaned

    def clean_max_concurrency(self) -> int:
        value: int | None = self.cleaned_data.get("max_concurrency")
        # Left empty (or not posted): keep what the group has; a new group gets no limit.
        return self.instance.max_concurrency if value is None else value

    def clean_code(self) -> str:
        code: str = self.cleaned_data["code"]
        if self.instance._state.adding:
            clash = BatchGroup.objects.filter(code__iexact=code).first()
            if clash is not None:
                raise ValidationError(f"Group {clash.code} exists already.")
        return code


class GroupServersForm(forms.Form):
    """D365's Selected / Remaining server lists of a batch group, edited before saving.

    ``selected`` carries the lists' current (unsaved) state between requests; ``add`` and
    ``remove`` are what the user picked in the Remaining and Selected lists.
    """

    ACTIONS = ("add", "add-all", "remove", "remove-all", "save", "undo")

    selected = forms.ModelMultipleChoiceField(
        queryset=BatchServer.objects.all(), required=False, widget=forms.MultipleHiddenInput
    )
    add = forms.ModelMultipleChoiceField(
        queryset=BatchServer.objects.all(), required=False, label="Remaining servers"
    )
    remove = forms.ModelMultipleChoiceField(
        queryset=BatchServer.objects.all(), required=False, label="Selected servers"
    )
    action = forms.ChoiceField(choices=[(a, a) for a in ACTIONS])

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        action = data.get("action")
        if action == "add" and not data.get("add") and "add" not in self.errors:
            self.add_error("add", "Pick one or more servers in Remaining servers first.")
        if action == "remove" and not data.get("remove") and "remove" not in self.errors:
            self.add_error("remove", "Pick one or more servers in Selected servers first.")
        return data


class ServerForm(forms.ModelForm[BatchServer]):
    time_zone = clock.ZoneField(help_text=BatchServer._meta.get_field("time_zone").help_text)

    class Meta:
        model = BatchServer
        fields = ["name", "description", "enabled", "time_zone", "groups"]
        widgets = {"groups": forms.CheckboxSelectMultiple}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # The server ID is the worker's node name: workers find their row by it.
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "The worker's node name; it can't be changed here."


class ScheduleRowForm(forms.ModelForm[BatchServerSchedule]):
    class Meta:
        model = BatchServerSchedule
        fields = ["start_time", "end_time", "max_threads"]
        field_classes = {"start_time": clock.TimeField, "end_time": clock.TimeField}
        widgets = {"max_threads": forms.NumberInput(attrs={"min": 0, "max": MAX_THREADS_LIMIT})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The inputs sit in a table under column heads, without labels of their own.
        for name, field in self.fields.items():
            if name in self.Meta.fields:
                field.widget.attrs["aria-label"] = str(field.label)


def _seconds(t: dt.time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def windows(start: dt.time, end: dt.time) -> list[tuple[int, int]]:
    """The seconds of the day a row covers, as half-open intervals (midnight splits one in two)."""
    a, b = _seconds(start), _seconds(end)
    if a == b:
        return [(0, DAY)]
    if a < b:
        return [(a, b)]
    return [(a, DAY), (0, b)]


def overlap(one: tuple[dt.time, dt.time], other: tuple[dt.time, dt.time]) -> bool:
    return any(a < d and c < b for a, b in windows(*one) for c, d in windows(*other))


class BaseScheduleFormSet(
    forms.BaseInlineFormSet[BatchServerSchedule, BatchServer, ScheduleRowForm]
):
    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        spans: list[tuple[dt.time, dt.time]] = []
        for form in self.forms:
            if not form.has_changed() and not form.instance.pk:
                continue
            if form.cleaned_data.get("DELETE"):
                continue
            span = (form.cleaned_data["start_time"], form.cleaned_data["end_time"])
            for other_span in spans:
                if overlap(span, other_span):
                    # D365 takes the thread count from one row at a time: overlapping rows
                    # would make the count depend on their order.
                    message = (
                        f"{span[0]:%H:%M}-{span[1]:%H:%M} overlaps "
                        f"{other_span[0]:%H:%M}-{other_span[1]:%H:%M}; windows must not overlap."
                    )
                    form.add_error("start_time", message)
                    break
            spans.append(span)
        if any(self.errors):
            raise ValidationError("Fix the overlapping schedule rows.")


ScheduleFormSet = forms.inlineformset_factory(
    BatchServer,
    BatchServerSchedule,
    form=ScheduleRowForm,
    formset=BaseScheduleFormSet,
    extra=1,
    can_delete=True,
)
