"""Processes a company would schedule: a CSV report to the media folder, a document by e-mail."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from django import forms
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.validators import validate_email
from django.utils.timezone import now

from batchadmin.processes.registry import Context, register

REPORTS_DIR = "reports"


def split_addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


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
        help_text="Recipients, separated by commas.",
        initial="finance@example.com",
    )
    subject = forms.CharField(max_length=200, initial="Your batch report")
    document = forms.CharField(
        max_length=300,
        initial="latest",
        help_text="A file under the media folder, or 'latest' for the newest report.",
    )
    body = forms.CharField(required=False, widget=forms.Textarea, max_length=5000)

    def clean_to(self) -> str:
        # Stored as the normalised text the form accepts again when the task runs.
        addresses = split_addresses(self.cleaned_data["to"])
        if not addresses:
            raise forms.ValidationError("Give at least one address.")
        for address in addresses:
            validate_email(address)
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
    if errors_only:
        runs = runs.filter(status=BatchStatus.ERROR)
    folder = Path(settings.MEDIA_ROOT) / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"task-history-{now():%Y%m%d-%H%M%S}-{ctx.task_id}.csv"
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
            writer.writerow([
                task.job_id, task.job.description, task.key, task.description, run.attempt,
                run.get_status_display(), run.server.name if run.server else "",
                run.started_at.isoformat() if run.started_at else "",
                run.ended_at.isoformat() if run.ended_at else "",
                run.error_message.splitlines()[0] if run.error_message else "",
            ])  # fmt: skip
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
        reports = sorted((media / REPORTS_DIR).glob("*"), key=lambda p: p.stat().st_mtime)
        if not reports:
            raise FileNotFoundError("There is no report in the media folder yet.")
        path = reports[-1]
    else:
        path = media / document
        if not path.is_file():
            raise FileNotFoundError(f"No document at {document!r} in the media folder.")
    message = EmailMessage(
        subject=subject,
        body=body or f"Attached: {path.name}",
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    )
    message.attach_file(str(path))
    message.send()
    ctx.info(f"Sent {path.name} to {to}.")
