"""Reading the dates of an .ics file of all-day events (lib/ics.py): good files and bad ones."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import SimpleTestCase

from batchadmin.lib.ics import Holiday, IcsError, read_dates

TODAY = dt.date(2026, 12, 3)


def ics(*events: str) -> bytes:
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:{i}@test\r\n{e}END:VEVENT\r\n" for i, e in enumerate(events)
    )
    return (
        f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{body}END:VCALENDAR\r\n".encode()
    )


def event(start: str, summary: str = "", extra: str = "") -> str:
    return f"DTSTART;VALUE=DATE:{start}\r\nSUMMARY:{summary}\r\n{extra}"


def read(data: bytes, limit: int = 5000) -> list[Holiday]:
    return read_dates(data, today=TODAY, limit=limit)


class GoodFilesTestCase(SimpleTestCase):
    def test_it_reads_single_and_multi_day_events(self):
        data = ics(
            event("20261225", "Christmas Day", "DTEND;VALUE=DATE:20261227\r\n"),
            event("20270101", "New Year's Day"),
            event("20261231", "Freeze", "DURATION:P1D\r\n"),
        )
        assert read(data) == [
            Holiday(dt.date(2026, 12, 25), "Christmas Day"),
            Holiday(dt.date(2026, 12, 26), "Christmas Day"),  # DTEND is not included
            Holiday(dt.date(2026, 12, 31), "Freeze"),
            Holiday(dt.date(2027, 1, 1), "New Year's Day"),
        ]

    def test_it_expands_repeating_events(self):
        data = ics(
            event(
                "20260501",
                "Labour Day",
                "RRULE:FREQ=YEARLY;COUNT=3\r\nEXDATE;VALUE=DATE:20270501\r\n",
            ),
            event("20261124", "Month end", "RRULE:FREQ=MONTHLY;BYMONTHDAY=-1\r\n"),
        )
        dates = [h.date for h in read(data)]
        assert dt.date(2026, 5, 1) in dates and dt.date(2028, 5, 1) in dates
        assert dt.date(2027, 5, 1) not in dates
        # Without an end: every month's last day up to the end of 2036.
        month_ends = [d for d in dates if d.day >= 28]
        assert month_ends[0] == dt.date(2026, 11, 30) and month_ends[-1] == dt.date(2036, 12, 31)

    def test_it_leaves_out_cancelled_events_and_keeps_the_first_summary(self):
        data = ics(
            event("20261225", "Christmas"),
            event("20261225", "Juledag"),
            event("20261224", "Office party", "STATUS:CANCELLED\r\n"),
        )
        assert read(data) == [Holiday(dt.date(2026, 12, 25), "Christmas")]


class BadFilesTestCase(SimpleTestCase):
    def test_it_refuses_what_is_not_icalendar(self):
        with pytest.raises(IcsError, match="This is not an iCalendar file"):
            read(b"Date,Holiday\n2026-12-25,Christmas\n")
        with pytest.raises(IcsError, match="This is not an iCalendar file"):
            read(b"")

    def test_it_refuses_a_file_without_events(self):
        with pytest.raises(IcsError, match="no events"):
            read(ics())

    def test_it_refuses_a_timed_event_naming_it(self):
        data = ics(
            event("20261225", "Christmas"), "DTSTART:20261228T100000Z\r\nSUMMARY:Team meeting\r\n"
        )
        with pytest.raises(
            IcsError,
            match=r"Event 2 \('Team meeting'\) starts at a time of day \(2026-12-28 10:00\)",
        ):
            read(data)

    def test_it_refuses_a_date_it_cannot_read(self):
        with pytest.raises(IcsError, match=r"Event 1 \('Bad'\): its DTSTART cannot be read"):
            read(ics(event("20261332", "Bad")))

    def test_it_refuses_an_event_without_a_start(self):
        with pytest.raises(IcsError, match="Event 1 .'Nothing'. has no DTSTART"):
            read(ics("SUMMARY:Nothing\r\n"))

    def test_it_refuses_too_many_dates(self):
        data = ics(event("20260101", "Every day", "RRULE:FREQ=DAILY\r\n"))
        with pytest.raises(IcsError, match="more than 100 dates"):
            read(data, limit=100)
