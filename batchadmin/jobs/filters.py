from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet
from django_filters.widgets import DateRangeWidget

from batchadmin.jobs.models import (
    BatchJob,
    BatchJobQuerySet,
    BatchJobRun,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    Company,
)
from batchadmin.lib import clock
from batchadmin.processes import registry
from batchadmin.servers.models import BatchGroup, BatchServer

# How a run can end (or that it is still going): the choices of the Last run filter.
LAST_RUN_STATUSES = (
    BatchStatus.EXECUTING,
    BatchStatus.CANCELING,
    BatchStatus.ERROR,
    BatchStatus.ENDED,
    BatchStatus.CANCELED,
)


# A job whose last run failed and that waits (or is held) for its next run. The status test
# comes first so the last run's subquery runs for those jobs only, not for every job.
LAST_RUN_FAILED = Q(status__in=[BatchStatus.WAITING, BatchStatus.WITHHOLD]) & Q(
    last_run_status=BatchStatus.ERROR
)


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
        method="filter_status",
        help_text="Error also finds jobs whose last run failed and that wait for their next run.",
    )
    # Per-column filters (the row under the list's headers).
    id = django_filters.NumberFilter(field_name="pk", label="Job ID", min_value=1)
    priority = django_filters.ChoiceFilter(
        choices=BatchJob.Priority.choices,
        label="Priority",
        empty_label="Any",
        method="filter_priority",
    )
    recurring = django_filters.BooleanFilter(
        field_name="recurrence",
        lookup_expr="isnull",
        exclude=True,
        label="Recurrence",
        widget=forms.Select(choices=[("", "Any"), ("true", "Recurring"), ("false", "Once")]),
    )
    last_run = django_filters.ChoiceFilter(
        choices=[(s, BatchStatus(s).label) for s in LAST_RUN_STATUSES],
        field_name="last_run_status",
        label="Last run",
        empty_label="Any",
    )
    description = django_filters.CharFilter(lookup_expr="icontains", label="Description contains")
    created_by = django_filters.ModelChoiceFilter(
        queryset=get_user_model().objects.order_by("username"),
        label="Created by",
        empty_label="Created by anyone",
    )
    run_as = django_filters.ModelChoiceFilter(
        queryset=get_user_model().objects.order_by("username"),
        label="Run by",
        empty_label="Run by anyone",
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
            ("status_rank", "status"),  # the lifecycle's order, not the alphabet
            ("scheduled_start", "scheduled_start"),
            ("started_at", "started_at"),
            ("ended_at", "ended_at"),
            ("priority", "priority"),
            ("created_by__username", "created_by"),
            ("run_as__username", "run_as"),
            ("last_run_ended", "last_run_ended"),
        )
    )

    class Meta:
        model = BatchJob
        fields: list[str] = []

    # The filters in the row under the list's headers: inside the live table, so they belong
    # to the filter form by its id, survive the table's refresh (hx-preserve), and a choice
    # applies at once (app.js, data-autosubmit).
    COLUMN_FILTERS = (
        "id",
        "description",
        "last_run",
        "created_by",
        "run_as",
        "priority",
        "recurring",
    )

    def __init__(
        self, data: Any = None, queryset: BatchJobQuerySet | None = None, **kwargs: Any
    ) -> None:
        # The status, Has errors and Last run filters and the status sort read the last run
        # and the lifecycle rank: annotated here, so every caller (the list, its exports, the
        # API's job list) filters the same way.
        if queryset is not None and "status_rank" not in queryset.query.annotations:
            queryset = queryset.with_last_run().with_status_rank()
        super().__init__(data, queryset, **kwargs)
        for name in self.COLUMN_FILTERS:
            attrs = self.form.fields[name].widget.attrs
            attrs.update({"form": "job-filters", "hx-preserve": "true"})
            if name not in ("id", "description"):
                attrs["data-autosubmit"] = "true"
        self.form.fields["description"].widget.attrs["placeholder"] = "contains…"
        self.form.fields["id"].widget.attrs["placeholder"] = "ID"

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
        # A recurring job whose run failed is back in Waiting with its tasks reset: its last
        # run (BatchJobQuerySet.with_last_run) still says Error.
        return qs.filter(Q(status=BatchStatus.ERROR) | Exists(failed) | LAST_RUN_FAILED)

    def filter_status(self, qs: QuerySet[BatchJob], name: str, value: Any) -> QuerySet[BatchJob]:
        if not value:
            return qs
        wanted = Q(status__in=value)
        if BatchStatus.ERROR in value:
            wanted |= LAST_RUN_FAILED
        return qs.filter(wanted)

    def filter_priority(self, qs: QuerySet[BatchJob], name: str, value: Any) -> QuerySet[BatchJob]:
        if not value:
            return qs
        # Only a job that overrides its groups' priority has one of its own.
        return qs.filter(priority_overridden=True, priority=int(value))


# --- The Batch job history and Batch tasks inquiries (jobs/inquiries.py) -------------------

# What a run or an attempt can be: it has started, so never Withhold, Waiting or Ready.
RUN_STATUSES = [
    (s.value, s.label)
    for s in (
        BatchStatus.EXECUTING,
        BatchStatus.CANCELING,
        BatchStatus.ENDED,
        BatchStatus.ERROR,
        BatchStatus.CANCELED,
    )
]


