from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from django import template
from django.http import QueryDict
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import now

from batchadmin.jobs import access
from batchadmin.jobs.models import BatchStatus
from batchadmin.lib import clock, durations

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
    query.pop("v", None)  # the live table's version (jobs/live.py)
    if current == field:
        query["o"], arrow, sort = f"-{field}", " ▲", "ascending"
    elif current == f"-{field}":
        query["o"], arrow, sort = field, " ▼", "descending"
    else:
        query["o"], arrow, sort = field, "", "none"
    return format_html(
        '<th aria-sort="{}"><a href="?{}">{}{}</a></th>', sort, query.urlencode(), label, arrow
    )


@register.filter
def status_label(status: str | None) -> str:
    """A status value's label ("not_run" -> "Didn't run"), for values read without their
    model (an annotation such as the job list's last run)."""
    return str(BatchStatus(status).label) if status in BatchStatus.values else (status or "")


@register.simple_tag
def status_badge(status: str, label: str = "") -> SafeString:
    # A simple tag, not an inclusion tag: a grid shows hundreds of badges, and rendering a
    # template for each was a fifth of a big job's page (bench/pages.py).
    return format_html('<span class="badge status-{}">{}</span>', status, label or status)


@register.filter
def has_batch_role(user: Any) -> bool:
    """Whether ``user`` has any batch role (the pages' nav links; without one they see 403)."""
    return access.is_manager(user) or bool(access.roles(user))


@register.filter
def is_batch_manager(user: Any) -> bool:
    """Whether ``user`` has the Batch job manager role (the setup pages' nav links)."""
    return access.is_manager(user)


@register.filter(expects_localtime=True)
def when(value: Any, spec: str = "") -> str:
    """A date or time in the one format (lib/clock.py): ``{{ job.started_at|when:"s" }}``."""
    return clock.format_when(value, spec)


@register.filter
def zone_label(name: Any) -> str:
    """A zone as pages spell it: "America/New York"."""
    return clock.zone_label(str(name)) if name else ""


@register.simple_tag
def zone_list() -> SafeString:
    """The <datalist> the time-zone inputs suggest from (lib/clock.ZoneInput)."""
    return _zone_list()


@functools.cache
def _zone_list() -> SafeString:
    options = format_html_join(
        "", '<option value="{}"></option>', ((clock.zone_label(z),) for z in clock.picker_zones())
    )
    return format_html('<datalist id="zone-list">{}</datalist>', options)
