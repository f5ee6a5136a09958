"""The dates batchadmin accepts, and how it reads one that is out of range anyway.

Every date and time a person, a file, the API or the command line gives is bounded to
``EARLIEST`` .. ``LATEST`` (years 2000 to 9000): far wider than any schedule, and far enough
inside Python's years 1 to 9999 that converting to any time zone, adding a recurrence step or
a year of look-ahead never overflows. PostgreSQL holds far more (4713 BC to 294276 AD), so a
row written before the bounds, or by hand, may still hold year 10000 or 1 BC, which psycopg
refuses to read: every page and beat's tick that loads it would fail. ``install`` makes such a
value read as the nearest edge Python can show (``READ_AS_LATEST``, ``READ_AS_EARLIEST``), so
readers live and the tick can find and withhold the job (tick.handle_out_of_range_starts).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import ValidationError

EARLIEST = dt.date(2000, 1, 1)
LATEST = dt.date(9000, 12, 31)
# The instants a database query compares against (the edges in UTC).
EARLIEST_INSTANT = dt.datetime.combine(EARLIEST, dt.time(), tzinfo=dt.UTC)
LATEST_INSTANT = dt.datetime.combine(LATEST, dt.time.max, tzinfo=dt.UTC)
# What an unreadable stored value reads as: a day inside Python's range, so that it converts to
# every zone, and plainly not a real schedule.
READ_AS_EARLIEST = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
READ_AS_LATEST = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
RANGE_TEXT = f"from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}"


def in_range(value: dt.date | dt.datetime) -> bool:
    day = value.date() if isinstance(value, dt.datetime) else value
    return EARLIEST <= day <= LATEST


def problem(value: dt.date | dt.datetime, field: str) -> str:
    """The message for ``field`` holding ``value``, or "" when it is in range."""
    if in_range(value):
        return ""
    return f"{field} {value.isoformat()} is out of range: dates go {RANGE_TEXT}."


def validate(value: dt.date | dt.datetime | None) -> None:
    """A form or model field validator (the field's label goes with the error on the page)."""
    if value is not None and not in_range(value):
        raise ValidationError(f"Enter a date {RANGE_TEXT}.", code="date_out_of_range")


# --- reading what is stored ------------------------------------------------------------------


def install(connection: Any) -> None:
    """Read timestamptz and date values beyond Python's years (psycopg raises DataError for
    them) as the edges above, on ``connection`` (Django's PostgreSQL wrapper, after connect)."""
    from django.db.backends.postgresql.psycopg_any import (  # type: ignore[import-untyped]
        BaseTzLoader,
    )
    from psycopg import DataError
    from psycopg.types.datetime import DateLoader

    class EdgeTzLoader(BaseTzLoader):  # type: ignore[misc]
        timezone = connection.timezone  # what Django's own loader sets (create_cursor checks it)

        def load(self, data: Any) -> dt.datetime:
            try:
                return super().load(data)  # type: ignore[no-any-return]
            except DataError:
                early = bytes(data).endswith(b"BC")
                return (READ_AS_EARLIEST if early else READ_AS_LATEST).astimezone(self.timezone)

    class EdgeDateLoader(DateLoader):
        def load(self, data: Any) -> dt.date:
            try:
                return super().load(data)
            except DataError:
                early = bytes(data).endswith(b"BC")
                return (READ_AS_EARLIEST if early else READ_AS_LATEST).date()

    adapters = connection.connection.adapters
    adapters.register_loader("timestamptz", EdgeTzLoader)
    adapters.register_loader("date", EdgeDateLoader)
