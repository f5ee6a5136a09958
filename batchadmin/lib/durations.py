"""Durations in words an administrator reads at a glance."""

from __future__ import annotations

import datetime as dt


def short(delta: dt.timedelta | None) -> str:
    """'850 ms', '42 s', '3 min 05 s', '2 h 07 min', '3 d 04 h'."""
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds < 0:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def whole(seconds: float) -> str:
    """A set length, such as a limit, in its units: '30 s', '5 min', '1 h 30 min', '7 d'."""
    if seconds < 1:
        return f"{seconds:g} s"
    rest = round(seconds)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, sec = divmod(rest, 60)
    units = ((days, "d"), (hours, "h"), (minutes, "min"), (sec, "s"))
    return " ".join(f"{n} {unit}" for n, unit in units if n)
