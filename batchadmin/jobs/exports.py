"""The job list as a file: CSV (streamed) and Excel (.xlsx, openpyxl's write-only mode).

Both carry the list's columns for every job matching its filter, in its order. A cell that a
spreadsheet would read as a formula (it starts with = + - @, a tab or a carriage return) is
written with a leading apostrophe: a job description is user input, and "=HYPERLINK(...)"
must stay text when a manager opens the file (CSV injection, OWASP).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.timezone import localtime, now

from batchadmin.jobs.models import BatchJob, BatchStatus
from batchadmin.lib import durations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HEADERS = (
    "Job ID",
    "Description",
    "Status",
    "Scheduled start",
    "Actual start",
    "End",
    "Duration",
    "Created by",
    "Run by",
    "Priority",
    "Recurrence",
    "Next run",
    "Last run",
    "Last run end",
    "Last run duration",
)
CHUNK = 2000  # jobs read per query while streaming


def safe(value: str) -> str:
    """Text a spreadsheet shows as text, never evaluates."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _time(value: dt.datetime | None) -> str:
    # ISO-like, in the viewer's zone (TimezoneMiddleware), as the pages show times.
    return localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _took(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None:
        return ""
    return durations.short((end or now()) - start)


def rows(qs: QuerySet[BatchJob]) -> Iterator[list[str]]:
    """One list of cells per job, the header first."""
    yield list(HEADERS)
    for job in qs.iterator(chunk_size=CHUNK):
        last_status: str | None = getattr(job, "last_run_status", None)
        last_started: dt.datetime | None = getattr(job, "last_run_started", None)
        last_ended: dt.datetime | None = getattr(job, "last_run_ended", None)
        run_by = job.run_as or job.created_by
        yield [
            str(job.pk),
            safe(job.description),
            str(job.get_status_display()),
            _time(job.scheduled_start),
            _time(job.started_at),
            _time(job.ended_at),
            _took(job.started_at, job.ended_at),
            safe(job.created_by.get_username()) if job.created_by else "",
            safe(run_by.get_username()) if run_by else "",
            str(job.get_priority_display()) if job.priority_overridden else "Group's",
            safe(job.recurrence_words),
            _time(job.next_run),
            str(BatchStatus(last_status).label) if last_status else "",
            _time(last_ended),
            _took(last_started, last_ended) if last_ended else "",
        ]


class _Echo:
    """csv.writer writes into this and gets the line back: StreamingHttpResponse yields it."""

    def write(self, value: str) -> str:
        return value


def _filename(ext: str) -> str:
    return f"batch-jobs-{localtime(now()):%Y%m%d-%H%M}.{ext}"


def csv_response(qs: QuerySet[BatchJob]) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    lines: Iterable[Any] = (writer.writerow(row) for row in rows(qs))
    # A byte-order mark first, or Excel reads UTF-8 descriptions as Windows-1252.
    response = StreamingHttpResponse(_with_bom(lines), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename("csv")}"'
    return response


def _with_bom(lines: Iterable[str]) -> Iterator[str]:
    yield "\ufeff"
    yield from lines


def xlsx_response(qs: QuerySet[BatchJob]) -> HttpResponse:
    # Imported here: only the export needs openpyxl, and it takes a while to import.
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Batch jobs")
    for row in rows(qs):
        sheet.append(row)  # all text: safe() keeps openpyxl from writing a formula
    buffer = io.BytesIO()
    book.save(buffer)
    response = HttpResponse(
        buffer.getvalue(),
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
    response["Content-Disposition"] = f'attachment; filename="{_filename("xlsx")}"'
    return response
