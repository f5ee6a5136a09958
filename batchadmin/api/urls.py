"""/api/: the REST API (api/views.py), its OpenAPI document and its interactive docs."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.urls import URLPattern, URLResolver, re_path

from batchadmin.api import views


def _token_or_public(patterns: list[Any]) -> list[Any]:
    """The API answers with its own 401 (token auth), so LoginRequiredMiddleware, which would
    redirect to the sign-in page, must let its views through; the docs need no sign-in."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _token_or_public(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            login_not_required(pattern.callback)
    return patterns


@login_not_required
def unknown(request: Any, path: str) -> Any:
    return views._error(request, 404, f"There is no API endpoint /api/{path}.")


patterns, _, _ = views.api.urls
app_name = views.api.urls_namespace  # "api": the OpenAPI view reverses api:api-root
urlpatterns = [*_token_or_public(list(patterns)), re_path(r"^(?P<path>.*)$", unknown)]
