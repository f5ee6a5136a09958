"""Import and export of batch jobs as JSON (the `manage.py batch import/export` contract).

Import validates the whole file before writing anything and creates everything in one
transaction: a bad file fails with a message that names the culprit and creates nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils.dateparse import parse_date, parse_datetime, parse_time
from django.utils.timezone import is_naive, make_aware, now

from batchadmin.alerts.models import BatchJobAlert, JobWebhook, Webhook
from batchadmin.audit import trail
from batchadmin.jobs import access, calendar_forms, triggers
from batchadmin.jobs.models import (
    CALENDAR_DATES_LIMIT,
    MAX_RETRIES_LIMIT,
    TIME_LIMIT_MAX_SECONDS,
    ActivePeriod,
    AfterStatus,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    Calendar,
    CalendarDate,
    Company,
    Priority,
    SaveHistory,
)
from batchadmin.lib import daterange, deadlines, recurrence
from batchadmin.lib.graph import find_cycle
from batchadmin.processes import registry
from batchadmin.servers.models import (
    CODE_VALIDATOR,
    DEFAULT_GROUP_CODE,
    BatchGroup,
    BatchServer,
    ReservedCapacity,
)

PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
# The header fields an imported job's audit entry lists (as the job form's).
JOB_AUDIT_FIELDS = [
    "description",
    "status",
    "scheduled_start",
    "run_as",
    "priority",
    "priority_overridden",
    "company",
    "active_period",
    "save_history",
    "critical",
]
# A job's "priority": one of the names overrides the batch groups' priority for all its tasks
# (files written before groups had a priority keep their meaning); "group", or no key, leaves
# each task its group's. Export writes the key only when the job overrides.
GROUP_PRIORITY = "group"
JOB_PRIORITY_NAMES: dict[str, Priority | None] = {**PRIORITY_NAMES, GROUP_PRIORITY: None}
IMPORT_STATUSES = {"waiting": BatchStatus.WAITING, "withhold": BatchStatus.WITHHOLD}
SAVE_HISTORY_NAMES = {s.value: s for s in SaveHistory}
JOB_KEYS = {
    "description",
    "scheduled_start",
    "status",
    "priority",
    "save_history",
    "critical",
    "run_as",
    "company",
    "active_period",
    "recurrence",
    "deadline",
    "tasks",
    "alerts",
    "key",
    "trigger",
}
TRIGGER_KEYS = {"after", "status"}
AFTER_STATUS_NAMES = {s.value: s for s in AfterStatus}
RECURRENCE_KEYS = {
    "start",
    "timezone",
    "end",
    "pattern",
    "missed",
    "overlap",
    "calendar",
    "on_calendar_date",
}
CALENDAR_KEYS = {"code", "description", "dates"}
TOP_LEVEL_KEYS = {"jobs", "groups", "calendars", "webhooks"}
# The pattern keys each unit takes besides "unit" and "every" (a cron pattern is {"cron": ...}).
PATTERN_KEYS = {
    recurrence.MINUTES: set(),
    recurrence.HOURS: set(),
    recurrence.DAYS: set(),
    recurrence.WEEKS: {"weekdays"},
    recurrence.MONTHS: {"day", "nth", "weekday"},
    recurrence.YEARS: {"month", "day", "nth", "weekday"},
}
TASK_KEYS = {
    "key",
    "description",
    "process",
    "parameters",
    "group",
    "company",
    "ignore_failure",
    "max_retries",
    "time_limit",
    "condition_type",
    "conditions",
}
WEBHOOK_KEYS = {"code", "url", "secret", "format", "description"}
ALERT_EVENTS = ("ended", "error", "canceled", "deadline")
GROUP_KEYS = {
    "code",
    "description",
    "servers",
    "priority",
    "max_concurrency",
    "max_tasks",
    "reserved_capacity",
}


class ImportFailure(ValueError):
    pass


# A whole number the database holds (PostgreSQL integer): "end after" and the like.
INT_MAX = 2_147_483_647


def parse_json(text: str) -> Any:
    """The JSON of an import file (the command line, the API). A key twice in one object is
    refused (json would keep the last silently), and so is text PostgreSQL can't store: a NUL
    character or half a surrogate pair, wherever it is (checked once, before anything else)."""
    # JSONDecodeError is the caller's to word ("{file} is not valid JSON").
    data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    _check_text(data, "")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        keys = ", ".join(repr(k) for k in dict.fromkeys(k for k, _ in pairs))
        raise ImportFailure(f"Key {twice!r} is in one object twice (the object with {keys}).")
    return data


def _no_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON has no such numbers.
    raise ImportFailure(f"{name} is not a number in JSON: write a number.")


def _check_text(value: Any, path: str) -> None:
    """Refuse strings (values and keys) the database can't store, naming where they are as a
    path: jobs[0].tasks[2].description."""
    todo = [(value, path)]
    while todo:
        item, where = todo.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                # A key that is no plain name is shown quoted, its bad characters escaped.
                step = key if key.isidentifier() and key.isascii() else f"[{key!r}]"
                here = f"{where}.{step}" if where and step[0] != "[" else f"{where}{step}"
                _check_string(key, here)
                todo.append((child, here))
        elif isinstance(item, list):
            todo.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, where)


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise ImportFailure(f"{where or 'the file'}: contains a NUL character (\\u0000).")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportFailure(
            f"{where or 'the file'}: contains half a surrogate pair (\\ud800-\\udfff alone)."
        ) from None


def _text(value: Any, where: str) -> str | None:
    """An optional string field: None, or the string; anything else is refused."""
    if value is None or isinstance(value, str):
        return value
    raise ImportFailure(f"{where} must be a string, got {type(value).__name__} {value!r:.60}.")


def _instant(value: Any, where: str) -> dt.datetime:
    """An ISO-8601 date and time (naive: the server's zone), within the dates accepted."""
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError as exc:  # well formed but impossible: hour 25, February 30, +99:00
        why = "the offset is -23:59 to +23:59" if "offset" in str(exc) else str(exc)
        raise ImportFailure(f"{where} {value!r} is not a valid date and time: {why}.") from None
    if parsed is None:
        raise ImportFailure(f"{where} {value!r:.60} is not an ISO-8601 date and time.")
    problem = daterange.problem(parsed, where)
    if problem:
        raise ImportFailure(problem)
    return parsed


def _date(value: Any, where: str) -> dt.date:
    """An ISO date (YYYY-MM-DD) within the dates accepted."""
    parsed = _parse_iso_date(value)
    if parsed is None:
        raise ImportFailure(f"{where} {value!r:.60} is not a date (YYYY-MM-DD).")
    problem = daterange.problem(parsed, where)
    if problem:
        raise ImportFailure(problem)
    return parsed


class ImportRefused(ImportFailure):
    """The file is well formed, but asks for what the importer's role may not have."""


@dataclass
class _Task:
    key: str
    description: str
    process: str
    parameters: dict[str, Any]
    group: str
    company: str | None
    ignore_failure: bool
    max_retries: int
    condition_type: str
    conditions: list[tuple[str, str]]
    time_limit: int | None = None


@dataclass
class _Job:
    description: str
    scheduled_start: dt.datetime
    status: BatchStatus
    priority: Priority | None  # None: each task takes its group's
    run_as: Any
    company: str | None
    active_period: ActivePeriod | None = None
    save_history: SaveHistory = SaveHistory.ALWAYS
    critical: bool = False
    recurrence: dict[str, Any] | None = None  # BatchRecurrence field values
    deadline_time: dt.time | None = None
    deadline_minutes: int | None = None
    tasks: list[_Task] = field(default_factory=list)
    key: str | None = None  # names the job in this file, for another job's "trigger"
    after: str | int | None = None  # the job it follows: a key in the file, or a job id
    after_status: AfterStatus = AfterStatus.ENDED


@dataclass
class _Group:
    code: str
    description: str | None
    servers: list[str] | None  # None: leave the group's servers as they are
    priority: Priority | None = None  # the group's scheduling priority; None: leave it
    max_concurrency: int | None = None  # -1 pause, 0 no limit, N per job; None: leave it
    reserved_capacity: ReservedCapacity | None = None  # None: leave it
    max_tasks: int | None = None  # 0 no limit, N for the whole group; None: leave it


@dataclass
class _Calendar:
    code: str
    description: str | None  # None: leave it
    dates: list[dt.date] | None  # the complete set; None: leave the dates as they are


def import_data(data: Any, *, user: Any = None) -> list[BatchJob]:
    """Create the groups, webhooks and jobs that ``data`` describes; return the jobs in file
    order."""
    if not isinstance(data, dict):
        raise ImportFailure(
            'The file must hold a JSON object: a job, or {"groups": [...], "jobs": [...]}.'
        )
    raw_calendars: Any = []
    raw_hooks: Any = []
    if TOP_LEVEL_KEYS & set(data):
        extra = set(data) - TOP_LEVEL_KEYS
        if extra:
            raise ImportFailure(f"Unknown top-level key(s): {', '.join(sorted(extra))}.")
        raw_groups, raw_jobs = data.get("groups", []), data.get("jobs", [])
        raw_calendars = data.get("calendars", [])
        raw_hooks = data.get("webhooks", [])
        if not isinstance(raw_groups, list) or not isinstance(raw_jobs, list):
            raise ImportFailure('"groups" and "jobs" must be lists.')
        if not isinstance(raw_calendars, list):
            raise ImportFailure('"calendars" must be a list.')
        if not isinstance(raw_hooks, list):
            raise ImportFailure('"webhooks" must be a list.')
    else:
        raw_groups, raw_jobs, raw_hooks = [], [data], []
    groups = [_parse_group(g, i) for i, g in enumerate(raw_groups, 1)]
    known_groups = set(BatchGroup.objects.values_list("code", flat=True)) | {g.code for g in groups}
    calendars = [_parse_calendar(c, i) for i, c in enumerate(raw_calendars, 1)]
    twice = sorted(code for code, n in Counter(c.code for c in calendars).items() if n > 1)
    if twice:
        raise ImportFailure(f"calendar {twice[0]!r} is in the file twice.")
    calendar_dates = _calendar_dates(calendars)
    jobs = [_parse_job(j, i, known_groups, calendar_dates) for i, j in enumerate(raw_jobs, 1)]
    for i, parsed in enumerate(jobs, 1):
        _check_run_by(parsed, f"job {i} ({parsed.description!r})", user)
    _check_triggers(jobs)
    hooks = _parse_webhooks(raw_hooks)
    known_hooks = set(Webhook.objects.values_list("code", flat=True)) | {h["code"] for h in hooks}
    alerts = [
        _parse_alerts(raw, f"job {i} ({job.description!r})", known_hooks)
        for i, (raw, job) in enumerate(zip(raw_jobs, jobs, strict=True), 1)
    ]
    with transaction.atomic():
        for group in groups:
            _save_group(group, user)
        for calendar in calendars:
            _save_calendar(calendar)
        for hook in hooks:
            Webhook.objects.update_or_create(code=hook["code"], defaults=hook)
        saved = [_save_job(job, user) for job in jobs]
        _save_triggers(jobs, saved, user)
        for job, job_alerts in zip(saved, alerts, strict=True):
            _save_alerts(job, job_alerts)
        return saved


def _parse_calendar(raw: Any, index: int) -> _Calendar:
    where = f"calendar {index}"
    if not isinstance(raw, dict):
        raise ImportFailure(f"{where}: must be an object.")
    _check_keys(raw, CALENDAR_KEYS, where)
    code = raw.get("code")
    if not isinstance(code, str):
        raise ImportFailure(f'{where}: "code" is required.')
    where = f"calendar {code!r}"
    _validate_code(code, where)
    description = raw.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 200):
        raise ImportFailure(f"{where}: description must be a string of at most 200 characters.")
    dates = None
    if "dates" in raw:
        if not isinstance(raw["dates"], list):
            raise ImportFailure(f'{where}: "dates" must be a list like ["2026-12-25"].')
        dates = []
        for value in raw["dates"]:
            dates.append(_date(value, f"{where}: date"))
        dates = sorted(set(dates))
        if len(dates) > CALENDAR_DATES_LIMIT:
            raise ImportFailure(
                f"{where}: {len(dates):,} dates; a calendar holds at most {CALENDAR_DATES_LIMIT:,}."
            )
    return _Calendar(code, description, dates)


