from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from batchadmin.accounts.models import Theme, UserPreference
from batchadmin.lib import clock

# The signed-in user's preferences, read once per session (every page needs them).
SESSION_KEY = "batch_preferences"


def remember(request: HttpRequest, pref: UserPreference) -> dict[str, str]:
    """Keep ``pref`` in the session, where the next requests read it."""
    prefs = {"time_zone": pref.time_zone, "clock": pref.clock, "theme": pref.theme}
    request.session[SESSION_KEY] = prefs
    return prefs


class TimezoneMiddleware:
    """Show times in the signed-in user's zone and on their clock (their preferences; UTC and
    24 hours until they pick), and pages in their colours (``request.theme``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        prefs: dict[str, Any] = {}
        if request.user.is_authenticated:
            prefs = request.session.get(SESSION_KEY) or {}
            if "theme" not in prefs:
                pref = UserPreference.objects.filter(user_id=request.user.pk).first()
                prefs = remember(request, pref or UserPreference())
            timezone.activate(ZoneInfo(prefs["time_zone"]))
        else:
            timezone.deactivate()
        request.theme = prefs.get("theme", Theme.AUTO)  # type: ignore[attr-defined]
        with clock.clock_in_force(prefs.get("clock", clock.CLOCK_24)):
            return self.get_response(request)
