"""Processes a company would schedule: a CSV report to the media folder, a document by e-mail."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.core.validators import validate_email
from django.db.models.functions import Lower
from django.utils.timezone import now

from batchadmin.jobs import access
from batchadmin.lib import spreadsheet
from batchadmin.processes.registry import Context, register

REPORTS_DIR = "reports"
REPORT_JOB = re.compile(r"-job(\d+)-")  # the job in a report's file name


def split_addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def not_allowed(addresses: list[str]) -> list[str]:
    """The addresses a document may not go to: only users' own addresses (active users) and
    the domains of settings.BATCH_MAIL_ALLOWED_DOMAINS are allowed (issue 13)."""
    domains = set(settings.BATCH_MAIL_ALLOWED_DOMAINS)
    outside = [a for a in addresses if a.rpartition("@")[2].lower() not in domains]
    if not outside:
        return []
    known = {
        e.lower()
        for e in get_user_model()
        .objects.filter(is_active=True)
        .exclude(email="")
        .annotate(lower_email=Lower("email"))
        .filter(lower_email__in=[a.lower() for a in outside])
        .values_list("email", flat=True)
    }
    return [a for a in outside if a.lower() not in known]


class HistoryReportForm(forms.Form):
    days = forms.IntegerField(
        min_value=1,
        max_value=3650,
        initial=1,
        help_text="Task attempts of the last N days.",
    )
    errors_only = forms.BooleanField(required=False, help_text="Only attempts that ended in Error.")


class MailDocumentForm(forms.Form):
    to = forms.CharField(
        max_length=1000,
        help_text="Recipients, separated by commas: users of this system, or addresses in the "
        "domains the deployment allows.",
        initial="finance@example.com",
    )
    subject = forms.CharField(max_length=200, initial="Your batch report")
    document = forms.CharField(
        max_length=300,
        initial="latest",
        help_text="A file under the media folder, or 'latest' for this job's newest report.",
    )
    body = forms.CharField(required=False, widget=forms.Textarea, max_length=5000)

    def clean_to(self) -> str:
        # Stored as the normalised text the form accepts again when the task runs, so the
        # allowed addresses are checked at save and again at every attempt.
        addresses = split_addresses(self.cleaned_data["to"])
        if not addresses:
            raise forms.ValidationError("Give at least one address.")
        for address in addresses:
            validate_email(address)
        refused = not_allowed(addresses)
        if refused:
            raise forms.ValidationError(
                f"{', '.join(refused)}: not a user of this system nor in a domain that "
                "BATCH_MAIL_ALLOWED_DOMAINS allows."
            )
        return ", ".join(addresses)

    def clean_document(self) -> str:
        document: str = self.cleaned_data["document"].strip()
        if document != "latest" and (Path(document).is_absolute() or ".." in Path(document).parts):
            raise forms.ValidationError("Give a path inside the media folder.")
        return document


@register(
    "reports.task_history_csv",
    label="Batch task history report (CSV)",
    description="Writes the batch task attempts of the last N days to a CSV file in the media folder.",
    form=HistoryReportForm,
)
def task_history_csv(ctx: Context, *, days: int, errors_only: bool) -> None:
    from batchadmin.jobs.models import BatchStatus, BatchTaskRun

    since = now() - dt.timedelta(days=days)
    runs = BatchTaskRun.objects.filter(started_at__gte=since).select_related("task__job", "server")
    if ctx.user is not None:
        # Only the jobs the run-as user sees in the job list: a Batch user's own (issue 13).
        runs = runs.filter(task__job__in=access.visible_jobs(ctx.user).values("pk"))
    if errors_only:
        runs = runs.filter(status=BatchStatus.ERROR)
    folder = Path(settings.MEDIA_ROOT) / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # The job is in the name: "latest" in mail.send_document picks the same job's newest.
    path = folder / f"task-history-{now():%Y%m%d-%H%M%S}-job{ctx.job_id}-{ctx.task_id}.csv"
    count = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "job",
                "job description",
                "task",
                "task description",
                "attempt",
                "status",
                "server",
                "started",
                "ended",
                "error",
            ]
        )
        for run in runs.order_by("started_at").iterator(chunk_size=2000):
            task = run.task
            writer.writerow(spreadsheet.row([
                task.job_id, task.job.description, task.key, task.description, run.attempt,
                run.get_status_display(), run.server.name if run.server else "",
                run.started_at.isoformat() if run.started_at else "",
                run.ended_at.isoformat() if run.ended_at else "",
                run.error_message.splitlines()[0] if run.error_message else "",
            ]))  # fmt: skip
            count += 1
            if count % 1000 == 0 and ctx.cancel_requested():
                ctx.warning(f"Canceled after {count} rows; the file is incomplete.")
                return
    ctx.info(f"Wrote {count} rows to {path.relative_to(settings.MEDIA_ROOT)}.")


@register(
    "mail.send_document",
    label="E-mail a document",
    description="Sends a file from the media folder (or the newest report) as an e-mail attachment.",
    form=MailDocumentForm,
)
def send_document(ctx: Context, *, to: str, subject: str, document: str, body: str) -> None:
    recipients = split_addresses(to)
    media = Path(settings.MEDIA_ROOT)
    if document == "latest":
        # The newest report of this job (issue 17): another job's report is not this job's to
        # send, and may hold what its run-as user may not see.
        mine = (media / REPORTS_DIR).glob(f"*-job{ctx.job_id}-*")
        reports = sorted(mine, key=lambda p: p.stat().st_mtime)
        if not reports:
            raise FileNotFoundError(f"Job {ctx.job_id} has written no report yet.")
        path = reports[-1]
    else:
        path = media / document
        if not path.is_file():
            raise FileNotFoundError(f"No document at {document!r} in the media folder.")
        _check_report(ctx, path.relative_to(media))
    message = EmailMessage(
        subject=subject,
        body=body or f"Attached: {path.name}",
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    )
    message.attach_file(str(path))
    message.send()
    ctx.info(f"Sent {path.name} to {to}.")


def _check_report(ctx: Context, relative: Path) -> None:
    """A report names its job; only a run-as user who may see that job may send it."""
    if ctx.user is None or relative.parts[:1] != (REPORTS_DIR,):
        return
    found = REPORT_JOB.search(relative.name)
    visible = access.visible_jobs(ctx.user)
    if found is None and not access.can_view_all(ctx.user):
        raise PermissionError(f"{relative}: a report of no known job; only managers send it.")
    if found is not None and not visible.filter(pk=int(found.group(1))).exists():
        raise PermissionError(
            f"{relative}: a report of job {found.group(1)}, which "
            f"{ctx.user.get_username()} may not see."
        )
