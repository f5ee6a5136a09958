"""What the REST API reads and writes, as Pydantic schemas (they become the OpenAPI document).

Dates and times are ISO 8601 as ``datetime.isoformat()`` writes them (``2026-12-03T18:30:00+00:00``),
the same text ``manage.py batch show --json`` prints.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import Field, PlainSerializer, WithJsonSchema

# Written with isoformat(), as the command line writes them, not Pydantic's "Z" for UTC.
When = Annotated[
    dt.datetime,
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Error(Schema):
    """Every error: a sentence naming the culprit, and for a form the messages per field."""

    message: str
    errors: dict[str, list[str]] | None = None


# --- jobs -----------------------------------------------------------------------------------


class JobSummary(Schema):
    id: int
    description: str
    status: str = Field(description="withhold, waiting, executing, error, ended, canceling, ...")
    scheduled_start: When
    started_at: When | None
    ended_at: When | None
    priority: str | None = Field(
        description="The job's own scheduling priority when it overrides its batch groups' "
        "(low, normal, high, critical, reserved), else null."
    )
    critical: bool
    created_by: str | None
    run_as: str | None
    recurrence: str = Field(description="The recurrence in words, or empty.")
    overlap: str | None = Field(
        description="A recurring job's overlap policy (skip, buffer_one, cancel_running): "
        "what an occurrence that comes while the job runs does; null without a recurrence."
    )
    paused: str = Field(description="Who paused the recurrence, why and until when, or empty.")
    url: str = Field(description="The job's page.")


class JobPage(Schema):
    count: int
    page: int
    pages: int
    results: list[JobSummary]


class TaskShown(Schema):
    key: str
    description: str
    status: str
    server: str | None
    retries: int
    started_at: When | None
    ended_at: When | None
    log_lines: int = Field(description="Log lines of the task's last attempt.")


class LastRun(Schema):
    status: str
    ended_at: When | None


AfterStatusName = Literal["ended", "error", "ended_or_error"]


class JobShown(Schema):
    """``manage.py batch show ID --json``."""

    id: int
    description: str
    status: str
    runs: int = Field(description="How many runs the job has had (those still in history).")
    last_run: LastRun | None
    tasks: list[TaskShown]


class TriggerShown(Schema):
    after: int | None = Field(description="The id of the job this job runs after; null: none.")
    status: AfterStatusName = Field(description="The final status of its run that starts this job.")
    followers: list[int] = Field(description="The ids of the jobs that run after this one.")


class TriggerIn(Schema):
    after: int | None = Field(description="The id of the job to follow; null: follow none.")
    status: AfterStatusName = Field("ended", description="Which final status starts this job.")


class BackfillIn(Schema):
    from_: dt.date = Field(alias="from", description="The first day (included), YYYY-MM-DD.")
    to: dt.date = Field(description="The last day (included), in the recurrence's zone.")
    last: bool = Field(False, description="Only the last missed occurrence.")
    dry_run: bool = Field(False, description="Only say which occurrences; start nothing.")


class BackfillOut(Schema):
    id: int
    occurrences: list[When] = Field(description="The missed occurrences, oldest first.")
    started: int = Field(description="How many runs the backfill starts (0 on a dry run).")


class Created(Schema):
    ids: list[int]


class CopyCreated(Schema):
    id: int


class StatusIn(Schema):
    status: Literal["waiting", "withhold", "cancel"] = Field(
        description="waiting: run (again); withhold: hold; cancel: stop a running job."
    )


class JobStatus(Schema):
    id: int
    status: str


class RerunIn(Schema):
    what: Literal["failed", "all", "from"] = Field(
        "failed",
        description="failed: only the tasks that failed or did not run; all: the whole job; "
        "from: from_task and everything downstream of it. The run starts now.",
    )
    from_task: str | None = Field(None, description="The task ID (key) to rerun from.")


class SkipIn(Schema):
    task: str = Field(description="The task ID (key) within the job.")
    reason: str = Field(description="Why it is skipped; kept in the audit trail.")


class RunNowIn(Schema):
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Parameters for this run only, by task ID: {"T2": {"lines": 5}}.',
    )


class PauseIn(Schema):
    reason: str = Field(description="Why the recurrence is paused; shown with the job, audited.")
    until: dt.datetime | None = Field(
        None,
        description="Resume by itself then (ISO 8601; without an offset, read in the "
        "recurrence's zone). Left out: until someone resumes it.",
    )


class PauseOut(Schema):
    id: int
    status: str
    paused: bool
    note: str = Field(description='"Paused by alice on ...: why; until ...", or "".')
    paused_until: When | None


class AuditOut(Schema):
    at: When
    user: str
    action: str
    reason: str
    target: str
    changes: Any
    via: str


class CalendarOut(Schema):
    code: str
    description: str
    dates: list[dt.date]


class CopyIn(Schema):
    """As the Copy batch job dialog; left out: the source job's value."""

    description: str | None = None
    company: str | None = Field(None, description="Company code; empty for none.")
    scheduled_start: dt.datetime | None = None
    run_as: str | None = Field(None, description="Username (Batch job managers only).")


