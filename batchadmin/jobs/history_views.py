"""Batch job history, the Log (D365's Infolog) and Rerun.

Query cost is bounded per page whatever the job's size: runs are paginated, a run shows at most
ATTEMPTS_PER_RUN attempts, and log lines come in one windowed query with a cap per attempt and a
budget per page (a job of 1,000 tasks that each log 1,000 lines must not render a million lines).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.db.models import Count, Exists, F, OuterRef, QuerySet, Window
from django.db.models.functions import Length, RowNumber, Substr
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.timezone import localtime
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseStopPolling, trigger_client_event

from batchadmin.engine import transitions
from batchadmin.jobs import access, history, live, run_grid
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    StatusChange,
)
from batchadmin.lib import numbers
from batchadmin.lib.http import AuthedRequest

S = BatchStatus
Level = BatchLogEntry.Level

RUNS_PER_PAGE = 10
ATTEMPTS_PER_RUN = 200  # on the history page; the Log shows every attempt
HISTORY_LINES_PER_ATTEMPT = 500  # log lines inline on the history page, per attempt
HISTORY_LINES_BUDGET = 5_000  # ... and per page; attempts past it link to the Log
LOG_LINES_PER_ATTEMPT = 2_000  # on the Log page; more is paginated per attempt
LOG_LINES_BUDGET = 20_000
# Characters of an attempt's error and traceback that the history and the Log's list of
# attempts load; the rest stays in the database until the Log's view of that one attempt.
ERROR_HEAD_CHARS = 2_000
STATUS_CHANGES_SHOWN = 20
LEVEL_FILTERS = {"all": Level.INFO, "warning": Level.WARNING, "error": Level.ERROR}


def _get_job(request: AuthedRequest, pk: int, *, change: bool = False) -> BatchJob:
    """The job if the user may see it (404 otherwise, so ids of others' jobs do not leak)."""
    job = get_object_or_404(
        access.visible_jobs(request.user).select_related("created_by", "run_as", "django_task"),
        pk=pk,
    )
    if change and not access.can_change(request.user, job):
        raise Http404("You can't change this batch job.")
    return job


def _get_run(job: BatchJob, run_pk: int) -> BatchJobRun:
    return get_object_or_404(
        BatchJobRun.objects.select_related("run_by", "canceled_by", "started_by"),
        job=job,
        pk=run_pk,
    )


# --- What the templates get ----------------------------------------------------------------


@dataclass
class Attempt:
    row: BatchTaskRun
    lines: list[BatchLogEntry] = field(default_factory=list)
    line_count: int = 0
    warnings: int = 0
    errors: int = 0
    retried: bool = False  # a later attempt of the same task exists in this run
    then_skipped: bool = False  # the later row is an operator's skip, not a retry

    @property
    def lines_not_shown(self) -> int:
        return self.line_count - len(self.lines)

    @property
    def kept(self) -> bool:
        """Not run in this run because it had Ended before (a rerun of only the failed tasks)."""
        return self.row.attempt == 0 and self.row.status == S.ENDED

    @property
    def error_text(self) -> str:
        """The error, or its first ERROR_HEAD_CHARS where the rows came through _error_heads."""
        head = getattr(self.row, "error_head", None)  # None: the row has the whole error
        return self.row.error_message if head is None else str(head)

    @property
    def traceback_text(self) -> str:
        head = getattr(self.row, "traceback_head", None)
        return self.row.traceback if head is None else str(head)

    @property
    def error_cut(self) -> bool:
        """Part of the error or traceback was left in the database (the Log shows it all)."""
        return max(getattr(self.row, "error_chars", 0), getattr(self.row, "traceback_chars", 0)) > (
            ERROR_HEAD_CHARS
        )

    @property
    def error_title(self) -> str:
        text = self.error_text.strip()
        return text.splitlines()[0] if text else ""


@dataclass
class RunView:
    run: BatchJobRun
    number: int  # 1 for the job's first run (run ids count across all jobs)
    attempts: list[Attempt]
    attempt_count: int = 0  # in the whole run (attempts is capped)
    by_status: list[tuple[str, str, int]] = field(default_factory=list)  # tasks' final status
    open_tasks: list[tuple[str, str, int]] = field(default_factory=list)  # live runs only

    @property
    def retries(self) -> int:
        return self.attempt_count - sum(n for _, _, n in self.by_status)

    @property
    def attempts_not_shown(self) -> int:
        return self.attempt_count - len(self.attempts)

    @property
    def is_live(self) -> bool:
        return self.run.status in RUNNING_STATUSES


@dataclass
class TaskLog:
    """One task of the Log: "Infolog for Task <name> (<id>)" and its attempts."""

    task: BatchTask
    attempts: list[Attempt]


def _error_heads(rows: QuerySet[BatchTaskRun]) -> QuerySet[BatchTaskRun]:
    """The attempts without their whole error and traceback (a process may have raised 20,000
    characters and a 100,000-character traceback, settings.BATCH_*_MAX_CHARS): the first
    ERROR_HEAD_CHARS of each, and their lengths, instead."""
    return rows.defer("error_message", "traceback").annotate(
        error_head=Substr("error_message", 1, ERROR_HEAD_CHARS),
        error_chars=Length("error_message"),
        traceback_head=Substr("traceback", 1, ERROR_HEAD_CHARS),
        traceback_chars=Length("traceback"),
    )


def _attempt_rows(runs: list[BatchJobRun], *, per_run: int) -> dict[int, list[BatchTaskRun]]:
    """Each run's attempts (at most ``per_run``) with task and server: one windowed query."""
    order = ["task__position", "task_id", "attempt"]
    rows = (
        _error_heads(BatchTaskRun.objects.filter(job_run__in=runs))
        .select_related("task", "server")
        .annotate(
            row=Window(
                RowNumber(), partition_by=F("job_run_id"), order_by=[F(f).asc() for f in order]
            )
        )
        .filter(row__lte=per_run)
        .order_by("job_run_id", *order)
    )
    by_run: dict[int, list[BatchTaskRun]] = defaultdict(list)
    for row in rows:
        by_run[row.job_run_id].append(row)
    return by_run


def _line_counts(task_run_ids: list[int]) -> dict[int, dict[int, int]]:
    """task run id -> {level: number of lines}, in one grouped query."""
    counts: dict[int, dict[int, int]] = defaultdict(dict)
    rows = (
        BatchLogEntry.objects.filter(task_run_id__in=task_run_ids)
        .order_by()
        .values_list("task_run_id", "level")
        .annotate(n=Count("pk"))
    )
    for task_run_id, level, n in rows:
        counts[task_run_id][level] = n
    return counts


def _lines(
    attempts: list[Attempt], *, per_attempt: int, budget: int, min_level: int = Level.INFO
) -> None:
    """Fill ``attempt.lines``: the first ``per_attempt`` lines each, ``budget`` in all.

    Attempts are served in display order; once the budget is spent the rest get none and the
    page links to where they can be read. One query (ROW_NUMBER() per attempt).
    """
    wanted: dict[int, int] = {}
    for attempt in attempts:
        n = min(attempt.line_count, per_attempt, budget)
        if n > 0:
            wanted[attempt.row.pk] = n
            budget -= n
    if not wanted:
        return
    cap = max(wanted.values())
    rows = (
        BatchLogEntry.objects.filter(task_run_id__in=wanted, level__gte=min_level)
        .annotate(row=Window(RowNumber(), partition_by=F("task_run_id"), order_by=F("pk").asc()))
        .filter(row__lte=cap)
        .order_by("task_run_id", "pk")
    )
    by_attempt: dict[int, list[BatchLogEntry]] = defaultdict(list)
    for line in rows:
        if len(by_attempt[line.task_run_id]) < wanted[line.task_run_id]:
            by_attempt[line.task_run_id].append(line)
    for attempt in attempts:
        attempt.lines = by_attempt.get(attempt.row.pk, [])


def _attempts(
    rows: Iterable[BatchTaskRun], counts: dict[int, dict[int, int]], min_level: int
) -> list[Attempt]:
    rows = list(rows)
    last_attempt: dict[int, int] = {}
    skipped: dict[int, int] = {}  # task -> the attempt number of its skip row (transitions)
    for row in rows:
        last_attempt[row.task_id] = max(last_attempt.get(row.task_id, 0), row.attempt)
        if row.status == S.SKIPPED:
            skipped[row.task_id] = row.attempt
    attempts = []
    for row in rows:
        by_level = counts.get(row.pk, {})
        attempts.append(
            Attempt(
                row=row,
                line_count=sum(n for level, n in by_level.items() if level >= min_level),
                warnings=by_level.get(Level.WARNING, 0),
                errors=by_level.get(Level.ERROR, 0),
                retried=row.attempt < last_attempt[row.task_id],
                then_skipped=row.attempt + 1 == skipped.get(row.task_id),
            )
        )
    return attempts


def _run_number(run: BatchJobRun) -> int:
    return BatchJobRun.objects.filter(job_id=run.job_id, started_at__lte=run.started_at).count()


def _run_views(job: BatchJob, runs: list[BatchJobRun], first_number: int) -> list[RunView]:
    """Runs (newest first, the first numbered ``first_number``) with their attempts, status
    summaries and inline log lines, in a fixed number of queries."""
    if not runs:
        return []
    by_run = _attempt_rows(runs, per_run=ATTEMPTS_PER_RUN)
    # Per run: how its tasks ended (each task's last attempt), and how many attempts in all.
    summary: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    totals: dict[int, int] = defaultdict(int)
    labels = dict(S.choices)
    later = BatchTaskRun.objects.filter(
        job_run=OuterRef("job_run"), task=OuterRef("task"), attempt__gt=OuterRef("attempt")
    )
    rows = (
        BatchTaskRun.objects.filter(job_run__in=runs)
        .order_by()
        .values_list("job_run_id", "status", Exists(later))
        .annotate(n=Count("pk"))
    )
    order = list(labels)
    for run_id, status, retried, n in sorted(rows, key=lambda r: (r[0], order.index(r[1]))):
        totals[run_id] += n
        if not retried:
            summary[run_id].append((status, labels[status], n))
    counts = _line_counts([row.pk for run_rows in by_run.values() for row in run_rows])
    views = []
    for i, run in enumerate(runs):
        attempts = _attempts(by_run[run.pk], counts, Level.INFO)
        views.append(RunView(run, first_number - i, attempts, totals[run.pk], summary[run.pk]))
    _lines(
        [a for v in views for a in v.attempts],
        per_attempt=HISTORY_LINES_PER_ATTEMPT,
        budget=HISTORY_LINES_BUDGET,
    )
    live = [v for v in views if v.is_live and v.run.pk == job.current_run_id]
    if live:
        # Tasks of the running run that have not started yet have no attempt row.
        open_rows = (
            BatchTask.objects.filter(job=job, status__in=[S.WAITING, S.READY])
            .order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
        )
        live[0].open_tasks = [(status, labels[status], n) for status, n in open_rows]
    return views


# --- Batch job history ---------------------------------------------------------------------


def _history_context(request: AuthedRequest, job: BatchJob) -> dict[str, Any]:
    runs = BatchJobRun.objects.filter(job=job).select_related("run_by", "canceled_by", "started_by")
    page: Page[BatchJobRun] = Paginator(
        runs.order_by("-started_at", "-pk"), RUNS_PER_PAGE
    ).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    # The head's latest run and count come with the page when it is the first one.
    latest = rows[0] if rows and page.number == 1 else None
    return {
        "nav": "jobs",
        "page": page,
        "runs": _run_views(job, rows, page.paginator.count - page.start_index() + 1),
        **_head_context(request, job, latest=latest, count=page.paginator.count),
    }


def _head_context(
    request: AuthedRequest,
    job: BatchJob,
    *,
    latest: BatchJobRun | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    runs = BatchJobRun.objects.filter(job=job)
    if latest is None:
        latest = runs.order_by("-started_at", "-pk").first()
    changes = (StatusChange.objects.filter(job=job).select_related("by").order_by("-at", "-pk"))[
        :STATUS_CHANGES_SHOWN
    ]
    may_change = access.can_change(request.user, job)
    return {
        "job": job,
        "latest_run": latest,
        "run_count": runs.count() if count is None else count,
        "status_changes": list(changes),
        "live": job.is_live(),
        "may_change": may_change,
        # A last run to rerun: a finished job's, or a recurring job's back to Waiting.
        "can_rerun": may_change
        and not job.is_running()
        and (job.status in transitions.TERMINAL_JOB_STATUSES or job.current_run_id is not None),
        "not_saved": history.not_saved_note(job),
        "version": live.job_version(job),
    }


@require_GET
def job_history(request: AuthedRequest, pk: int) -> HttpResponse:
    job = _get_job(request, pk)
    template = "jobs/job_history.html"
    if request.htmx and request.htmx.target == "history-head":
        # Polled whatever the job's status (a Waiting job starts; jobs/live.py): nothing
        # moved since the page was drawn answers 204 in one query.
        if not job.is_running() and live.unchanged(request, live.job_version(job)):
            return live.no_change()
        context = _head_context(request, job)
        response = render(request, template + "#history-head", context)
        latest = context["latest_run"]
        if str(latest.pk if latest else "") != request.GET.get("latest", ""):
            # A run started (or a rerun began) since the page drew its runs, or the run it
            # showed ended and was not saved (Save job to history): redraw them.
            trigger_client_event(response, "history-changed")
        return response
    context = _history_context(request, job)
    if request.htmx:
        # Paging and the redraw after a new run: only the runs.
        return render(request, template + "#job-runs", context)
    return render(request, template, context)


@require_GET
def history_run(request: AuthedRequest, pk: int, run_pk: int) -> HttpResponse:
    """One run of the history, polled while it executes; a finished run stops the polling."""
    job = _get_job(request, pk)
    if not BatchJobRun.objects.filter(job=job, pk=run_pk).exists():
        # The run polled here ended and its history was dropped (Save job to history), or the
        # clean-up deleted it: say so in its place and stop polling.
        if not request.htmx:
            return redirect("jobs:history", pk=job.pk)
        context = {"job": job, "run_pk": run_pk, "not_saved": history.not_saved_note(job)}
        return _stop_polling(render(request, "jobs/job_history.html#run-not-saved", context))
    run = _get_run(job, run_pk)
    if not request.htmx:
        newer = BatchJobRun.objects.filter(job=job, started_at__gt=run.started_at).count()
        page = newer // RUNS_PER_PAGE + 1
        return redirect(f"{reverse('jobs:history', args=[job.pk])}?page={page}#run-{run.pk}")
    (view,) = _run_views(job, [run], _run_number(run))
    context = {"job": job, "rv": view, "open": request.GET.get("open") == "1"}
    response = render(request, "jobs/job_history.html#job-run", context)
    return response if view.is_live else _stop_polling(response)


def _stop_polling(response: HttpResponse) -> HttpResponse:
    """The same content with htmx's "stop polling" status (286): htmx swaps it, then stops."""
    stop = HttpResponseStopPolling(response.content)
    for header, value in response.items():
        stop[header] = value
    return stop


# --- Runs over time and the Gantt (the job page's Runs section) -----------------------------

# The section polls this often while the job runs and the tab is visible.
RUNS_POLL = "every 5s [document.visibilityState == 'visible']"


@require_GET
def job_runs(request: AuthedRequest, pk: int) -> HttpResponse:
    """The job's last runs by task (the grid) and one run's Gantt (?run=, else the latest).
    The job page loads it into #job-runs; without htmx it is a page of its own."""
    job = _get_job(request, pk)
    grid = run_grid.load_grid(job)
    chosen = request.GET.get("run", "")
    run: BatchJobRun | None = None
    if chosen.isdigit():
        run = get_object_or_404(BatchJobRun, job=job, pk=int(chosen))
    elif grid.columns:
        run = grid.columns[-1].run
    context = {
        "nav": "jobs",
        "job": job,
        "grid": grid,
        "gantt": run_grid.load_gantt(run) if run else None,
        "chosen": chosen if run else "",
        "live": job.is_live(),
        "poll": RUNS_POLL,
    }
    template = "jobs/job_runs.html"
    if request.htmx and request.htmx.target == "job-runs":
        template += "#job-runs"
    return render(request, template, context)


# --- Log -----------------------------------------------------------------------------------


@require_GET
def run_log(request: AuthedRequest, pk: int, run_pk: int) -> HttpResponseBase:
    """D365's Log button: the run's Infolog, job > task > messages."""
    job = _get_job(request, pk)
    run = _get_run(job, run_pk)
    if request.GET.get("format") == "text":
        return _log_text(job, run)
    level_name = request.GET.get("level", "all")
    min_level = LEVEL_FILTERS.get(level_name, Level.INFO)
    attempt_rows = (
        BatchTaskRun.objects.filter(job_run=run)
        .select_related("task", "server")
        .order_by("task__position", "task_id", "attempt")
    )
    one: BatchTaskRun | None = None
    line_page: Page[BatchLogEntry] | None = None
    if (task_run := numbers.whole(request.GET.get("task_run"))) is not None:
        # Every line of one attempt, a page at a time (the "see all lines" link), and its
        # whole error and traceback.
        one = attempt_rows.filter(pk=task_run).first()
        if one is None:
            raise Http404("No such attempt in this run.")
        rows = [one]
    else:
        rows = list(_error_heads(attempt_rows))
    counts = _line_counts([r.pk for r in rows])
    attempts = _attempts(rows, counts, min_level)
    if one is not None:
        lines = BatchLogEntry.objects.filter(task_run=one, level__gte=min_level).order_by("pk")
        line_page = Paginator(lines, LOG_LINES_PER_ATTEMPT).get_page(request.GET.get("page"))
        attempts[0].lines = list(line_page.object_list)
    else:
        _lines(
            attempts,
            per_attempt=LOG_LINES_PER_ATTEMPT,
            budget=LOG_LINES_BUDGET,
            min_level=min_level,
        )
    tasks: list[TaskLog] = []
    for attempt in attempts:
        if tasks and tasks[-1].task.pk == attempt.row.task_id:
            tasks[-1].attempts.append(attempt)
        else:
            tasks.append(TaskLog(attempt.row.task, [attempt]))
    live = run.status in RUNNING_STATUSES
    context = {
        "nav": "jobs",
        "job": job,
        "run": run,
        "number": _run_number(run),
        "tasks": tasks,
        "live": live,
        "level": level_name if level_name in LEVEL_FILTERS else "all",
        "levels": [
            ("all", "All messages"),
            ("warning", "Warnings and errors"),
            ("error", "Errors"),
        ],
        "one": one,
        "line_page": line_page,
        "line_total": sum(a.line_count for a in attempts),
    }
    template = "jobs/job_log.html"
    if request.htmx:
        response = render(request, template + "#infolog", context)
        return response if live else _stop_polling(response)
    return render(request, template, context)


def _log_text(job: BatchJob, run: BatchJobRun) -> StreamingHttpResponse:
    """The whole Infolog of a run as plain text, streamed (no cap)."""

    def lines() -> Iterator[str]:
        yield f"Infolog for Job {job.description} ({job.pk}), run {run.pk}\n"
        current = None
        entries = (
            BatchLogEntry.objects.filter(task_run__job_run=run)
            .select_related("task_run__task")
            # Each line comes with its attempt: not with the attempt's error and traceback.
            .only(
                "created",
                "level",
                "message",
                "task_run__attempt",
                "task_run__task__key",
                "task_run__task__description",
            )
            .order_by("task_run__task__position", "task_run__task_id", "task_run__attempt", "pk")
        )
        for entry in entries.iterator(chunk_size=2_000):
            tr = entry.task_run
            if tr.pk != current:
                current = tr.pk
                yield (
                    f"\n  Infolog for Task {tr.task.description} ({tr.task.key}), "
                    f"attempt {tr.attempt}\n"
                )
            stamp = localtime(entry.created).strftime("%Y-%m-%d %H:%M:%S")
            yield f"    {stamp} {entry.get_level_display():<7} {entry.message}\n"

    response = StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-run-{run.pk}-log.txt"'
    return response


# --- Rerun ---------------------------------------------------------------------------------


class RerunForm(forms.Form):
    what = forms.ChoiceField(
        label="Run again",
        choices=[
            ("failed", "Only the tasks that failed or did not run"),
            ("all", "The whole job"),
        ],
        widget=forms.RadioSelect,
        help_text="Tasks that Ended keep their result when only the failed ones run again.",
    )


@require_http_methods(["GET", "POST"])
def job_rerun(request: AuthedRequest, pk: int) -> HttpResponse:
    """Rerun now, from the history and the job page (managers, and batch users on their own
    jobs): the failed tasks of the last run or the whole job, at once (transitions.rerun_job)."""
    job = _get_job(request, pk, change=True)
    results = None if job.is_running() else transitions.last_run_results(job)
    failed = {pk: st for pk, st in (results or {}).items() if st in transitions.RERUN_TASK_STATUSES}
    again = list(BatchTask.objects.filter(pk__in=failed).only("key", "description", "status"))
    for task in again:
        task.status = failed[task.pk]  # as the last run left it (a recurring job's were reset)
    initial = {"what": "failed" if again else "all"}
    form = RerunForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        only_failed = form.cleaned_data["what"] == "failed"
        if only_failed and not again:
            form.add_error("what", "No task failed or did not run: rerun the whole job instead.")
        else:
            try:
                started = transitions.rerun_job(
                    job_id=job.pk, by_id=request.user.pk, only_failed=only_failed
                )
            except transitions.Refused as exc:
                form.add_error(None, str(exc))
            else:
                if started:
                    what = (
                        "the tasks that failed or did not run" if only_failed else "the whole job"
                    )
                    if not request.htmx:
                        messages.success(request, f"Job {job.pk} is running again now: {what}.")
                        return redirect("jobs:history", pk=job.pk)
                    response = HttpResponse()
                    for event in ("dialog-close", "job-changed", "history-changed"):
                        trigger_client_event(response, event)
                    return response
                form.add_error(None, "The job changed meanwhile. Look again.")
        job.refresh_from_db()
    context = {
        "nav": "jobs",
        "job": job,
        "form": form,
        "again": again,
        "task_count": BatchTask.objects.filter(job=job).count(),
        "running": job.is_running(),
        "finished": results is not None,
        "recurring": job.get_recurrence() is not None,
    }
    if request.htmx:
        return render(request, "jobs/job_history.html#rerun-dialog", context)
    return render(request, "jobs/job_rerun.html", context)
