from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.http import QueryDict
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timezone import now

from batchadmin.jobs import access
from batchadmin.lib import durations

register = template.Library()


@register.filter
def duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """Time from start to end; to now while it is still running."""
    if start is None:
        return ""
    return durations.short((end or now()) - start)


@register.simple_tag(takes_context=True)
def sort_th(context: dict[str, Any], field: str, label: str) -> SafeString:
    """A column header that sorts by ``field``; a second click reverses the order."""
    request = context["request"]
    query = request.GET.copy() if isinstance(request.GET, QueryDict) else QueryDict(mutable=True)
    current = query.get("o", "")
    query.pop("page", None)
    query.pop("poll", None)
    if current == field:
        query["o"], arrow, sort = f"-{field}", " ▲", "ascending"
    elif current == f"-{field}":
        query["o"], arrow, sort = field, " ▼", "descending"
    else:
        query["o"], arrow, sort = field, "", "none"
    return format_html(
        '<th aria-sort="{}"><a href="?{}">{}{}</a></th>', sort, query.urlencode(), label, arrow
    )


@register.simple_tag
def status_badge(status: str, label: str = "") -> SafeString:
    # A simple tag, not an inclusion tag: a grid shows hundreds of badges, and rendering a
    # template for each was a fifth of a big job's page (bench/pages.py).
    return format_html('<span class="badge status-{}">{}</span>', status, label or status)


@register.filter
def is_batch_manager(user: Any) -> bool:
    """Whether ``user`` has the Batch job manager role (the setup pages' nav links)."""
    return access.is_manager(user)