def _parse_iso_date(value: Any) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_date(value)
    except ValueError:  # well formed but impossible: 2026-02-30
        return None


def _calendar_dates(calendars: list[_Calendar]) -> dict[str, frozenset[dt.date]]:
    """Code -> dates of every calendar a recurrence may name: the file's, as they will be
    saved, over those already in the database."""
    known: dict[str, set[dt.date]] = {c.code: set() for c in Calendar.objects.all()}
    for code, date in CalendarDate.objects.values_list("calendar__code", "date"):
        known[code].add(date)
    for c in calendars:
        if c.dates is not None or c.code not in known:
            known[c.code] = set(c.dates or [])
    return {code: frozenset(dates) for code, dates in known.items()}


def _parse_group(raw: Any, index: int) -> _Group:
    where = f"group {index}"
    if not isinstance(raw, dict):
        raise ImportFailure(f"{where}: must be an object.")
    _check_keys(raw, GROUP_KEYS, where)
    code = raw.get("code")
    if not isinstance(code, str):
        raise ImportFailure(f'{where}: "code" is required.')
    where = f"group {code!r}"
    _validate_code(code, where)
    servers = raw.get("servers")
    if servers is not None:
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ImportFailure(f'{where}: "servers" must be a list of server names.')
        for name in servers:
            _validate_code(name, f"{where}, server {name!r}")
    description = raw.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 200):
        raise ImportFailure(f"{where}: description must be a string of at most 200 characters.")
    priority = None
    if "priority" in raw:
        priority = _choice(raw["priority"], PRIORITY_NAMES, f"{where}: priority")
    max_concurrency = None
    if "max_concurrency" in raw:
        max_concurrency = _max_concurrency(raw["max_concurrency"], where)
    reserved = None
    if "reserved_capacity" in raw:
        value = raw["reserved_capacity"]
        levels = {c.value: c for c in ReservedCapacity}
        if not isinstance(value, int) or isinstance(value, bool) or value not in levels:
            raise ImportFailure(
                f"{where}: reserved_capacity {value!r} is not one of "
                f"{', '.join(map(str, levels))} (percent of the group's threads)."
            )
        reserved = levels[value]
    max_tasks = None
    if "max_tasks" in raw:
        max_tasks = _max_tasks(raw["max_tasks"], where)
    return _Group(code, description, servers, priority, max_concurrency, reserved, max_tasks)


