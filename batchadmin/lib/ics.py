"""The dates of an iCalendar (.ics) file of all-day events: holidays for a batch calendar.

Pure: bytes in, dates out, ``IcsError`` with a message a person can act on for anything else.

1. The file must parse as one VCALENDAR (icalendar, RFC 5545); a property it cannot read
   (a date like 20261332) is an error naming the event.
2. Every VEVENT must be all-day (DTSTART;VALUE=DATE): a timed event is refused rather than
   guessed at, since a calendar of dates has no time of day.
3. An event covers DTSTART up to, not including, DTEND (RFC 5545, 3.6.1), or its DURATION in
   days, or the one day. A cancelled event covers nothing.
4. A repeating event (RRULE, RDATE, EXDATE) is expanded; one without COUNT or UNTIL up to the
   end of the year ``horizon_years`` after the year of ``today``.
5. At most ``limit`` dates: a file of every day for a century is a mistake.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import icalendar
from dateutil import rrule

HORIZON_YEARS = 10
MAX_DAYS_PER_EVENT = 366


class IcsError(ValueError):
    pass


@dataclass(frozen=True)
class Holiday:
    date: dt.date
    description: str


def read_dates(
    data: bytes, *, today: dt.date, limit: int, horizon_years: int = HORIZON_YEARS
) -> list[Holiday]:
    """The dates the file's events cover, sorted, each once (with the first event's summary)."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except (ValueError, IndexError, KeyError) as exc:
        raise IcsError(f"This is not an iCalendar file: {_first_line(exc)}") from None
    if not isinstance(calendar, icalendar.Calendar):
        raise IcsError("This is not an iCalendar file: it has no VCALENDAR.")
    horizon = dt.date(today.year + horizon_years, 12, 31)
    found: dict[dt.date, str] = {}
    events = calendar.walk("VEVENT")
    if not events:
        raise IcsError("The file holds no events (VEVENT): there are no dates to import.")
    for number, event in enumerate(events, 1):
        for day in _days(event, number, horizon):
            found.setdefault(day, str(event.get("SUMMARY", "")).strip()[:200])
            if len(found) > limit:
                raise IcsError(
                    f"The file covers more than {limit:,} dates; a calendar holds at most that "
                    "many. Import a shorter period."
                )
    return [Holiday(day, found[day]) for day in sorted(found)]


def _days(event: Any, number: int, horizon: dt.date) -> Iterable[dt.date]:
    summary = str(event.get("SUMMARY", "")).strip()
    where = f"Event {number}" + (f" ({summary!r})" if summary else "")
    if event.errors:
        name, problem = event.errors[0]
        raise IcsError(f"{where}: its {name} cannot be read: {problem}.")
    if str(event.get("STATUS", "")).upper() == "CANCELLED":
        return []
    start = _date(event, "DTSTART", where, required=True)
    assert start is not None
    end = _date(event, "DTEND", where, required=False)
    if end is None and event.get("DURATION") is not None:
        duration = event.decoded("DURATION")
        if not isinstance(duration, dt.timedelta) or duration.seconds or duration.microseconds:
            raise IcsError(f"{where}: its DURATION is not a whole number of days.")
        end = start + duration
    days = max((end - start).days if end is not None else 1, 1)
    if days > MAX_DAYS_PER_EVENT:
        raise IcsError(f"{where} lasts {days} days; an event of more than a year is a mistake.")
    starts = _starts(event, start, where, horizon)
    return sorted({s + dt.timedelta(days=i) for s in starts for i in range(days)})


def _date(event: Any, name: str, where: str, *, required: bool) -> dt.date | None:
    prop = event.get(name)
    if prop is None:
        if required:
            raise IcsError(f"{where} has no {name}.")
        return None
    value = prop.dt
    if isinstance(value, dt.datetime):
        when = value.strftime("%Y-%m-%d %H:%M")
        raise IcsError(
            f"{where} starts at a time of day ({when}): only all-day events can be imported, "
            "since a calendar holds whole dates."
        )
    if not isinstance(value, dt.date):
        raise IcsError(f"{where}: its {name} is not a date.")
    return value


def _starts(event: Any, start: dt.date, where: str, horizon: dt.date) -> list[dt.date]:
    """The start dates of a (possibly repeating) event, up to the horizon."""
    starts = {start}
    if event.get("RRULE") is not None:
        text = event.get("RRULE").to_ical().decode()
        try:
            rule = rrule.rrulestr(f"RRULE:{text}", dtstart=dt.datetime.combine(start, dt.time()))
        except (ValueError, TypeError) as exc:
            raise IcsError(f"{where}: its RRULE {text!r} cannot be read: {exc}.") from None
        until = dt.datetime.combine(horizon, dt.time.max)
        for t in rule.xafter(dt.datetime.combine(start, dt.time()), inc=True):
            if t > until:
                break
            starts.add(t.date())
    for name, add in (("RDATE", True), ("EXDATE", False)):
        props = event.get(name)
        for prop in props if isinstance(props, list) else [props] if props is not None else []:
            for item in prop.dts:
                value = item.dt
                day = value.date() if isinstance(value, dt.datetime) else value
                if not isinstance(day, dt.date):
                    raise IcsError(f"{where}: its {name} is not a list of dates.")
                if add:
                    starts.add(day)
                else:
                    starts.discard(day)
    return sorted(s for s in starts if s <= horizon)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