class Waited(Schema):
    id: int
    status: str
    done: bool = Field(description="The run is over (or there was none to wait for).")
    change: int = Field(
        description="The last status change seen: pass it as ?after= to wait on from there."
    )


# --- history --------------------------------------------------------------------------------


class RunOut(Schema):
    id: int
    status: str
    scheduled_start: When
    started_at: When
    ended_at: When | None
    run_by: str | None
    canceled_by: str | None
    trigger: str = Field(
        "scheduled",
        description="What started it: scheduled, run_now, rerun_*, resume, triggered, backfill.",
    )
    note: str = ""
    occurrence: When | None = Field(
        None, description="The recurrence occurrence the run stands for (a backfill's missed one)."
    )


class RunPage(Schema):
    count: int
    page: int
    pages: int
    results: list[RunOut]


class AttemptOut(Schema):
    id: int
    task: str = Field(description="The task's key.")
    attempt: int = Field(description="0: the task did not run in this run.")
    status: str
    server: str | None
    hostname: str
    started_at: When | None
    ended_at: When | None
    error: str
    traceback: str


class AttemptPage(Schema):
    count: int
    page: int
    pages: int
    results: list[AttemptOut]


class LogLine(Schema):
    id: int
    attempt: int = Field(description="The attempt's id (AttemptOut.id).")
    task: str
    at: When
    level: Literal["info", "warning", "error"]
    message: str


class LogPage(Schema):
    count: int
    page: int
    pages: int
    results: list[LogLine]


# --- set-up ---------------------------------------------------------------------------------


class GroupOut(Schema):
    code: str
    description: str
    priority: str
    max_concurrency: int = Field(description="0 no limit, N per job, -1 paused.")
    reserved_capacity: int = Field(description="Percent of the group's threads.")
    max_tasks: int = Field(
        description="Maximum running tasks of the whole group, all jobs together; 0 no limit."
    )
    running_tasks: int = Field(description="Executing and Canceling tasks of the group now.")
    servers: list[str]
    served: bool = Field(description="An enabled, online server serves the group now.")
    waiting_tasks: int = Field(description="Ready tasks of the group.")


class ReplicaOut(Schema):
    hostname: str
    pid: int | None
    threads: int
    busy: int
    started_at: When
    last_heartbeat: When


class ScheduleRow(Schema):
    start_time: dt.time
    end_time: dt.time
    max_threads: int


class ServerOut(Schema):
    name: str
    description: str
    enabled: bool
    time_zone: str
    groups: list[str]
    schedule: list[ScheduleRow]
    threads_now: int | None = Field(description="What the schedule allows now; null: no schedule.")
    replicas_online: list[ReplicaOut]


class PeriodOut(Schema):
    code: str
    name: str
    start_time: dt.time
    end_time: dt.time
    time_zone: str
    open_now: bool
    described: str


class RuleOut(Schema):
    id: int
    group: str | None
    priority: str | None
    ended: bool
    error: bool
    canceled: bool
    stuck: bool
    popup: bool
    email: bool
    webhooks: list[str] = Field(description="Codes of the webhooks the rule also posts to.")


class WebhookOut(Schema):
    """A webhook (its secret is not shown)."""

    code: str
    description: str
    url: str
    format: Literal["json", "teams", "slack"]
    enabled: bool


class DeliveryOut(Schema):
    """One alert posted to one webhook: the delivery log."""

    id: int
    webhook: str
    job: int
    event: str = Field(description="ended, error, canceled, long_running, unserved, ...")
    state: Literal["pending", "sending", "sent", "failed"]
    attempts: int
    last_status: int | None = Field(description="The last HTTP status the receiver answered.")
    last_error: str
    created: When
    sent_at: When | None


class DeliveryPage(Schema):
    count: int
    page: int
    pages: int
    results: list[DeliveryOut]


def page_of(items: list[Any], *, count: int, page: int, pages: int) -> dict[str, Any]:
    return {"count": count, "page": page, "pages": pages, "results": items}
