"""Deadlines of batch job runs: when one is due, and whether a run is at risk or has missed it.

Pure, no ORM (docs/alerts.md, "Deadlines"). A deadline is either a time of day in the job's zone
("must have ended by 06:00": the first 06:00 after the run's scheduled start, placed on the time
line as recurrence.localize places a wall-clock time) or a duration after the scheduled start
("within 2 h").

A run that has not ended is judged against its usual duration (the median of its last runs,
as the "Running long" alert measures it; None when there is too little history):

1. Missed: the deadline has passed and the run has not ended.
2. At risk, not started (no task of the run has started): the deadline is closer than its
   usual duration, or its scheduled start passed ``late_start`` ago.
3. At risk, running: it started too late to end in time at its usual pace (start + usual after
   the deadline), or it has run past its usual duration and less than that duration is left.
4. Otherwise on track. Without a usual duration a started run is on track until it misses.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from batchadmin.lib import durations
from batchadmin.lib.clock import format_when
from batchadmin.lib.recurrence import localize

MAX_WITHIN_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class Deadline:
    at: dt.time | None = None  # a time of day in the job's zone
    within: dt.timedelta | None = None  # after the scheduled start

    def __post_init__(self) -> None:
        if (self.at is None) == (self.within is None):
            raise ValueError("A deadline is a time of day or a duration, one of the two.")

    def due(self, scheduled: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """When the run scheduled at ``scheduled`` must have ended."""
        if self.within is not None:
            return scheduled + self.within
        assert self.at is not None
        local = scheduled.astimezone(tz)
        for days in range(3):
            wall = dt.datetime.combine(local.date() + dt.timedelta(days=days), self.at)
            due = localize(wall, tz)
            if due > scheduled:
                return due
        raise AssertionError("a time of day comes within two days")  # pragma: no cover

    def describe(self) -> str:
        """'must have ended by 06:00' / 'must have ended within 2 h'."""
        if self.at is not None:
            return f"must have ended by {format_when(self.at, 'time')}"
        assert self.within is not None
        return f"must have ended within {durations.whole(self.within.total_seconds())}"


class State(enum.Enum):
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    MISSED = "missed"


@dataclass(frozen=True)
class Judgement:
    state: State
    due: dt.datetime
    reason: str = ""


def judge(
    *,
    due: dt.datetime,
    scheduled: dt.datetime,
    started: dt.datetime | None,
    usual: dt.timedelta | None,
    at: dt.datetime,
    late_start: dt.timedelta,
    tz: ZoneInfo,
) -> Judgement:
    """The state of a run that has not ended (see the module's rules), with the reason; times
    in the reason are in ``tz``, the job's zone."""

    def clock(t: dt.datetime) -> str:
        return format_when(t.astimezone(tz), "time")

    when = format_when(due.astimezone(tz), "time tz")
    if at > due:
        late = durations.short(at - due)
        if started is None:
            return Judgement(State.MISSED, due, f"not started {late} after its deadline {when}")
        return Judgement(State.MISSED, due, f"still running {late} after its deadline {when}")
    pace = f"it usually takes {durations.short(usual)}" if usual else ""
    if started is None:
        if usual is not None and at + usual > due:
            return Judgement(
                State.AT_RISK, due, f"not started, and {pace}: it cannot end by {when}"
            )
        if at - scheduled >= late_start:
            return Judgement(
                State.AT_RISK,
                due,
                f"not started {durations.short(at - scheduled)} after its scheduled start; "
                f"deadline {when}",
            )
        return Judgement(State.ON_TRACK, due)
    if usual is None:
        return Judgement(State.ON_TRACK, due)
    if started + usual > due:
        return Judgement(
            State.AT_RISK,
            due,
            f"started at {clock(started)} and {pace}: "
            f"expected to end at {clock(started + usual)}, after {when}",
        )
    if at - started > usual and due - at < usual:
        return Judgement(
            State.AT_RISK,
            due,
            f"running {durations.short(at - started)}, longer than usual "
            f"({durations.short(usual)}), and {durations.short(due - at)} left before {when}",
        )
    return Judgement(State.ON_TRACK, due)
