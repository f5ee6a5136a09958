"""Dates, times and time zones as every page writes and reads them.

One format everywhere: ISO-like dates (2026-12-03), times on the user's clock (24-hour by
default, 12-hour if they chose it in their settings), in the user's zone, and zones spelled as
people read them ("America/New York", not "America/New_York"). Inputs take the same text, so
a time typed into a form looks like the times the page shows.

The clock is per request, like Django's current time zone: ``TimezoneMiddleware`` activates
the user's choice, ``format_when`` and the widgets below read it.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from django import forms
from django.core.exceptions import ValidationError
from django.utils.timezone import localtime

from batchadmin.lib import daterange

CLOCK_24 = "24"
CLOCK_12 = "12"
CLOCK_CHOICES = [(CLOCK_24, "24-hour (18:30)"), (CLOCK_12, "12-hour (6:30 PM)")]

DATE_FORMAT = "%Y-%m-%d"
# What the time inputs accept, whatever the user's clock: 18:30, 18:30:15, 6:30 PM, 6:30pm.
TIME_INPUT_FORMATS = ["%H:%M", "%H:%M:%S", "%I:%M %p", "%I:%M:%S %p", "%I:%M%p", "%I:%M:%S%p"]
DATETIME_INPUT_FORMATS = [
    f"{DATE_FORMAT}{sep}{t}" for sep in (" ", "T") for t in TIME_INPUT_FORMATS
] + [DATE_FORMAT]

_clock: ContextVar[str] = ContextVar("batch_clock", default=CLOCK_24)


@contextmanager
def clock_in_force(clock: str) -> Iterator[None]:
    """Show times on ``clock`` (CLOCK_24 or CLOCK_12) inside the block (one request)."""
    token = _clock.set(clock if clock in (CLOCK_24, CLOCK_12) else CLOCK_24)
    try:
        yield
    finally:
        _clock.reset(token)


def current_clock() -> str:
    return _clock.get()


def zone_label(name: str) -> str:
    """ "America/New_York" -> "America/New York": the one spelling pages show."""
    return name.replace("_", " ")


def zone_from_label(text: str) -> str:
    """The IANA name of what a person typed ("america/new york" -> "America/New_York")."""
    key = text.strip().replace(" ", "_")
    return _by_folded().get(key.casefold(), key)


def zone_name(tz: dt.tzinfo | None) -> str:
    if isinstance(tz, ZoneInfo):
        return tz.key
    if tz is not None and tz.utcoffset(None) == dt.timedelta(0):
        return "UTC"
    return str(tz) if tz is not None else ""


@functools.cache
def picker_zones() -> tuple[str, ...]:
    """The zones a person picks from: UTC, then tz's own list for people (zone.tab: one zone
    per region of each country), which leaves out the deprecated aliases (US/Eastern,
    Asia/Calcutta, EST5EDT) that available_timezones() also holds. Stored aliases still
    validate; they are only not offered."""
    text = (importlib.resources.files("tzdata") / "zoneinfo" / "zone.tab").read_text("utf-8")
    names = {line.split("\t")[2] for line in text.splitlines() if line and line[0] != "#"}
    return ("UTC", *sorted(names))


@functools.cache
def _by_folded() -> dict[str, str]:
    # The system's tz database adds names that are not zones of their own.
    names = available_timezones() - {"localtime", "posixrules", "Factory"}
    return {name.casefold(): name for name in names}


def _time(value: dt.time | dt.datetime, *, seconds: bool, ms: bool = False) -> str:
    sec = f":{value.second:02d}" if seconds or ms else ""
    if ms:
        sec += f".{value.microsecond // 1000:03d}"
    if _clock.get() == CLOCK_12:
        hour = value.hour % 12 or 12
        return f"{hour}:{value.minute:02d}{sec} {'AM' if value.hour < 12 else 'PM'}"
    return f"{value.hour:02d}:{value.minute:02d}{sec}"


# Below this, times of a run or attempt are written with milliseconds: 250 tasks that all
# start and end within one second would otherwise all read 02:50:27.
SHORT_DURATION = dt.timedelta(minutes=1)


def end_precision(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """The spec for the end of the same: as ``precision``, without the date when the end is
    on the start's date in the current zone ("2026-12-03 02:50:27.120 – 02:50:27.480")."""
    spec = precision(start, end)
    if start and end and localtime(start).date() == localtime(end).date():
        return f"time {spec}"
    return spec