def _max_tasks(value: Any, where: str) -> int:
    """0 (no limit) or 1-10000 tasks of the whole group at once."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ImportFailure(
            f"{where}: max_tasks must be a whole number from 0 (no limit) up, got {value!r}."
        )
    try:
        for validate in BatchGroup._meta.get_field("max_tasks").validators:
            validate(value)
    except ValidationError as exc:
        raise ImportFailure(f"{where}: max_tasks {value}: {' '.join(exc.messages)}") from None
    return value


def _max_concurrency(value: Any, where: str) -> int:
    """-1 (pause), 0 (no limit) or 1-512 tasks of each job at once, with the form's message."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ImportFailure(f"{where}: max_concurrency must be a whole number, got {value!r}.")
    try:
        for validate in BatchGroup._meta.get_field("max_concurrency").validators:
            validate(value)
    except ValidationError as exc:
        raise ImportFailure(f"{where}: max_concurrency {value}: {' '.join(exc.messages)}") from None
    return value


def _validate_code(code: str, where: str) -> None:
    try:
        CODE_VALIDATOR(code)
    except ValidationError as exc:
        raise ImportFailure(f"{where}: {' '.join(exc.messages)}") from None


def _parse_job(
    raw: Any, index: int, known_groups: set[str], calendars: dict[str, frozenset[dt.date]]
) -> _Job:
    where = f"job {index}"
    if not isinstance(raw, dict):
        raise ImportFailure(f"{where}: must be an object.")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ImportFailure(f'{where}: "description" is required.')
    where = f"job {index} ({description!r})"
    _check_keys(raw, JOB_KEYS, where)
    if len(description) > 200:
        raise ImportFailure(f"{where}: description is longer than 200 characters.")

    recurring = None
    if raw.get("recurrence") is not None:
        recurring = _parse_recurrence(raw["recurrence"], f"{where}, recurrence", calendars)
    start = raw.get("scheduled_start")
    if start is None and recurring is not None:
        # The first occurrence from now on: earlier ones are not runs that were missed.
        following = _rule(recurring, calendars).next_after(now(), inclusive=True)
        scheduled_start = following or now()
    elif start is None:
        scheduled_start = now()
    else:
        parsed = _instant(start, f"{where}: scheduled_start")
        scheduled_start = make_aware(parsed) if is_naive(parsed) else parsed

    status = _choice(raw.get("status", "waiting"), IMPORT_STATUSES, f"{where}: status")
    priority = _choice(
        raw.get("priority", GROUP_PRIORITY), JOB_PRIORITY_NAMES, f"{where}: priority"
    )
    save_history = _choice(
        raw.get("save_history", SaveHistory.ALWAYS.value),
        SAVE_HISTORY_NAMES,
        f"{where}: save_history",
    )
    critical = raw.get("critical", False)
    if not isinstance(critical, bool):
        raise ImportFailure(f"{where}: critical must be true or false, got {critical!r}.")

    run_as = None
    _text(raw.get("run_as"), f"{where}: run_as")
    _text(raw.get("company"), f"{where}: company")
    _text(raw.get("active_period"), f"{where}: active_period")
    if raw.get("run_as") not in (None, ""):
        try:
            run_as = get_user_model().objects.get(username=raw["run_as"])
        except get_user_model().DoesNotExist:
            raise ImportFailure(f"{where}: unknown run_as user {raw['run_as']!r}.") from None

    raw_tasks = raw.get("tasks", [])
    if not isinstance(raw_tasks, list):
        raise ImportFailure(f'{where}: "tasks" must be a list.')
    companies = set(Company.objects.values_list("code", flat=True))
    company = raw.get("company") or None
    if company is not None and company not in companies:
        raise ImportFailure(f"{where}: unknown company {company!r}.")
    active_period = None
    if raw.get("active_period") not in (None, ""):
        active_period = ActivePeriod.objects.filter(code=raw["active_period"]).first()
        if active_period is None:
            raise ImportFailure(f"{where}: unknown active period {raw['active_period']!r}.")
    job = _Job(
        description,
        scheduled_start,
        status,
        priority,
        run_as,
        company,
        active_period=active_period,
        save_history=save_history,
        critical=critical,
        recurrence=recurring,
    )
    job.deadline_time, job.deadline_minutes = _parse_deadline(raw.get("deadline"), where)
    job.key, job.after, job.after_status = _parse_trigger(raw, where)
    for i, raw_task in enumerate(raw_tasks, 1):
        job.tasks.append(_parse_task(raw_task, i, where, known_groups, companies))
    _check_conditions(job, where)
    return job


def _check_run_by(job: _Job, where: str, user: Any) -> None:
    """The processes the importer and the job's Run by may run (access.may_run), and the time
    limits a Batch user's task may have. ``user`` None: the shell's `batch import` without
    --user, the system."""
    run_as = job.run_as or user
    ceiling = access.time_limit_ceiling(run_as)
    for task in job.tasks:
        here = f"{where}, task {task.key!r}"
        try:
            for who in {user, run_as}:
                access.check_processes(who, [task.process])
        except registry.ProcessNotAllowed as exc:
            raise ImportRefused(f"{here}: {exc}") from None
        if ceiling is None:
            continue
        if task.time_limit is not None and task.time_limit > ceiling:
            raise ImportRefused(
                f"{here}: time_limit {task.time_limit} is above {ceiling} seconds, the most a "
                "task run as a Batch user may have (BATCH_USER_MAX_TIME_LIMIT)."
            )
        if task.time_limit is None and ceiling < settings.BATCH_TASK_TIME_LIMIT_SECONDS:
            task.time_limit = ceiling  # the default is above what this job may have


