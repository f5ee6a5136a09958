from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet
from django_filters.widgets import DateRangeWidget

from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.lib import clock
from batchadmin.servers.models import BatchGroup


class JobFilter(django_filters.FilterSet):  # type: ignore[misc]  # untyped package
    """The Batch jobs list's filters; all of them live in the query string."""

    # distinct=False: status IN (...) on the job's own column cannot repeat a row, and the
    # DISTINCT django-filter adds by default made PostgreSQL sort every matching job twice
    # (page and count): 1 s p95 with 100,000 jobs (bench/pages.py).
    status = django_filters.MultipleChoiceFilter(
        choices=BatchStatus.choices,
        widget=forms.CheckboxSelectMultiple,
        label="Status",
        distinct=False,
    )
    description = django_filters.CharFilter(lookup_expr="icontains", label="Description contains")
    created_by = django_filters.ModelChoiceFilter(
        queryset=get_user_model().objects.order_by("username"),
        label="Created by",
        empty_label="Anyone",
    )
    run_as = django_filters.ModelChoiceFilter(
        queryset=get_user_model().objects.order_by("username"),
        label="Run by",
        empty_label="Anyone",
    )
    group = django_filters.ModelChoiceFilter(
        queryset=BatchGroup.objects.all(),
        method="filter_group",
        label="Batch group",
        empty_label="Any group",
    )
    scheduled = django_filters.DateFromToRangeFilter(
        field_name="scheduled_start",
        label="Scheduled between",
        # ISO dates as text, as every date on the pages (lib/clock.py), not the browser's
        # control, which writes them in the browser language's order.
        widget=DateRangeWidget(attrs=clock.DateInput().attrs),
    )
    has_errors = django_filters.BooleanFilter(
        method="filter_has_errors",
        label="Has errors",
        widget=forms.CheckboxInput,
    )
    o = django_filters.OrderingFilter(
        fields=(
            ("id", "id"),
            ("description", "description"),
            ("status", "status"),
            ("scheduled_start", "scheduled_start"),
            ("started_at", "started_at"),
            ("ended_at", "ended_at"),
            ("priority", "priority"),
            ("created_by__username", "created_by"),
            ("run_as__username", "run_as"),
        )
    )

    class Meta:
        model = BatchJob
        fields: list[str] = []

    def filter_group(self, qs: QuerySet[BatchJob], name: str, value: Any) -> QuerySet[BatchJob]:
        if not value:
            return qs
        # EXISTS, not a join: a job with many tasks in the group must appear once.
        return qs.filter(Exists(BatchTask.objects.filter(job=OuterRef("pk"), group=value)))

    def filter_has_errors(
        self, qs: QuerySet[BatchJob], name: str, value: Any
    ) -> QuerySet[BatchJob]:
        if not value:
            return qs
        failed = BatchTask.objects.filter(job=OuterRef("pk"), status=BatchStatus.ERROR)
        return qs.filter(Q(status=BatchStatus.ERROR) | Exists(failed))
