"""A throttle for tick handlers: run at most once per a setting's number of seconds."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from django.conf import settings

log = logging.getLogger(__name__)


class Every:
    """Lets a tick handler run at most once per ``setting`` seconds in this (beat) process.

    A clock that went back (another beat's time, a test) runs it at once.
    """

    def __init__(self, setting: str, *, logger: logging.Logger | None = None) -> None:
        self.setting = setting
        self.last: dt.datetime | None = None
        # The owner's logger: a failure is reported under the module whose check failed.
        self.log = logger or log

    def ready(self, at: dt.datetime) -> bool:
        period = dt.timedelta(seconds=getattr(settings, self.setting))
        if self.last is not None and self.last <= at < self.last + period:
            return False
        self.last = at
        return True

    def reset(self) -> None:
        self.last = None

    def run(self, at: dt.datetime, check: Callable[[dt.datetime], int], what: str) -> int:
        """``check(at)`` when its period is over; 0 otherwise, and when it fails: a throttled
        handler (alerts) must never stop the engine's tick, and the next period tries again."""
        if not self.ready(at):
            return 0
        try:
            return check(at)
        except Exception:
            self.log.exception("%s failed", what)
            return 0