def _parse_trigger(raw: Any, where: str) -> tuple[str | None, str | int | None, AfterStatus]:
    """ "key" (names the job in the file) and "trigger": {"after": KEY_OR_JOB_ID, "status"}."""
    key = raw.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > 50):
        raise ImportFailure(f'{where}: "key" must be a string of 1 to 50 characters, got {key!r}.')
    spec = raw.get("trigger")
    if spec is None:
        return key, None, AfterStatus.ENDED
    if not isinstance(spec, dict):
        raise ImportFailure(
            f'{where}: "trigger" must be an object: {{"after": KEY_OR_JOB_ID, "status": ...}}.'
        )
    _check_keys(spec, TRIGGER_KEYS, f"{where}, trigger")
    after = spec.get("after")
    if isinstance(after, bool) or not isinstance(after, str | int) or after == "":
        raise ImportFailure(
            f'{where}, trigger: "after" must name a job: the "key" of a job in this file or '
            f"the id of a batch job, got {after!r}."
        )
    status = _choice(
        spec.get("status", AfterStatus.ENDED.value), AFTER_STATUS_NAMES, f"{where}, trigger: status"
    )
    return key, after, status


def _check_triggers(jobs: list[_Job]) -> None:
    """Keys are unique in the file; each trigger names a job of the file or one that exists;
    the triggers of the file do not loop (existing jobs cannot follow the new ones)."""
    keys: dict[str, int] = {}
    for i, job in enumerate(jobs, 1):
        if job.key is None:
            continue
        if job.key in keys:
            raise ImportFailure(
                f"job {i} ({job.description!r}): key {job.key!r} is in the file twice."
            )
        keys[job.key] = i
    ids = {j.after for j in jobs if isinstance(j.after, int)}
    known = set(BatchJob.objects.filter(pk__in=ids).values_list("pk", flat=True))
    for i, job in enumerate(jobs, 1):
        where = f"job {i} ({job.description!r}), trigger"
        if isinstance(job.after, str) and job.after not in keys:
            raise ImportFailure(
                f"{where}: no job in the file has the key {job.after!r}"
                + (f" (keys: {', '.join(sorted(keys))})." if keys else '; give that job a "key".')
            )
        if isinstance(job.after, int) and job.after not in known:
            raise ImportFailure(f"{where}: there is no batch job {job.after}.")
        if job.key is not None and job.after == job.key:
            raise ImportFailure(f"{where}: the job can't be triggered by itself.")
    loop = triggers.cycle_in(
        {j.key: j.after if isinstance(j.after, str) else None for j in jobs if j.key is not None}
    )
    if loop:
        raise ImportFailure(
            f"The triggers of jobs {', '.join(repr(k) for k in loop[:-1])} loop "
            f"({' → '.join(loop)}): a job can't run after itself."
        )


def _save_triggers(parsed: list[_Job], saved: list[BatchJob], user: Any) -> None:
    by_key = {p.key: job for p, job in zip(parsed, saved, strict=True) if p.key is not None}
    for p, job in zip(parsed, saved, strict=True):
        if p.after is None:
            continue
        after_id = by_key[p.after].pk if isinstance(p.after, str) else p.after
        BatchJob.objects.filter(pk=job.pk).update(
            after_job_id=after_id, after_status=p.after_status
        )
        job.after_job_id, job.after_status = after_id, p.after_status
        trail.record(
            trail.Action.TRIGGER_EDIT,
            user=user,
            job=job,
            target="job",
            changes={"Triggered by job": [None, triggers.describe(after_id, p.after_status)]},
            via=trail.Via.IMPORT,
        )


def _parse_deadline(raw: Any, where: str) -> tuple[dt.time | None, int | None]:
    """{"at": "HH:MM"} (the job's zone) or {"within_minutes": N}; null: none."""
    if raw is None:
        return None, None
    if isinstance(raw, dict) and set(raw) == {"at"}:
        try:
            at = parse_time(raw["at"]) if isinstance(raw["at"], str) else None
        except ValueError:  # well formed but impossible: 25:00
            at = None
        if at is None:
            raise ImportFailure(f"{where}: deadline at {raw['at']!r} is not a time (HH:MM).")
        return at, None
    if isinstance(raw, dict) and set(raw) == {"within_minutes"}:
        minutes = raw["within_minutes"]
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int)
            or not 1 <= minutes <= deadlines.MAX_WITHIN_MINUTES
        ):
            raise ImportFailure(
                f"{where}: deadline within_minutes must be a whole number from 1 to "
                f"{deadlines.MAX_WITHIN_MINUTES} (7 days), got {minutes!r}."
            )
        return None, minutes
    raise ImportFailure(f'{where}: deadline is {{"at": "HH:MM"}}, {{"within_minutes": N}} or null.')


def _rule(values: dict[str, Any], calendars: dict[str, frozenset[dt.date]]) -> recurrence.Rule:
    """The rule of parsed recurrence values; "calendar" is still a code here."""
    fields = {k: v for k, v in values.items() if k != "calendar"}
    rule = BatchRecurrence(**fields).rule()
    code = values.get("calendar")
    if code is None:
        return rule
    return dataclasses.replace(rule, calendar=calendars[code], calendar_name=code)


def _parse_recurrence(
    raw: Any, where: str, calendars: dict[str, frozenset[dt.date]]
) -> dict[str, Any]:
    """The BatchRecurrence field values of a "recurrence" object (see export_recurrence),
    with "calendar" a calendar's code."""
    if not isinstance(raw, dict):
        raise ImportFailure(f"{where}: must be an object.")
    _check_keys(raw, RECURRENCE_KEYS, where)
    time_zone = raw.get("timezone", settings.TIME_ZONE)
    if not isinstance(time_zone, str):
        raise ImportFailure(f"{where}: timezone must be an IANA zone name like Europe/Oslo.")
    try:
        tz = recurrence.zone(time_zone)
    except recurrence.RuleError as exc:
        raise ImportFailure(f"{where}: {exc}") from None

    raw_start = raw.get("start")
    if raw_start is None:
        # D365: no start date and time means now.
        start = now().astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    else:
        parsed = _instant(raw_start, f"{where}: start")
        # The start is a wall-clock time in the zone; an offset, if given, only says which.
        start = parsed if is_naive(parsed) else parsed.astimezone(tz).replace(tzinfo=None)

    values: dict[str, Any] = {
        "start_date": start.date(),
        "start_time": start.time(),
        "time_zone": time_zone,
        "missed": _choice(
            raw.get("missed", BatchRecurrence.Missed.RUN_ONCE),
            {m.value: m.value for m in BatchRecurrence.Missed},
            f"{where}: missed",
        ),
        "overlap": _choice(
            raw.get("overlap", BatchRecurrence.Overlap.SKIP),
            {o.value: o.value for o in BatchRecurrence.Overlap},
            f"{where}: overlap",
        ),
    }
    values |= _parse_end(raw.get("end"), where)
    values |= _parse_pattern(raw.get("pattern"), start, where)
    code = _text(raw.get("calendar"), f"{where}: calendar")
    if code is not None:
        if code not in calendars:
            raise ImportFailure(
                f'{where}: unknown calendar {code!r}: name one of the file\'s "calendars" '
                "or one that exists."
            )
        values["calendar"] = code
    values["on_calendar_date"] = _choice(
        raw.get("on_calendar_date", BatchRecurrence.OnCalendarDate.SKIP),
        {c.value: c.value for c in BatchRecurrence.OnCalendarDate},
        f"{where}: on_calendar_date",
    )
    try:
        _rule(values, calendars).check()
    except recurrence.RuleError as exc:
        raise ImportFailure(f"{where}: {exc}") from None
    return values