def precision(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """The ``format_when`` spec for the times of something that ran from ``start`` to ``end``:
    "ms" when it was short (or has not ended yet, so a just-started attempt reads exactly),
    else "s"."""
    if start is None or end is None or end - start < SHORT_DURATION:
        return "ms"
    return "s"


def format_when(value: Any, spec: str = "") -> str:
    """``value`` in the one format: "2026-12-03 18:30" ("" for None).

    ``spec`` holds words separated by spaces: ``s`` adds seconds, ``ms`` seconds and
    milliseconds ("18:30:05.042"), ``time`` leaves out the
    date, ``date`` the time, ``day`` puts the weekday first ("Thu 2026-12-03 18:30"), ``tz``
    adds the zone ("18:30 Europe/Oslo"). An aware datetime is written in its own zone: the
    template filter hands it over already in the user's (or, inside {% localtime off %}, as
    it is).
    """
    if value is None or value == "":
        return ""
    words = set(spec.split())
    seconds = "s" in words
    ms = "ms" in words
    if isinstance(value, dt.datetime):
        parts = []
        if "day" in words:
            parts.append(f"{value:%a}")
        if "time" not in words:
            parts.append(f"{value:{DATE_FORMAT}}")
        if "date" not in words:
            parts.append(_time(value, seconds=seconds, ms=ms))
        if "tz" in words and value.tzinfo is not None:
            parts.append(zone_label(zone_name(value.tzinfo)))
        return " ".join(parts)
    if isinstance(value, dt.date):
        return (f"{value:%a} " if "day" in words else "") + f"{value:{DATE_FORMAT}}"
    if isinstance(value, dt.time):
        return _time(value, seconds=seconds, ms=ms)
    return str(value)


# --- inputs -------------------------------------------------------------------------------


class TimeInput(forms.TimeInput):
    """A time as text on the user's clock ("18:30" or "6:30 PM"), not the browser's own
    control, whose 12 or 24 hours follow the browser's language instead of the user."""

    input_type = "text"

    def __init__(self, attrs: dict[str, Any] | None = None, *, seconds: bool = False) -> None:
        self.seconds = seconds
        defaults = {"inputmode": "text", "autocomplete": "off", "size": 9, "class": "time-input"}
        super().__init__({**defaults, **(attrs or {})})

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["attrs"].setdefault(
            "placeholder", "h:mm AM" if _clock.get() == CLOCK_12 else "HH:MM"
        )
        return context

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, dt.time):
            return _time(value, seconds=self.seconds or bool(value.second))
        return super().format_value(value)


class DateInput(forms.DateInput):
    """A date as ISO text, 2026-12-03, whatever the browser's language."""

    input_type = "text"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        defaults = {
            "placeholder": "YYYY-MM-DD",
            "inputmode": "numeric",
            "autocomplete": "off",
            "size": 11,
            "class": "date-input",
        }
        super().__init__({**defaults, **(attrs or {})}, format=DATE_FORMAT)


class DateTimeInput(forms.DateTimeInput):
    """A date and time as the pages write them: "2026-12-03 18:30" (or "... 6:30 PM")."""

    input_type = "text"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        defaults = {"autocomplete": "off", "size": 18, "class": "datetime-input"}
        super().__init__({**defaults, **(attrs or {})})

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["attrs"].setdefault(
            "placeholder", "YYYY-MM-DD h:mm AM" if _clock.get() == CLOCK_12 else "YYYY-MM-DD HH:MM"
        )
        return context

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, dt.datetime):
            # Bound to the form as the user's local time (the form field converts aware values
            # to the current zone before the widget sees them).
            return f"{value:{DATE_FORMAT}} {_time(value, seconds=bool(value.second))}"
        return super().format_value(value)


class TimeField(forms.TimeField):
    widget = TimeInput
    input_formats = TIME_INPUT_FORMATS
    default_error_messages = {"invalid": "Enter a time as 18:30 (or 6:30 PM)."}


class DateField(forms.DateField):
    widget = DateInput
    input_formats = [DATE_FORMAT]
    default_validators = [daterange.validate]
    default_error_messages = {"invalid": "Enter a date as 2026-12-03 (year, month, day)."}


class DateTimeField(forms.DateTimeField):
    widget = DateTimeInput
    input_formats = DATETIME_INPUT_FORMATS
    default_validators = [daterange.validate]
    default_error_messages = {"invalid": "Enter a date and time as 2026-12-03 18:30."}


class ZoneInput(forms.TextInput):
    """A text box that suggests time zones as you type (a <datalist> the page includes once,
    templates/_zone_list.html): "new y" finds America/New York."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        defaults = {"list": "zone-list", "autocomplete": "off", "spellcheck": "false"}
        super().__init__({**defaults, **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        return zone_label(value) if isinstance(value, str) else super().format_value(value)


class ZoneField(forms.CharField):
    """An IANA time zone, typed or picked as "America/New York"; cleans to "America/New_York"."""

    widget = ZoneInput

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 64)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> str:
        text = super().to_python(value)
        return zone_from_label(text) if text else ""

    def validate(self, value: Any) -> None:
        super().validate(value)
        if value and value.casefold() not in _by_folded():
            raise ValidationError(
                f"{zone_label(value)} is not a time zone: type a city or region, e.g. Europe/Oslo "
                "or America/New York, and pick it from the list.",
                code="invalid_zone",
            )
