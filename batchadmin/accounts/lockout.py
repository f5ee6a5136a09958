"""Sign-in throttling's two hooks into django-axes: the client's address, and the page a
locked-out sign-in gets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from batchadmin.lib import durations


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """429 with the sign-in page's look, saying how long the lock lasts in words."""
    cooloff = durations.whole(settings.AXES_COOLOFF_TIME.total_seconds())
    return render(request, "registration/locked_out.html", {"cooloff": cooloff}, status=429)


def client_address(request: HttpRequest) -> str:
    """The address a sign-in came from (AXES_CLIENT_IP_CALLABLE).

    Behind BATCH_TRUSTED_PROXIES reverse proxies REMOTE_ADDR is the nearest proxy's, the same
    for everyone: the client is then the entry that many hops from the right of
    X-Forwarded-For (each proxy appends the address it got the request from). Entries further
    left are the client's to write, so they are never trusted.
    """
    proxies: int = settings.BATCH_TRUSTED_PROXIES
    if proxies:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return str(hops[-proxies])
    return str(request.META.get("REMOTE_ADDR", ""))