def _parse_end(end: Any, where: str) -> dict[str, Any]:
    if end is None:
        return {}
    if isinstance(end, dict) and set(end) == {"after"}:
        after = end["after"]
        if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= INT_MAX:
            raise ImportFailure(
                f"{where}: end after must be a whole number of runs from 1 to {INT_MAX}, "
                f"got {after!r}."
            )
        return {"end_after": after}
    if isinstance(end, dict) and set(end) == {"by"}:
        return {"end_by": _date(end["by"], f"{where}: end by")}
    raise ImportFailure(f'{where}: end is {{"after": N}}, {{"by": "YYYY-MM-DD"}} or null.')


def _parse_pattern(pattern: Any, start: dt.datetime, where: str) -> dict[str, Any]:
    """Pattern fields, with what the dialog takes from the start filled in explicitly."""
    if not isinstance(pattern, dict):
        raise ImportFailure(
            f'{where}: pattern is {{"unit": ..., "every": N, ...}} or {{"cron": ...}}.'
        )
    if "cron" in pattern:
        _check_keys(pattern, {"cron"}, f"{where}, pattern")
        if not isinstance(pattern["cron"], str):
            raise ImportFailure(f"{where}: cron must be a string.")
        return {"unit": recurrence.CRON, "cron": recurrence.expand_cron(pattern["cron"])}
    unit = _choice(pattern.get("unit"), {u: u for u in PATTERN_KEYS}, f"{where}: unit")
    _check_keys(pattern, {"unit", "every"} | PATTERN_KEYS[unit], f"{where}, {unit} pattern")
    every = pattern.get("every", 1)
    if (
        isinstance(every, bool)
        or not isinstance(every, int)
        or not 1 <= every <= recurrence.MAX_EVERY[unit]
    ):
        raise ImportFailure(
            f"{where}: every must be a whole number from 1 to {recurrence.MAX_EVERY[unit]:,} "
            f"({unit}: 100 years), got {every!r:.40}."
        )
    values: dict[str, Any] = {"unit": unit, "every": every}
    weekday_names = {w: w for w in recurrence.WEEKDAYS}
    if unit == recurrence.WEEKS:
        weekdays = pattern.get("weekdays", [recurrence.WEEKDAYS[start.weekday()]])
        if not isinstance(weekdays, list) or not weekdays:
            raise ImportFailure(f'{where}: weekdays is a list like ["mon", "thu"].')
        chosen = {_choice(w, weekday_names, f"{where}: weekday") for w in weekdays}
        values["weekdays"] = [w for w in recurrence.WEEKDAYS if w in chosen]
    if unit in (recurrence.MONTHS, recurrence.YEARS):
        for key in ("day", "nth", "month"):
            value = pattern.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ImportFailure(f"{where}: {key} must be a whole number.")
        if "nth" in pattern or "weekday" in pattern:
            if pattern.get("nth") not in recurrence.NTH_WORDS:
                raise ImportFailure(f"{where}: nth is 1, 2, 3, 4 or -1 (the last).")
            values["nth"] = pattern["nth"]
            values["weekday"] = _choice(pattern.get("weekday"), weekday_names, f"{where}: weekday")
            if "day" in pattern:
                raise ImportFailure(f"{where}: a day of the month or an nth weekday, not both.")
        else:
            values["day"] = pattern.get("day", start.day)
        if unit == recurrence.YEARS:
            values["month"] = pattern.get("month", start.month)
    return values


def _parse_task(
    raw: Any, index: int, job_where: str, known_groups: set[str], companies: set[str]
) -> _Task:
    where = f"{job_where}, task {index}"
    if not isinstance(raw, dict):
        raise ImportFailure(f"{where}: must be an object.")
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip() or len(key) > 50:
        raise ImportFailure(f'{where}: "key" is required (a string of at most 50 characters).')
    where = f"{job_where}, task {key!r}"
    _check_keys(raw, TASK_KEYS, where)

    name = raw.get("process")
    if not isinstance(name, str):
        raise ImportFailure(f'{where}: "process" is required.')
    try:
        process = registry.get(name)
    except registry.UnknownProcess:
        raise ImportFailure(f"{where}: unknown process {name!r}.") from None
    try:
        parameters = process.clean_parameters(raw.get("parameters") or {})
    except registry.ParameterError as exc:
        raise ImportFailure(f"{where}: invalid parameters for {name}: {exc.describe()}") from None

    group = _text(raw.get("group"), f"{where}: group") or DEFAULT_GROUP_CODE
    _text(raw.get("company"), f"{where}: company")
    if group not in known_groups:
        raise ImportFailure(f"{where}: unknown batch group {group!r}.")
    company = raw.get("company") or None
    if company is not None and company not in companies:
        raise ImportFailure(f"{where}: unknown company {company!r}.")

    ignore_failure = raw.get("ignore_failure", False)
    if not isinstance(ignore_failure, bool):
        raise ImportFailure(f"{where}: ignore_failure must be true or false.")
    max_retries = raw.get("max_retries", 0)
    if (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)
        or not 0 <= max_retries <= MAX_RETRIES_LIMIT
    ):
        raise ImportFailure(
            f"{where}: max_retries must be a whole number from 0 to {MAX_RETRIES_LIMIT}, got {max_retries!r}."
        )
    time_limit = raw.get("time_limit")
    if time_limit is not None and (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, int)
        or not 1 <= time_limit <= TIME_LIMIT_MAX_SECONDS
    ):
        raise ImportFailure(
            f"{where}: time_limit must be a whole number of seconds from 1 to "
            f"{TIME_LIMIT_MAX_SECONDS} (7 days), or null for the default, got {time_limit!r}."
        )
    condition_type = _choice(
        raw.get("condition_type", "all"),
        {c.value: c.value for c in BatchTask.ConditionType},
        f"{where}: condition_type",
    )

    raw_conditions = raw.get("conditions", [])
    if not isinstance(raw_conditions, list):
        raise ImportFailure(f'{where}: "conditions" must be a list.')
    statuses = {s.value: s.value for s in BatchTaskCondition.ExpectedStatus}
    conditions = []
    for c in raw_conditions:
        if (
            not isinstance(c, dict)
            or set(c) - {"task", "status"}
            or not isinstance(c.get("task"), str)
        ):
            raise ImportFailure(
                f'{where}: each condition is {{"task": key, "status": "ended" | "error" | "ended_or_error"}}.'
            )
        conditions.append(
            (
                c["task"],
                _choice(c.get("status", "ended"), statuses, f"{where}: condition status"),
            )
        )

    description = raw.get("description") or key
    if not isinstance(description, str) or len(description) > 200:
        raise ImportFailure(f"{where}: description must be a string of at most 200 characters.")
    return _Task(
        key,
        description,
        name,
        parameters,
        group,
        company,
        ignore_failure,
        max_retries,
        condition_type,
        conditions,
        time_limit,
    )


