"""Request types for views (django-htmx's typing recipe) and the dialogs' two responses."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django_htmx.http import trigger_client_event
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


class AuthedRequest(HtmxHttpRequest):
    """LoginRequiredMiddleware guarantees a signed-in user on every view but the login page."""

    user: User


def render_dialog(
    request: HtmxHttpRequest, template: str, context: dict[str, Any], *, nav: str
) -> HttpResponse:
    """A dialog's content for #dialog, or the same form as a page of its own without htmx."""
    if request.htmx:
        template += "#dialog"
    return render(request, template, {"nav": nav} | context)


def close_dialog(request: HtmxHttpRequest, event: str, to: str, *args: Any) -> HttpResponse:
    """After a change: close the dialog and send ``event`` so the page refreshes what changed
    (its notice inside); without htmx, go back to the page ``to`` names."""
    if not request.htmx:
        return redirect(to, *args)
    response = HttpResponse()
    trigger_client_event(response, "dialog-close")
    trigger_client_event(response, event)
    return response
