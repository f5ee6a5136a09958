"""Recurrence maths for batch jobs (docs/architecture.md, section 5): pure, no ORM.

A ``Rule`` is what D365's "Define recurrence" dialog holds: a start (a local date and time in a
time zone), a pattern, and an end (after N runs, or by a date). Its occurrences:

1. come from the anchor (the start), never from a previous run, so they cannot drift;
2. for minutes and hours are elapsed time, anchor + k * N minutes: a DST change moves the local
   clock time of the runs, never the interval between them (a wall-clock "every 2 hours" is the
   cron expression ``0 */2 * * *``);
3. for days, weeks, months, years and cron are wall-clock times. dateutil.rrule or croniter
   lists local times in the rule's zone, which are then placed on the time line: a local time
   that does not exist that day (the DST gap) runs at the first instant after the gap, and an
   ambiguous one (the hour repeated when the clocks go back) runs once, at its first instant;
4. end by a date: the last local date on which an occurrence may fall. End after N: N runs;
   the caller passes the runs done, because a missed occurrence is not a run.
5. with a calendar (a set of local dates: holidays, month-end freezes), an occurrence whose
   local date is in it is either skipped, or moved to the next working day (the next date not
   in the calendar) at the same local time of day, placed on the time line as in 3. A moved
   occurrence that lands on another one runs once; one that lands after End by is dropped.

``Window`` is an active period: a time-of-day window in a zone, possibly crossing midnight.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cron_descriptor import ExpressionDescriptor, FormatException, MissingFieldException
from cron_descriptor import Options as CronOptions
from croniter import CroniterError, croniter
from dateutil import rrule

from batchadmin.lib import daterange, numbers
from batchadmin.lib.clock import format_when, zone_label

MINUTES, HOURS, DAYS, WEEKS, MONTHS, YEARS, CRON = (
    "minutes",
    "hours",
    "days",
    "weeks",
    "months",
    "years",
    "cron",
)
UNITS = (MINUTES, HOURS, DAYS, WEEKS, MONTHS, YEARS, CRON)
# The longest step: 100 years in each unit. Longer is a typo, and a step past Python's
# datetime range (every 10^20 minutes) would fail every reader of the job.
MAX_EVERY = {
    MINUTES: 100 * 525_960,
    HOURS: 100 * 8_766,
    DAYS: 36_525,
    WEEKS: 5_218,
    MONTHS: 1_200,
    YEARS: 100,
}
ELAPSED_UNITS = {MINUTES: dt.timedelta(minutes=1), HOURS: dt.timedelta(hours=1)}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
NTH_WORDS = {1: "first", 2: "second", 3: "third", 4: "fourth", -1: "last"}
MONTH_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
UTC = dt.UTC
TINY = dt.timedelta(microseconds=1)
# How far ahead a search for the next occurrence looks: a rule that never matches (the 31st of
# February) must not loop for ever.
SEARCH_YEARS = 100
_RRULE_FREQ: dict[str, Literal[0, 1, 2, 3, 4, 5, 6]] = {
    DAYS: rrule.DAILY,
    WEEKS: rrule.WEEKLY,
    MONTHS: rrule.MONTHLY,
    YEARS: rrule.YEARLY,
}
_RRULE_WEEKDAYS = (rrule.MO, rrule.TU, rrule.WE, rrule.TH, rrule.FR, rrule.SA, rrule.SU)
# What an occurrence on a calendar date does: it is skipped, or runs on the next working day.
SKIP, NEXT_DAY = "skip", "next_day"
ON_CALENDAR_DATE = (SKIP, NEXT_DAY)
# Rule.plan() looks at no more of the pattern's occurrences than this for one preview (an
# every-minute rule on a long run of calendar dates must not list them all).
PLAN_SCAN_LIMIT = 5000


class RuleError(ValueError):
    """An invalid rule; ``field`` names the part of the dialog it is about."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; RuleError for anything else (including paths and "localtime")."""
    if name not in _zone_names():
        raise RuleError(f"Unknown time zone {name!r}.", field="time_zone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleError(f"Unknown time zone {name!r}.", field="time_zone") from None


def zone_names() -> list[str]:
    return sorted(_zone_names())


@functools.cache
def _zone_names() -> frozenset[str]:
    # The system's tz database adds names that are not zones of their own.
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def weekday_number(name: str) -> int:
    """0 for "mon" ... 6 for "sun"."""
    try:
        return WEEKDAYS.index(name)
    except ValueError:
        raise RuleError(f"Unknown weekday {name!r}: use mon ... sun.", field="weekdays") from None


def localize(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The instant (in UTC) at which the wall clock in ``tz`` shows ``local`` (naive).

    A time in a DST gap gives the first instant after the gap; an ambiguous time gives its
    first instant (fold=0).
    """
    first = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == local:
        return first
    # In the gap, fold=0 reads ``local`` with the offset before the jump and fold=1 with the
    # offset after it; the jump lies between the two readings. Transitions are on whole
    # seconds, so a binary search over seconds finds it.
    lo = math.floor(local.replace(tzinfo=tz, fold=1).timestamp())
    hi = math.ceil(first.timestamp())
    before = dt.datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return dt.datetime.fromtimestamp(hi, UTC)


def exists(local: dt.datetime, tz: ZoneInfo) -> bool:
    """Whether the wall clock in ``tz`` ever shows ``local`` (False inside a DST gap)."""
    return localize(local, tz).astimezone(tz).replace(tzinfo=None) == local


@dataclass(frozen=True)
class Span:
    """A stretch of occurrences: the first, the last and how many (at most the limit asked)."""

    first: dt.datetime
    last: dt.datetime
    count: int


@dataclass(frozen=True)
class Planned:
    """One occurrence of the pattern and what became of it, for the Recurrence preview.

    ``at`` is when it runs: the occurrence itself, a later time when a calendar moved it to the
    next working day, or None when the calendar skips it. ``merged``: moved onto a time that
    runs anyway, so it adds no run of its own.
    """

    original: dt.datetime
    at: dt.datetime | None
    merged: bool = False

    @property
    def skipped(self) -> bool:
        return self.at is None

    @property
    def moved(self) -> bool:
        return self.at is not None and self.at != self.original

    @property
    def when(self) -> dt.datetime:
        """The time the preview lists it at."""
        return self.original if self.at is None else self.at


@dataclass(frozen=True)
class Rule:
    start: dt.datetime  # naive: the local date and time in ``time_zone``
    time_zone: str
    unit: str = DAYS
    every: int = 1
    weekdays: tuple[int, ...] = ()  # weeks: 0 = Monday; empty = the start's weekday
    day: int | None = None  # months, years: day of the month; with nth empty = the start's day
    nth: int | None = None  # months, years: 1-4, or -1 for the last ...
    weekday: int | None = None  # ... this weekday (0 = Monday)
    month: int | None = None  # years: 1-12; empty = the start's month
    cron: str = ""
    end_after: int | None = None  # runs
    end_by: dt.date | None = None  # local date, inclusive
    calendar: frozenset[dt.date] = frozenset()  # local dates: see ``on_calendar_date``
    on_calendar_date: str = SKIP  # SKIP them, or move to the NEXT_DAY not in the calendar
    calendar_name: str = ""  # for the words only

    # --- validation -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise RuleError for a rule the dialog must refuse."""
        zone(self.time_zone)
        if self.start.tzinfo is not None:
            raise RuleError("The start is a local date and time, without an offset.")
        if self.unit not in UNITS:
            raise RuleError(f"Unknown unit {self.unit!r}.", field="unit")
        if self.end_after is not None and self.end_by is not None:
            raise RuleError("End after a number of runs or by a date, not both.", field="end")
        if self.end_after is not None and self.end_after < 1:
            raise RuleError("End after at least one run.", field="end_after")
        if not daterange.in_range(self.start):
            raise RuleError(f"Start on a date {daterange.RANGE_TEXT}.", field="start_date")
        if self.end_by is not None and not daterange.in_range(self.end_by):
            raise RuleError(f"End by a date {daterange.RANGE_TEXT}.", field="end_by")
        if self.end_by is not None and self.end_by < self.start.date():
            raise RuleError("The end date is before the start date.", field="end_by")
        if self.unit == CRON:
            self._check_cron()
        elif self.every < 1:
            raise RuleError("Repeat at least every 1.", field="every")
        elif self.every > MAX_EVERY[self.unit]:
            raise RuleError(
                f"Repeat at most every {MAX_EVERY[self.unit]:,} {self.unit} (100 years).",
                field="every",
            )
        if any(not 0 <= w <= 6 for w in self.weekdays) or (
            self.weekday is not None and not 0 <= self.weekday <= 6
        ):
            raise RuleError("Weekdays are 0 (Monday) to 6 (Sunday).", field="weekdays")
        if self.day is not None and not 1 <= self.day <= 31:
            raise RuleError("The day of the month is 1 to 31.", field="day")
        if self.month is not None and not 1 <= self.month <= 12:
            raise RuleError("The month is 1 to 12.", field="month")
        if self.on_calendar_date not in ON_CALENDAR_DATE:
            raise RuleError(
                f"On a calendar date: {' or '.join(ON_CALENDAR_DATE)}, not "
                f"{self.on_calendar_date!r}.",
                field="on_calendar_date",
            )
        if self.nth is not None and self.nth not in NTH_WORDS:
            raise RuleError("Which weekday: first to fourth, or last.", field="nth")
        if self.unit in (MONTHS, YEARS):
            if self.day is not None and self.nth is not None:
                raise RuleError("Choose a day of the month or a weekday, not both.", field="day")
            if (self.nth is None) != (self.weekday is None):
                raise RuleError("Choose which weekday: first to fourth or last.", field="nth")
        if self.unit == YEARS and self.day is not None:
            month = self.month or self.start.month
            if self.day > (29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31):
                raise RuleError(f"{MONTH_ABBR[month - 1]} has no day {self.day}.", field="day")
        if self.next_after(self.anchor(), inclusive=True) is None:
            if self.calendar and self.next_after_plain(self.anchor(), inclusive=True):
                raise RuleError(
                    "Every occurrence falls on a date of the calendar"
                    + (" before the end date." if self.end_by is not None else "."),
                    field="calendar",
                )
            if self.end_by is not None:
                raise RuleError("This pattern does not occur before the end date.", field="end_by")
            raise RuleError(
                "This pattern never occurs.", field="cron" if self.unit == CRON else "unit"
            )

    def _check_cron(self) -> None:
        problem = cron_problem(self.cron)
        if problem:
            raise RuleError(problem, field="cron")

    # --- occurrences ----------------------------------------------------------------------

    @cached_property
    def tz(self) -> ZoneInfo:
        return zone(self.time_zone)

    def anchor(self) -> dt.datetime:
        """The start as an instant (UTC)."""
        return localize(self.start, self.tz)

    def occurrences(self, after: dt.datetime | None = None) -> Iterator[dt.datetime]:
        """Occurrences (UTC) strictly after ``after`` (all of them when None), in order.

        Bounded by End by, not by End after (that counts runs, see ``next_after``). With a
        calendar, those on its dates are skipped or moved (rule 5 of the module docstring).
        """
        if not self.calendar:
            yield from self._plain(after)
        elif self.on_calendar_date == SKIP:
            for t in self._plain(after):
                if self._local_date(t) not in self.calendar:
                    yield t
        else:
            last: dt.datetime | None = None
            for t in self._moved(self._plain(self._lookback(after))):
                # Two occurrences moved onto one time, or onto one of the pattern: run it once.
                if (after is None or t > after) and (last is None or t > last):
                    last = t
                    yield t

    def _local_date(self, t: dt.datetime) -> dt.date:
        return t.astimezone(self.tz).date()

    def move(self, t: dt.datetime) -> dt.datetime:
        """``t`` itself, or on a calendar date: the same local time on the next working day."""
        local = t.astimezone(self.tz)
        day = local.date()
        if day not in self.calendar:
            return t
        while day in self.calendar:  # ends: the calendar is finite
            day += dt.timedelta(days=1)
        return localize(dt.datetime.combine(day, local.time().replace(tzinfo=None)), self.tz)

    def _moved(self, times: Iterator[dt.datetime]) -> Iterator[dt.datetime]:
        """The pattern's occurrences with those on calendar dates moved, back in time order.

        A moved occurrence is later than the one it stands for, so it may have to wait behind
        the pattern's next ones: it waits in a heap until the pattern has passed it. ``times``
        is strictly increasing, so whatever in the heap is not after the current one is final.
        """
        heap: list[dt.datetime] = []
        pending: set[dt.datetime] = set()  # what the heap holds: many may move to one time
        for t in times:
            moved = self.move(t)
            if moved not in pending and not (
                self.end_by is not None and self._local_date(moved) > self.end_by
            ):
                pending.add(moved)
                heapq.heappush(heap, moved)
            while heap and heap[0] <= t:
                pending.discard(heap[0])
                yield heapq.heappop(heap)
        while heap:
            yield heapq.heappop(heap)

    def _lookback(self, after: dt.datetime | None) -> dt.datetime | None:
        """Where the pattern must be read from so that no occurrence moved past ``after`` is
        missed: from the start of the run of calendar dates just before ``after``'s date.

        An occurrence on date x moves to date y when x ... y-1 are all calendar dates; for it to
        land after ``after``, y is at least the day before ``after``'s local date (a zone that
        turns its clocks back at midnight repeats part of a date), so x lies in the run of
        calendar dates that reaches two days before it.
        """
        if after is None:
            return None
        day = after.astimezone(self.tz).date() - dt.timedelta(days=2)
        while day - dt.timedelta(days=1) in self.calendar:
            day -= dt.timedelta(days=1)
        return min(
            after, localize(dt.datetime.combine(day - dt.timedelta(days=1), dt.time()), self.tz)
        )

    def _plain(self, after: dt.datetime | None = None) -> Iterator[dt.datetime]:
        """The pattern's occurrences strictly after ``after``, calendar or not."""
        if self.unit in ELAPSED_UNITS:
            times = self._elapsed(after)
        else:
            times = (localize(t, self.tz) for t in self._local_times(after))
        last: dt.datetime | None = None
        for t in times:
            # Two local times in one DST gap land on the same instant: run it once.
            if (after is None or t > after) and (last is None or t > last):
                last = t
                yield t

    def _elapsed(self, after: dt.datetime | None) -> Iterator[dt.datetime]:
        anchor = self.anchor()
        step = ELAPSED_UNITS[self.unit] * self.every
        k = 0 if after is None or after < anchor else (after - anchor) // step + 1
        while True:
            t = anchor + k * step  # UTC arithmetic: the interval is real time
            if self.end_by is not None and t.astimezone(self.tz).date() > self.end_by:
                return
            yield t
            k += 1

    def _local_times(self, after: dt.datetime | None) -> Iterator[dt.datetime]:
        """The rule's local (naive) times, in order, from a little before ``after``."""
        since = self.start
        if after is not None:
            # Local times around a DST change do not follow instants one to one: start a day
            # early and let occurrences() drop what is not after ``after``.
            since = max(
                since, after.astimezone(self.tz).replace(tzinfo=None) - dt.timedelta(days=1)
            )
        horizon = since + dt.timedelta(days=366 * SEARCH_YEARS)
        if self.end_by is not None:
            horizon = min(horizon, dt.datetime.combine(self.end_by, dt.time.max))
        if self.unit == CRON:
            # Naive local times: croniter does wall-clock arithmetic and knows nothing of DST.
            it = croniter(self.cron, since - dt.timedelta(seconds=1))
            while True:
                try:
                    t: dt.datetime = it.get_next(dt.datetime)
                except CroniterError:
                    return  # no match for decades (the 31st of February)
                if t > horizon:
                    return
                if t >= self.start:
                    yield t
        else:
            for t in self._rrule(horizon).xafter(since, inc=True):
                yield t

    def _rrule(self, until: dt.datetime) -> rrule.rrule:
        start = self.start
        options: dict[str, object] = {}
        if self.unit == WEEKS:
            options["byweekday"] = self.weekdays or (start.weekday(),)
        elif self.unit in (MONTHS, YEARS):
            if self.nth is not None and self.weekday is not None:
                options["byweekday"] = _RRULE_WEEKDAYS[self.weekday](self.nth)
            else:
                options["bymonthday"] = self.day or start.day
            if self.unit == YEARS:
                options["bymonth"] = self.month or start.month
        return rrule.rrule(
            _RRULE_FREQ[self.unit],
            dtstart=start,
            interval=self.every,
            wkst=rrule.MO,
            until=until,
            **options,  # type: ignore[arg-type]
        )

    def next_after_plain(
        self, after: dt.datetime, *, inclusive: bool = False
    ) -> dt.datetime | None:
        """The pattern's next occurrence as if it had no calendar (for messages)."""
        return next(self._plain(after - TINY if inclusive else after), None)

    def plan(self, after: dt.datetime, n: int = 5, *, runs_done: int = 0) -> list[Planned]:
        """The next ``n`` runs at or after ``after``, with the occurrences the calendar skips
        or moves among them, in time order (what the Recurrence dialog previews).

        1. The runs are ``next_runs`` (so the preview and the engine agree); the last one is
           the horizon.
        2. The pattern's occurrences up to the horizon (from the lookback, for those moved
           past ``after``) are each a run, skipped, or moved; a moved one landing on a time
           that runs anyway is merged.
        """
        runs = self.next_runs(after, n, runs_done=runs_done)
        if not self.calendar or not runs:
            return [Planned(t, t) for t in runs]
        horizon = runs[-1]
        scanned = list(
            itertools.takewhile(
                lambda t: t <= horizon,
                itertools.islice(self._plain(self._lookback(after - TINY)), PLAN_SCAN_LIMIT),
            )
        )
        plain_runs = {t for t in scanned if self._local_date(t) not in self.calendar}
        landed: set[dt.datetime] = set()
        rows: list[Planned] = []
        for t in scanned:
            if t in plain_runs:
                if t >= after:
                    rows.append(Planned(t, t))
                continue
            moved = self.move(t)
            if self.on_calendar_date == SKIP or (
                self.end_by is not None and self._local_date(moved) > self.end_by
            ):
                if t >= after:
                    rows.append(Planned(t, None))  # skipped, or moved past End by: dropped
                continue
            if not after <= moved <= horizon:
                continue  # it ran before ``after``, or runs after the last run listed
            rows.append(Planned(t, moved, merged=moved in plain_runs or moved in landed))
            landed.add(moved)
        if len(scanned) == PLAN_SCAN_LIMIT:
            # A dense pattern over many calendar dates (every minute, a week off): the scan
            # stopped short of the horizon. The runs past it are listed plainly, unmarked.
            rows += [Planned(t, t) for t in runs if t > scanned[-1]]
        return sorted(rows, key=lambda p: (p.when, p.original))

    def runs_left(self, runs_done: int) -> int | None:
        if self.end_after is None:
            return None
        return max(self.end_after - runs_done, 0)

    def next_after(
        self, after: dt.datetime, *, runs_done: int = 0, inclusive: bool = False
    ) -> dt.datetime | None:
        """The next run strictly after ``after`` (at or after, if ``inclusive``); None when over."""
        if self.runs_left(runs_done) == 0:
            return None
        return next(self.occurrences(after - TINY if inclusive else after), None)

    def next_runs(self, after: dt.datetime, n: int = 5, *, runs_done: int = 0) -> list[dt.datetime]:
        """The next ``n`` runs at or after ``after``, as far as End after allows."""
        left = self.runs_left(runs_done)
        n = n if left is None else min(n, left)
        runs: list[dt.datetime] = []
        for t in self.occurrences(after - TINY):
            if len(runs) >= n:
                break
            runs.append(t)
        return runs

    def span(self, since: dt.datetime, until: dt.datetime, *, limit: int) -> Span | None:
        """Occurrences at or after ``since`` and at or before ``until``; counts stop at ``limit``."""
        first = last = None
        count = 0
        for t in self.occurrences(since - TINY):
            if t > until or count >= limit:
                break
            first = first or t
            last = t
            count += 1
        if first is None or last is None:
            return None
        return Span(first, last, count)

    # --- words ----------------------------------------------------------------------------

    def describe(self, *, runs_done: int = 0) -> str:
        """The rule in words, for the job list: "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo"."""
        clock = format_when(self.start.time(), "time s" if self.start.second else "time")
        zone_words = zone_label(self.time_zone)
        n = self.every
        if self.unit == CRON:
            words = f"{_describe_cron(self.cron)} ({zone_words})"
        elif self.unit in ELAPSED_UNITS:
            unit = self.unit[:-1]
            words = f"Every {unit}" if n == 1 else f"Every {n} {self.unit}"
            words += f" from {clock} {zone_words}"
        else:
            unit = {DAYS: "day", WEEKS: "week", MONTHS: "month", YEARS: "year"}[self.unit]
            words = f"Every {unit}" if n == 1 else f"Every {n} {unit}s"
            if self.unit == WEEKS:
                days = self.weekdays or (self.start.weekday(),)
                words += " on " + _and([WEEKDAYS[d].title() for d in sorted(days)])
            elif self.unit in (MONTHS, YEARS):
                month = MONTH_ABBR[(self.month or self.start.month) - 1]
                if self.nth is not None and self.weekday is not None:
                    words += f" on the {NTH_WORDS[self.nth]} {WEEKDAYS[self.weekday].title()}"
                    if self.unit == YEARS:
                        words += f" of {month}"
                elif self.unit == YEARS:
                    words += f" on {self.day or self.start.day} {month}"
                else:
                    words += f" on the {_ordinal(self.day or self.start.day)}"
            words += f" at {clock} {zone_words}"
        if self.calendar_name:
            if self.on_calendar_date == NEXT_DAY:
                words += f", on dates of calendar {self.calendar_name} the next working day"
            else:
                words += f", except on dates of calendar {self.calendar_name}"
        left = self.runs_left(runs_done)
        if left is not None:
            words += (
                ", no runs left" if left == 0 else f", {left} run{'' if left == 1 else 's'} left"
            )
        elif self.end_by is not None:
            words += (
                f", until {self.end_by.day} {MONTH_ABBR[self.end_by.month - 1]} {self.end_by.year}"
            )
        return words


# The shortcuts cron itself knows, as the five fields they stand for (@reboot is no time).
CRON_SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELDS = (
    ("minute", "minutes", 0, 59, ()),
    ("hour", "hours", 0, 23, ()),
    ("day of the month", "days of the month", 1, 31, ()),
    ("month", "months", 1, 12, tuple(m.lower() for m in MONTH_ABBR)),
    ("weekday", "weekdays", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_FIVE = "minute hour day-of-month month weekday"


def expand_cron(expression: str) -> str:
    """``expression`` with one space between fields, a shortcut (@daily) as its five fields."""
    text = " ".join(expression.split())
    return CRON_SHORTCUTS.get(text.lower(), text)


def cron_problem(expression: str) -> str | None:
    """What is wrong with a cron expression, in words a person can act on; None if it is a
    five-field expression croniter reads. "61 25 * * *" gives "Minute 61 is out of range:
    minutes are 0-59. Hour 25 is out of range: hours are 0-23."
    """
    fields = expression.split()
    if not fields:
        return f"Enter a cron expression: five fields, {_FIVE}, e.g. 0 22 * * 1-5."
    if fields[0].startswith("@"):
        known = ", ".join(CRON_SHORTCUTS)
        return f"{fields[0]} is not a cron shortcut: use one of {known}, or five fields."
    if len(fields) in (6, 7):
        # Quartz and Spring put seconds first (and Quartz a year last); cron has neither.
        five = " ".join(fields[1:6]).replace("?", "*")
        extra = "seconds first" + (" and a year last" if len(fields) == 7 else " or a year last")
        return (
            f"{'Six' if len(fields) == 6 else 'Seven'} fields: that is cron with {extra} "
            f"(Quartz, Spring). Here a cron expression has five fields, {_FIVE}, without "
            f"seconds: e.g. {five}."
        )
    if len(fields) != 5:
        return (
            f"A cron expression has five fields, {_FIVE}; this one has {len(fields)}: "
            "e.g. 0 22 * * 1-5 for 22:00 on weekdays."
        )
    problems = [p for f, spec in zip(fields, _CRON_FIELDS, strict=True) if (p := _field(f, *spec))]
    if problems:
        return " ".join(problems)
    if not croniter.is_valid(" ".join(fields)):
        return f"This is not a cron expression croniter can read: five fields, {_FIVE}."
    return None


def _field(
    text: str, name: str, plural: str, low: int, high: int, names: tuple[str, ...]
) -> str | None:
    """The first problem of one field ("61", "*/0", "1-99,5"), or None."""
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not numbers.whole(step):
            return f"The step /{step} of the {name} field is not a whole number above 0."
        if base == "*":
            continue
        for value in base.split("-", 1):
            low_value = value.lower()
            if names and low_value in names:
                continue
            number = numbers.whole(value)
            if number is None:
                hint = f" or a name ({names[0]}, {names[1]} ...)" if names else ""
                return f"{name.capitalize()} {value!r} is not a number{hint}."
            if not low <= number <= high:
                return f"{name.capitalize()} {value} is out of range: {plural} are {low}-{high}."
    return None


def _describe_cron(expression: str) -> str:
    options = CronOptions()
    options.use_24hour_time_format = True
    try:
        return str(ExpressionDescriptor(expression, options).get_description())
    except (FormatException, MissingFieldException):  # a row edited by hand (too few fields)
        return f"Cron {expression}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Window:
    """A time-of-day window in a zone (D365 active period).

    ``start`` after ``end`` crosses midnight (18:00-08:00); equal means all day. Start is
    inside, end is outside, as a server schedule row.
    """

    start: dt.time
    end: dt.time
    time_zone: str

    def is_open(self, at: dt.datetime) -> bool:
        t = at.astimezone(zone(self.time_zone)).time()
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def next_opening(self, at: dt.datetime) -> dt.datetime:
        """``at`` when the window is open, else the first instant after it at which it opens."""
        if self.is_open(at):
            return at
        tz = zone(self.time_zone)
        today = at.astimezone(tz).date()
        for days in range(3):
            opening = localize(dt.datetime.combine(today + dt.timedelta(days=days), self.start), tz)
            if opening > at:
                return opening
        raise AssertionError("a daily window opens within two days")  # pragma: no cover