def _check_conditions(job: _Job, where: str) -> None:
    # Counted in one pass: a file of 100,000 tasks (keys.count per key took minutes).
    duplicates = sorted(k for k, n in Counter(t.key for t in job.tasks).items() if n > 1)
    if duplicates:
        raise ImportFailure(f"{where}: task key {duplicates[0]!r} is used twice.")
    known = {t.key for t in job.tasks}
    for task in job.tasks:
        seen = set()
        for parent, _ in task.conditions:
            if parent not in known:
                raise ImportFailure(
                    f"{where}, task {task.key!r}: condition on unknown task {parent!r}."
                )
            if parent == task.key:
                raise ImportFailure(
                    f"{where}, task {task.key!r}: a task can't have a condition on itself."
                )
            if parent in seen:
                raise ImportFailure(
                    f"{where}, task {task.key!r}: two conditions on task {parent!r}."
                )
            seen.add(parent)
    cycle = find_cycle({t.key: [p for p, _ in t.conditions] for t in job.tasks})
    if cycle:
        path = " -> ".join(repr(k) for k in reversed(cycle))
        raise ImportFailure(f"{where}: the conditions form a cycle: {path}.")


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ImportFailure(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}.")


def _choice(value: Any, options: dict[str, Any], where: str) -> Any:
    if isinstance(value, list | dict) or value not in options:  # JSON lists can't be looked up
        raise ImportFailure(f"{where} {value!r} is not one of {', '.join(options)}.")
    return options[value]


# What the audit trail compares of a group an import creates or changes.
GROUP_AUDIT_FIELDS = [
    "code",
    "description",
    "default_priority",
    "max_concurrency",
    "max_tasks",
    "reserved_capacity",
    "servers",
]


def _save_group(group: _Group, user: Any) -> None:
    existing = BatchGroup.objects.filter(code=group.code).first()
    before = trail.snapshot(existing, GROUP_AUDIT_FIELDS) if existing else {}
    # A key left out leaves that part of an existing group as it is.
    defaults: dict[str, Any] = {}
    if group.description is not None:
        defaults["description"] = group.description
    if group.priority is not None:
        defaults["default_priority"] = group.priority
    if group.max_concurrency is not None:
        defaults["max_concurrency"] = group.max_concurrency
    if group.reserved_capacity is not None:
        defaults["reserved_capacity"] = group.reserved_capacity
    if group.max_tasks is not None:
        defaults["max_tasks"] = group.max_tasks
    obj, _ = BatchGroup.objects.update_or_create(code=group.code, defaults=defaults)
    if group.servers is None:
        _audit_group(obj, existing, before, user)
        return
    servers = []
    for name in group.servers:
        # A server first named here serves only the groups assigned to it (D365: a server with
        # a named group runs the default group only if that is assigned too).
        server, _ = BatchServer.objects.get_or_create(name=name)
        servers.append(server)
    obj.servers.set(servers)
    _audit_group(obj, existing, before, user)


def _audit_group(
    obj: BatchGroup, existing: BatchGroup | None, before: dict[str, Any], user: Any
) -> None:
    trail.record_edit(
        trail.Action.GROUP_EDIT if existing else trail.Action.GROUP_ADD,
        before=before,
        after=trail.snapshot(obj, GROUP_AUDIT_FIELDS),
        user=user,
        target=f"batch group {obj.code}",
        via=trail.Via.IMPORT,
    )


def _save_calendar(parsed: _Calendar) -> None:
    defaults = {} if parsed.description is None else {"description": parsed.description}
    calendar, _ = Calendar.objects.update_or_create(code=parsed.code, defaults=defaults)
    if parsed.dates is None:
        return
    # The file's dates are the complete set; a date kept keeps its description.
    calendar.dates.exclude(date__in=parsed.dates).delete()
    CalendarDate.objects.bulk_create(
        [CalendarDate(calendar=calendar, date=d) for d in parsed.dates], ignore_conflicts=True
    )
    calendar_forms.reschedule_users(calendar)


def _save_job(parsed: _Job, user: Any) -> BatchJob:
    job = BatchJob.objects.create(
        description=parsed.description,
        scheduled_start=parsed.scheduled_start,
        status=parsed.status,
        priority=Priority.NORMAL if parsed.priority is None else parsed.priority,
        priority_overridden=parsed.priority is not None,
        run_as=parsed.run_as,
        created_by=user,
        company=Company.objects.get(code=parsed.company) if parsed.company else None,
        active_period=parsed.active_period,
        save_history=parsed.save_history,
        critical=parsed.critical,
        deadline_time=parsed.deadline_time,
        deadline_minutes=parsed.deadline_minutes,
    )
    if parsed.recurrence is not None:
        values = dict(parsed.recurrence)
        if values.get("calendar") is not None:
            values["calendar"] = Calendar.objects.get(code=values["calendar"])
        BatchRecurrence.objects.create(job=job, **values)
    groups = {g.code: g for g in BatchGroup.objects.all()}
    companies = {c.code: c for c in Company.objects.all()}
    tasks = BatchTask.objects.bulk_create(
        BatchTask(
            job=job,
            key=t.key,
            description=t.description,
            process=t.process,
            parameters=t.parameters,
            group=groups[t.group],
            company=companies[t.company] if t.company else None,
            ignore_failure=t.ignore_failure,
            max_retries=t.max_retries,
            time_limit=t.time_limit,
            condition_type=t.condition_type,
            position=i,
        )
        for i, t in enumerate(parsed.tasks)
    )
    by_key = {t.key: t for t in tasks}
    BatchTaskCondition.objects.bulk_create(
        BatchTaskCondition(task=by_key[t.key], depends_on=by_key[parent], expected_status=status)
        for t in parsed.tasks
        for parent, status in t.conditions
    )
    after = trail.snapshot(job, JOB_AUDIT_FIELDS)
    after["Tasks"] = [t.key for t in parsed.tasks]
    if parsed.recurrence is not None:
        after["Recurrence"] = job.recurrence.describe()
    trail.record(
        trail.Action.JOB_IMPORT,
        user=user,
        job=job,
        target="job",
        changes=trail.changed({}, after),
        via=trail.Via.IMPORT,
    )
    return job


