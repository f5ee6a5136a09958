"""Import and export of batch jobs as JSON (the `manage.py batch import/export` contract).

Import validates the whole file before writing anything and creates everything in one
transaction: a bad file fails with a message that names the culprit and creates nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware, now

from batchadmin.jobs.models import (
    MAX_RETRIES_LIMIT,
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    Company,
    Priority,
)
from batchadmin.lib.graph import find_cycle
from batchadmin.processes import registry
from batchadmin.servers.models import (
    CODE_VALIDATOR,
    DEFAULT_GROUP_CODE,
    BatchGroup,
    BatchServer,
)

PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
IMPORT_STATUSES = {"waiting": BatchStatus.WAITING, "withhold": BatchStatus.WITHHOLD}
JOB_KEYS = {"description", "scheduled_start", "status", "priority", "run_as", "company", "tasks"}
TASK_KEYS = {
    "key",
    "description",
    "process",
    "parameters",
    "group",
    "company",
    "ignore_failure",
    "max_retries",
    "condition_type",
    "conditions",
}
GROUP_KEYS = {"code", "description", "servers"}


class ImportFailure(ValueError):
    pass


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


@dataclass
class _Job:
    description: str
    scheduled_start: dt.datetime
    status: BatchStatus
    priority: Priority
    run_as: Any
    company: str | None
    tasks: list[_Task] = field(default_factory=list)


@dataclass
class _Group:
    code: str
    description: str | None
    servers: list[str] | None  # None: leave the group's servers as they are


def import_data(data: Any, *, user: Any = None) -> list[BatchJob]:
    """Create the groups and jobs that ``data`` describes; return the jobs in file order."""
    if not isinstance(data, dict):
        raise ImportFailure(
            'The file must hold a JSON object: a job, or {"groups": [...], "jobs": [...]}.'
        )
    if "jobs" in data or "groups" in data:
        extra = set(data) - {"jobs", "groups"}
        if extra:
            raise ImportFailure(f"Unknown top-level key(s): {', '.join(sorted(extra))}.")
        raw_groups, raw_jobs = data.get("groups", []), data.get("jobs", [])
        if not isinstance(raw_groups, list) or not isinstance(raw_jobs, list):
            raise ImportFailure('"groups" and "jobs" must be lists.')
    else:
        raw_groups, raw_jobs = [], [data]
    groups = [_parse_group(g, i) for i, g in enumerate(raw_groups, 1)]
    known_groups = set(BatchGroup.objects.values_list("code", flat=True)) | {g.code for g in groups}
    jobs = [_parse_job(j, i, known_groups) for i, j in enumerate(raw_jobs, 1)]
    with transaction.atomic():
        for group in groups:
            _save_group(group)
        return [_save_job(job, user) for job in jobs]


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
    if description is not None and not isinstance(description, str):
        raise ImportFailure(f'{where}: "description" must be a string.')
    return _Group(code, description, servers)


def _validate_code(code: str, where: str) -> None:
    try:
        CODE_VALIDATOR(code)
    except ValidationError as exc:
        raise ImportFailure(f"{where}: {' '.join(exc.messages)}") from None


def _parse_job(raw: Any, index: int, known_groups: set[str]) -> _Job:
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

    start = raw.get("scheduled_start")
    if start is None:
        scheduled_start = now()
    else:
        parsed = parse_datetime(start) if isinstance(start, str) else None
        if parsed is None:
            raise ImportFailure(
                f"{where}: scheduled_start {start!r} is not an ISO-8601 date and time."
            )
        scheduled_start = make_aware(parsed) if is_naive(parsed) else parsed

    status = _choice(raw.get("status", "waiting"), IMPORT_STATUSES, f"{where}: status")
    priority = _choice(raw.get("priority", "normal"), PRIORITY_NAMES, f"{where}: priority")

    run_as = None
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
    job = _Job(description, scheduled_start, status, priority, run_as, company)
    for i, raw_task in enumerate(raw_tasks, 1):
        job.tasks.append(_parse_task(raw_task, i, where, known_groups, companies))
    _check_conditions(job, where)
    return job


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

    group = raw.get("group") or DEFAULT_GROUP_CODE
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
    )


def _check_conditions(job: _Job, where: str) -> None:
    keys = [t.key for t in job.tasks]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ImportFailure(f"{where}: task key {duplicates[0]!r} is used twice.")
    known = set(keys)
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
    if value not in options:
        raise ImportFailure(f"{where} {value!r} is not one of {', '.join(options)}.")
    return options[value]


def _save_group(group: _Group) -> None:
    # A key left out leaves that part of an existing group as it is.
    defaults = {} if group.description is None else {"description": group.description}
    obj, _ = BatchGroup.objects.update_or_create(code=group.code, defaults=defaults)
    if group.servers is None:
        return
    servers = []
    for name in group.servers:
        # A server first named here serves only the groups assigned to it (D365: a server with
        # a named group runs the default group only if that is assigned too).
        server, _ = BatchServer.objects.get_or_create(name=name)
        servers.append(server)
    obj.servers.set(servers)


def _save_job(parsed: _Job, user: Any) -> BatchJob:
    job = BatchJob.objects.create(
        description=parsed.description,
        scheduled_start=parsed.scheduled_start,
        status=parsed.status,
        priority=parsed.priority,
        run_as=parsed.run_as,
        created_by=user,
        company=Company.objects.get(code=parsed.company) if parsed.company else None,
    )
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
    return job


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
        "priority": Priority(job.priority).name.lower(),
    }
    if job.run_as_id:
        assert job.run_as is not None
        data["run_as"] = job.run_as.get_username()
    if job.company_id:
        assert job.company is not None
        data["company"] = job.company.code
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
        data["tasks"].append(item)
    return data
