"""Request types for views (django-htmx's typing recipe)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


class AuthedRequest(HtmxHttpRequest):
    """LoginRequiredMiddleware guarantees a signed-in user on every view but the login page."""

    user: User
