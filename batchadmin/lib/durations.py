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
