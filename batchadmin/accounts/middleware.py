from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from batchadmin.accounts.models import UserPreference

SESSION_KEY = "batch_time_zone"


class TimezoneMiddleware:
    """Show times in the signed-in user's zone (their preference; UTC until they pick one)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            name = request.session.get(SESSION_KEY)
            if name is None:
                pref = UserPreference.objects.filter(user_id=request.user.pk).first()
                name = pref.time_zone if pref else "UTC"
                request.session[SESSION_KEY] = name
            timezone.activate(ZoneInfo(name))
        else:
            timezone.deactivate()
        return self.get_response(request)