class ClockDateTimeFilter(django_filters.DateTimeFilter):  # type: ignore[misc]  # untyped
    """A date and time typed as the pages write them (lib/clock.py), in the user's zone."""

    field_class = clock.DateTimeField


def _users() -> QuerySet[Any]:
    return get_user_model().objects.order_by("username")


def _process_choices() -> list[tuple[str, str]]:
    return [(p.name, f"{p.label} ({p.name})") for p in registry.all_processes()]


class _InquiryFilter(django_filters.FilterSet):  # type: ignore[misc]  # untyped package
    """What both inquiries filter on. The filters about attempts (group, server, class name,
    error) go through ``attempt_exists``: the attempt itself for Batch tasks, "a run with an
    attempt that ..." (EXISTS) for Batch job history. A base class for two: the alternative was
    the same eleven filters written twice."""

    status = django_filters.MultipleChoiceFilter(
        choices=RUN_STATUSES,
        widget=forms.CheckboxSelectMultiple,
        label="Status",
        distinct=False,
    )
    job = django_filters.NumberFilter(field_name="job_id", label="Job ID", min_value=1)
    description = django_filters.CharFilter(
        field_name="job__description", lookup_expr="icontains", label="Job description contains"
    )
    group = django_filters.ModelChoiceFilter(
        queryset=BatchGroup.objects.all(),
        method="filter_group",
        label="Batch group",
        empty_label="Any group",
    )
    server = django_filters.ModelChoiceFilter(
        queryset=BatchServer.objects.order_by("name"),
        method="filter_server",
        label="Batch server",
        empty_label="Any server",
    )
    process = django_filters.ChoiceFilter(
        choices=_process_choices,
        method="filter_process",
        label="Class name",
        empty_label="Any process",
    )
    company = django_filters.ModelChoiceFilter(
        queryset=Company.objects.all(),
        method="filter_company",
        label="Company",
        empty_label="Any company",
    )
    run_by = django_filters.ModelChoiceFilter(
        queryset=_users(), method="filter_run_by", label="Run by", empty_label="Anyone"
    )
    started_after = ClockDateTimeFilter(
        field_name="started_at", lookup_expr="gte", label="Started from"
    )
    started_before = ClockDateTimeFilter(
        field_name="started_at", lookup_expr="lt", label="Started before"
    )
    error = django_filters.CharFilter(method="filter_error", label="Error contains")

    def filter_group(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        return qs.filter(self.attempt_exists(task__group=value)) if value else qs

    def filter_server(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        return qs.filter(self.attempt_exists(server=value)) if value else qs

    def filter_process(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        return qs.filter(self.attempt_exists(task__process=value)) if value else qs

    def filter_error(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        if not value:
            return qs
        # A non-empty term never matches an empty message, so "<> ''" changes no result; it
        # lets PostgreSQL use the trigram index, which holds only failed attempts' messages
        # (partial, jobs.0025: a successful attempt's writes skip it).
        return qs.filter(self.attempt_exists(~Q(error_message=""), error_message__icontains=value))

    def attempt_exists(self, *conditions: Q, **lookups: Any) -> Any:
        raise NotImplementedError


class RunFilter(_InquiryFilter):
    """Batch job history: every run of every job the user may see."""

    o = django_filters.OrderingFilter(
        fields=(
            ("id", "id"),
            ("job_id", "job"),
            ("job__description", "description"),
            ("status", "status"),
            ("started_at", "started_at"),
            ("ended_at", "ended_at"),
            ("took", "duration"),
            ("run_by__username", "run_by"),
        )
    )

    class Meta:
        model = BatchJobRun
        fields: list[str] = []

    def attempt_exists(self, *conditions: Q, **lookups: Any) -> Any:
        # EXISTS, not a join: a run with many matching attempts must appear once.
        return Exists(BatchTaskRun.objects.filter(*conditions, job_run=OuterRef("pk"), **lookups))

    def filter_company(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        if not value:
            return qs
        # D365: a task without a company runs in its job's.
        return qs.filter(Q(job__company=value) | self.attempt_exists(task__company=value))

    def filter_run_by(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        return qs.filter(run_by=value) if value else qs


class AttemptFilter(_InquiryFilter):
    """Batch tasks: every attempt of every task of the jobs the user may see."""

    job = django_filters.NumberFilter(field_name="job_run__job_id", label="Job ID", min_value=1)
    description = django_filters.CharFilter(
        field_name="job_run__job__description",
        lookup_expr="icontains",
        label="Job description contains",
    )
    o = django_filters.OrderingFilter(
        fields=(
            ("id", "id"),
            ("job_run__job_id", "job"),
            ("task__key", "task"),
            ("status", "status"),
            ("server__name", "server"),
            ("started_at", "started_at"),
            ("ended_at", "ended_at"),
            ("took", "duration"),
            ("wait", "wait"),
        )
    )

    class Meta:
        model = BatchTaskRun
        fields: list[str] = []

    def attempt_exists(self, *conditions: Q, **lookups: Any) -> Any:
        return Q(*conditions, **lookups)  # the attempt itself

    def filter_company(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        if not value:
            return qs
        return qs.filter(
            Q(task__company=value) | Q(task__company=None, job_run__job__company=value)
        )

    def filter_run_by(self, qs: QuerySet[Any], name: str, value: Any) -> QuerySet[Any]:
        return qs.filter(job_run__run_by=value) if value else qs
