"""The system's own upkeep, as batch processes: D365's "Batch job history clean-up".

A migration (jobs 0005) seeds a recurring job that runs it daily at 02:00 UTC; operators
change its schedule, limit and filters on the batch job page like any other job.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils.timezone import now

from batchadmin.accounts.models import MANAGER
from batchadmin.jobs import history
from batchadmin.processes.registry import Context, register


class HistoryCleanupForm(forms.Form):
    keep_days = forms.IntegerField(
        label="History limit (days)",
        min_value=1,
        max_value=36_500,
        initial=30,
        help_text="Job runs that ended more than this many days ago are deleted, with their "
        "task attempts and log lines.",
    )
    statuses = forms.MultipleChoiceField(
        label="Runs that ended in",
        choices=[(s.value, s.label) for s in history.CLEANUP_STATUSES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Records to include: only runs with these statuses. None ticked: all.",
    )
    description = forms.CharField(
        label="Job description contains",
        max_length=200,
        required=False,
        help_text="Only jobs whose description contains this (any case). Empty: all jobs.",
    )
    audit_keep_days = forms.IntegerField(
        label="Audit trail limit (days)",
        min_value=1,
        max_value=36_500,
        required=False,
        help_text="Audit entries (who did what, and why) older than this many days are deleted "
        "too, whatever the filters above. Empty: the audit trail is kept for good.",
    )
    other_records = forms.BooleanField(
        label="Include other records",
        required=False,
        initial=True,
        help_text="Also delete job status changes, missed-occurrence records and delivered "
        "alerts (with their notifications, read or not) older than the limit, whatever their "
        "status.",
    )


@register(
    history.CLEANUP_PROCESS,
    label="Batch job history clean-up",
    description="Deletes batch job history (runs, task attempts, log lines) older than the "
    "history limit, a chunk per transaction; stops between chunks when canceled.",
    form=HistoryCleanupForm,
    # It deletes every user's history and audit trail: upkeep is the managers' (issue 13).
    run_by=MANAGER,
)
def history_cleanup(
    ctx: Context,
    *,
    keep_days: int,
    statuses: list[str],
    description: str,
    other_records: bool,
    audit_keep_days: int | None = None,
) -> None:
    before = now() - dt.timedelta(days=keep_days)
    scope = []
    if statuses:
        labels = {s.value: str(s.label) for s in history.CLEANUP_STATUSES}
        scope.append("runs that ended " + " or ".join(labels[s] for s in statuses))
    if description:
        scope.append(f"jobs whose description contains {description!r}")
    ctx.info(
        f"Deleting history that ended before {before.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
        + (f": {'; '.join(scope)}." if scope else ".")
    )
    result = history.clean_up(
        before=before,
        statuses=statuses,
        description=description,
        other_records=other_records,
        should_stop=ctx.cancel_requested,
        progress=ctx.progress,
    )
    if result.canceled:
        ctx.warning(f"Canceled. {result.describe()} The rest is left for the next run.")
        return
    if audit_keep_days:
        limit = now() - dt.timedelta(days=audit_keep_days)
        deleted = history.clean_up_audit(before=limit, should_stop=ctx.cancel_requested)
        ctx.info(
            f"Deleted {deleted:,} audit entr{'y' if deleted == 1 else 'ies'} older than "
            f"{limit.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC."
        )
    else:
        ctx.info(result.describe())