def _parse_webhooks(raw_hooks: list[Any]) -> list[dict[str, Any]]:
    """Webhook field values; a code that exists already is updated (its URL, secret, ...)."""
    hooks: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_hooks, 1):
        where = f"webhook {index}"
        if not isinstance(raw, dict):
            raise ImportFailure(f"{where}: must be an object.")
        code = raw.get("code")
        if not isinstance(code, str):
            raise ImportFailure(f'{where}: "code" is required.')
        where = f"webhook {code!r}"
        _check_keys(raw, WEBHOOK_KEYS, where)
        _validate_code(code, where)
        if code in seen:
            raise ImportFailure(f"{where}: defined twice.")
        seen.add(code)
        values: dict[str, Any] = {"code": code}
        for key in ("url", "secret"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ImportFailure(f'{where}: "{key}" is required (a string).')
        values["format"] = _choice(
            raw.get("format", Webhook.Format.JSON.value),
            {f.value: f.value for f in Webhook.Format},
            f"{where}: format",
        )
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise ImportFailure(f'{where}: "description" must be a string.')
        values |= {"url": raw["url"], "secret": raw["secret"], "description": description}
        webhook = Webhook(**values)
        try:
            webhook.clean_fields(exclude=["code"])
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise ImportFailure(f"{where}: {problems}") from None
        hooks.append(values)
    return hooks


@dataclass
class _Alert:
    events: dict[str, bool]
    webhook: str | None = None  # a webhook's code, or
    user: Any = None  # a user: popup and/or e-mail
    popup: bool = True
    email: bool = False


def _parse_alerts(raw_job: Any, where: str, known_hooks: set[str]) -> list[_Alert]:
    """A job's "alerts": [{"webhook": CODE, "on": [...]}, {"user": NAME, "on": [...],
    "popup": bool, "email": bool}], as its Alerts dialog sets them."""
    raw_alerts = raw_job.get("alerts", []) if isinstance(raw_job, dict) else []
    if not isinstance(raw_alerts, list):
        raise ImportFailure(f'{where}: "alerts" must be a list.')
    alerts: list[_Alert] = []
    seen: set[str] = set()
    users = get_user_model().objects
    for index, raw in enumerate(raw_alerts, 1):
        here = f"{where}, alert {index}"
        if not isinstance(raw, dict) or ("webhook" in raw) == ("user" in raw):
            raise ImportFailure(
                f'{here}: each alert is {{"webhook": CODE, "on": [...]}} or '
                '{"user": USERNAME, "on": [...], "popup": true, "email": false}.'
            )
        on = raw.get("on")
        if not isinstance(on, list) or not on:
            raise ImportFailure(
                f'{here}: "on" lists one or more of ended, error, canceled, deadline.'
            )
        chosen = {_choice(e, {e: e for e in ALERT_EVENTS}, f"{here}: event") for e in on}
        events = {e: e in chosen for e in ALERT_EVENTS}
        if "webhook" in raw:
            _check_keys(raw, {"webhook", "on"}, here)
            code = raw["webhook"]
            if not isinstance(code, str) or code not in known_hooks:
                raise ImportFailure(f"{here}: unknown webhook {code!r}.")
            key = f"webhook:{code}"
            alert = _Alert(events, webhook=code)
        else:
            _check_keys(raw, {"user", "on", "popup", "email"}, here)
            name = raw["user"]
            user = users.filter(username=name).first() if isinstance(name, str) else None
            if user is None:
                raise ImportFailure(f"{here}: unknown user {name!r}.")
            popup, email = raw.get("popup", True), raw.get("email", False)
            if not isinstance(popup, bool) or not isinstance(email, bool):
                raise ImportFailure(f"{here}: popup and email are true or false.")
            if not popup and not email:
                raise ImportFailure(f"{here}: choose how to alert {name}: popup, email or both.")
            if email and not user.email:
                raise ImportFailure(f"{here}: user {name!r} has no e-mail address.")
            key = f"user:{name}"
            alert = _Alert(events, user=user, popup=popup, email=email)
        if key in seen:
            raise ImportFailure(f"{here}: {key.replace(':', ' ')} is listed twice.")
        seen.add(key)
        alerts.append(alert)
    return alerts


def _save_alerts(job: BatchJob, alerts: list[_Alert]) -> None:
    hooks = {h.code: h for h in Webhook.objects.filter(code__in=[a.webhook for a in alerts])}
    JobWebhook.objects.bulk_create(
        JobWebhook(job=job, webhook=hooks[a.webhook], **a.events) for a in alerts if a.webhook
    )
    BatchJobAlert.objects.bulk_create(
        BatchJobAlert(job=job, user=a.user, popup=a.popup, email=a.email, **a.events)
        for a in alerts
        if a.user is not None
    )


def export_alerts(job: BatchJob) -> list[dict[str, Any]]:
    """The job's "alerts": its webhooks by code, then its users' alerts by username."""
    alerts: list[dict[str, Any]] = []
    for hook in (
        JobWebhook.objects.filter(job=job).select_related("webhook").order_by("webhook__code")
    ):
        if hook.events():
            alerts.append({"webhook": hook.webhook.code, "on": hook.events()})
    for alert in (
        BatchJobAlert.objects.filter(job=job).select_related("user").order_by("user__username")
    ):
        on = [e for e in ALERT_EVENTS if getattr(alert, e)]
        if on:
            alerts.append(
                {
                    "user": alert.user.get_username(),
                    "on": on,
                    "popup": alert.popup,
                    "email": alert.email,
                }
            )
    return alerts


def export_job(job: BatchJob) -> dict[str, Any]:
    """The JSON import_data accepts; importing it gives an equal job."""
    tasks = list(job.tasks.select_related("group", "company").order_by("position", "pk"))
    conditions: dict[int, list[dict[str, str]]] = {}
    for c in (
        BatchTaskCondition.objects.filter(task__job=job).select_related("depends_on").order_by("pk")
    ):
        conditions.setdefault(c.task_id, []).append(
            {"task": c.depends_on.key, "status": c.expected_status}
        )
    data: dict[str, Any] = {
        "description": job.description,
        "scheduled_start": job.scheduled_start.isoformat(),
        "status": "withhold" if job.status == BatchStatus.WITHHOLD else "waiting",
        "save_history": job.save_history,
        "critical": job.critical,
    }
    if job.priority_overridden:
        data["priority"] = Priority(job.priority).name.lower()
    if job.run_as_id:
        assert job.run_as is not None
        data["run_as"] = job.run_as.get_username()
    if job.company_id:
        assert job.company is not None
        data["company"] = job.company.code
    if job.active_period_id:
        assert job.active_period is not None
        data["active_period"] = job.active_period.code
    recurring = job.get_recurrence()
    if recurring is not None:
        data["recurrence"] = export_recurrence(recurring)
    if job.deadline_time is not None:
        spec = "seconds" if job.deadline_time.second else "minutes"
        data["deadline"] = {"at": job.deadline_time.isoformat(timespec=spec)}
    elif job.deadline_minutes is not None:
        data["deadline"] = {"within_minutes": job.deadline_minutes}
    data["tasks"] = []
    for t in tasks:
        item: dict[str, Any] = {
            "key": t.key,
            "description": t.description,
            "process": t.process,
            "parameters": t.parameters,
            "group": "" if t.group.is_default() else t.group.code,
        }
        if t.company:
            item["company"] = t.company.code
        item |= {
            "ignore_failure": t.ignore_failure,
            "max_retries": t.max_retries,
            "condition_type": t.condition_type,
            "conditions": conditions.get(t.pk, []),
        }
        if t.time_limit is not None:
            item["time_limit"] = t.time_limit  # seconds; left out: the server default
        data["tasks"].append(item)
    alerts = export_alerts(job)
    if alerts:
        data["alerts"] = alerts
    if job.after_job_id is not None:
        data["trigger"] = {"after": job.after_job_id, "status": job.after_status}
    return data


def export_recurrence(r: BatchRecurrence) -> dict[str, Any]:
    """The "recurrence" object: start is the local date and time in "timezone" (no offset)."""
    end: dict[str, Any] | None = None
    if r.end_after is not None:
        end = {"after": r.end_after}
    elif r.end_by is not None:
        end = {"by": r.end_by.isoformat()}
    pattern: dict[str, Any]
    if r.unit == BatchRecurrence.Unit.CRON:
        pattern = {"cron": r.cron}
    else:
        pattern = {"unit": r.unit, "every": r.every}
        if r.unit == BatchRecurrence.Unit.WEEKS:
            pattern["weekdays"] = list(r.weekdays)
        if r.unit == BatchRecurrence.Unit.YEARS:
            pattern["month"] = r.month
        if r.unit in (BatchRecurrence.Unit.MONTHS, BatchRecurrence.Unit.YEARS):
            if r.nth is not None:
                pattern |= {"nth": r.nth, "weekday": r.weekday}
            else:
                pattern["day"] = r.day
    data: dict[str, Any] = {
        "start": r.start().isoformat(),
        "timezone": r.time_zone,
        "end": end,
        "pattern": pattern,
        "missed": r.missed,
        "overlap": r.overlap,
    }
    if r.calendar is not None:
        data |= {"calendar": r.calendar.code, "on_calendar_date": r.on_calendar_date}
    return data


def export_calendar(calendar: Calendar) -> dict[str, Any]:
    return {
        "code": calendar.code,
        "description": calendar.description,
        "dates": [d.isoformat() for d in calendar.dates.values_list("date", flat=True)],
    }


def export_file(job: BatchJob) -> dict[str, Any]:
    """What `batch export` prints: the job, with the calendar its recurrence uses, so that the
    file imports on its own elsewhere ({"calendars": [...], "jobs": [job]}); a job without a
    calendar is the job alone, as before calendars existed."""
    data = export_job(job)
    recurring = job.get_recurrence()
    if recurring is None or recurring.calendar is None:
        return data
    return {"calendars": [export_calendar(recurring.calendar)], "jobs": [data]}


def show_job(job: BatchJob) -> dict[str, Any]:
    """A job and its tasks as `batch show --json` and `GET /api/v1/jobs/ID` print it."""
    runs = BatchTaskRun.objects.filter(job_run_id=job.current_run_id, attempt__gt=0).select_related(
        "server"
    )
    last_server = {r.task_id: r.server.name if r.server else None for r in runs.order_by("attempt")}
    # Log lines of each task's last attempt (a skip's row is no attempt), whichever run it was.
    last_attempt = (
        BatchTaskRun.objects.filter(task=OuterRef(OuterRef("pk")), attempt__gt=0)
        .exclude(status=BatchStatus.SKIPPED)
        .order_by("-pk")
        .values("pk")[:1]
    )
    lines = (
        BatchLogEntry.objects.filter(task_run=Subquery(last_attempt))
        .order_by()
        .values("task_run")
        .annotate(n=Count("pk"))
        .values("n")
    )
    # Any: django-stubs does not see the annotation (BatchTaskQuerySet says why).
    tasks: Any = job.tasks.annotate(log_lines=Coalesce(Subquery(lines), 0))
    tasks = tasks.order_by("position", "pk")
    job_runs = BatchJobRun.objects.filter(job=job)
    last = job_runs.order_by("-started_at", "-pk").values("status", "ended_at").first()
    return {
        "id": job.pk,
        "description": job.description,
        "status": job.status,
        "runs": job_runs.count(),
        "last_run": last,
        "tasks": [
            {
                "key": t.key,
                "description": t.description,
                "status": t.status,
                "server": last_server.get(t.pk),
                "retries": t.retries,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "log_lines": t.log_lines,
            }
            for t in tasks
        ],
    }


def show_trigger(job: BatchJob) -> dict[str, Any]:
    """GET /api/v1/jobs/ID/trigger: the job this one runs after (None: none) and on which
    status, and the jobs that run after it. (`batch show --json` keeps its shape.)"""
    return {
        "after": job.after_job_id,
        "status": job.after_status,
        "followers": list(job.followers.order_by("pk").values_list("pk", flat=True)),
    }


def needs_manager(data: Any, *, username: str) -> str:
    """What in an import only a Batch job manager may ask for, as the pages allow it, or "".

    For the API, where a Batch user imports too: batch groups are set up by managers; Run by
    another user and Critical are fields only a manager may change on the job form. Read
    leniently: whatever is malformed here, import_data refuses with its own message.
    """
    if not isinstance(data, dict):
        return ""
    if "groups" in data and data["groups"]:
        return "Only a Batch job manager can set up batch groups."
    if "webhooks" in data and data["webhooks"]:
        return "Only a Batch job manager can set up webhooks."
    if "calendars" in data and data["calendars"]:
        return "Only a Batch job manager can set up calendars."
    several = bool(TOP_LEVEL_KEYS & set(data))
    raw_jobs = data.get("jobs", []) if several else [data]
    for index, job in enumerate(raw_jobs if isinstance(raw_jobs, list) else [], 1):
        if not isinstance(job, dict):
            continue
        where = f"job {index}"
        if job.get("run_as") not in (None, "", username):
            return f"{where}: only a Batch job manager can set Run by to another user."
        if job.get("critical") is True:
            return f"{where}: only a Batch job manager can make a job critical."
        alerts = job.get("alerts")
        for n, alert in enumerate(alerts if isinstance(alerts, list) else [], 1):
            if isinstance(alert, dict) and alert.get("user") not in (None, username):
                return f"{where}, alert {n}: only a Batch job manager can set alerts for others."
    return ""
