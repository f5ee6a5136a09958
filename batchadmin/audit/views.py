"""The audit trail's pages: every entry a user may see, filtered; and a job's latest entries
for its page. Read only: nothing here (or anywhere) changes an entry.

Who sees what: managers and viewers (who see every job) see every entry, settings included;
a batch user sees the entries of the jobs they may see, and nothing else.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from batchadmin.audit.models import Action, AuditEntry
from batchadmin.jobs import access
from batchadmin.lib import clock
from batchadmin.lib.http import AuthedRequest

PAGE_SIZE = 50
JOB_PAGE_ENTRIES = 10  # on the job page; the link leads to the rest


def visible_entries(user: Any) -> QuerySet[AuditEntry]:
    entries = AuditEntry.objects.all()
    if access.can_view_all(user):
        return entries
    if access.can_create(user):  # a batch user: the entries of the jobs they may see
        return entries.filter(job_id__in=access.visible_jobs(user).values("pk"))
    return entries.none()


class AuditFilterForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.order_by("username"),
        required=False,
        empty_label="Anyone",
        to_field_name="username",
    )
    action = forms.ChoiceField(choices=[("", "Any action"), *Action.choices], required=False)
    job = forms.IntegerField(label="Batch job ID", min_value=1, required=False)
    since = clock.DateTimeField(label="From", required=False)
    until = clock.DateTimeField(label="To", required=False)

    def filter(self, entries: QuerySet[AuditEntry]) -> QuerySet[AuditEntry]:
        data = self.cleaned_data
        if data.get("user"):
            entries = entries.filter(user_id=data["user"].pk)
        if data.get("action"):
            entries = entries.filter(action=data["action"])
        if data.get("job"):
            entries = entries.filter(job_id=data["job"])
        if data.get("since"):
            entries = entries.filter(at__gte=data["since"])
        if data.get("until"):
            entries = entries.filter(at__lte=data["until"])
        return entries


@require_GET
def audit_list(request: AuthedRequest) -> HttpResponse:
    """The audit trail: newest first, filtered by user, action, job and time, 50 a page."""
    if not access.roles(request.user) and not access.is_manager(request.user):
        raise PermissionDenied("The audit trail is for users with a batch role.")
    form = AuditFilterForm(request.GET or None)
    entries = visible_entries(request.user).select_related("job")
    if form.is_bound:
        entries = form.filter(entries) if form.is_valid() else entries.none()
    page = Paginator(entries.order_by("-at", "-pk"), PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "nav": "audit",
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "sees_all": access.can_view_all(request.user),
    }
    return render(request, "audit/audit_list.html", context)


@require_GET
def job_audit(request: AuthedRequest, pk: int) -> HttpResponse:
    """The latest entries of one job, for the job page (loaded after it, refreshed when the job
    changes)."""
    job = get_object_or_404(access.visible_jobs(request.user), pk=pk)
    entries = AuditEntry.objects.of_job(job.pk).order_by("-at", "-pk")[: JOB_PAGE_ENTRIES + 1]
    rows = list(entries)
    context = {"job": job, "entries": rows[:JOB_PAGE_ENTRIES], "more": len(rows) > JOB_PAGE_ENTRIES}
    return render(request, "audit/_job_audit.html", context)
