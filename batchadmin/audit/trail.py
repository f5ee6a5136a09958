"""Writing the audit trail: one ``record`` per operator action, called inside the action's
transaction so that the action and its entry commit, or roll back, together.

``snapshot`` and ``changed`` turn a model's editable fields into the before/after pairs an
entry keeps; the caller names the fields (the form's), so bookkeeping columns never show up.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models

from batchadmin.audit.models import Action, AuditEntry, Via
from batchadmin.jobs.models import BatchJob, BatchTask, BatchTaskCondition

__all__ = ["Action", "Via", "changed", "record", "snapshot", "task_snapshot"]


def record(
    action: Action,
    *,
    user: Any = None,
    job: BatchJob | int | None = None,
    target: str = "",
    changes: dict[str, list[Any]] | None = None,
    reason: str = "",
    via: str = Via.WEB,
    at: dt.datetime | None = None,
) -> AuditEntry:
    """Write one entry. ``user`` is a User, a user id or None (the system, an import without
    a user); its name is kept with the entry, which outlives the account."""
    user_id, username = _who(user)
    entry = AuditEntry(
        user_id=user_id,
        username=username,
        action=action,
        via=via,
        job_id=job.pk if isinstance(job, BatchJob) else job,
        target=target[:200],
        changes=changes or {},
        reason=reason,
    )
    if at is not None:
        entry.at = at
    entry.save()
    return entry


def _who(user: Any) -> tuple[int | None, str]:
    if user is None:
        return None, ""
    if isinstance(user, int):
        name = get_user_model().objects.filter(pk=user).values_list("username", flat=True).first()
        return user, name or ""
    return user.pk, user.get_username()


def snapshot(obj: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """``fields`` of ``obj`` by their label, as JSON-ready values people read (a related
    object by its name, a choice by its label)."""
    out: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        label = str(getattr(field, "verbose_name", name))
        label = label[:1].upper() + label[1:]
        if field.many_to_many:  # a ManyToManyField, or the reverse side (a group's servers)
            value: Any = sorted(str(o) for o in getattr(obj, name).all()) if obj.pk else []
        elif isinstance(field, models.ForeignKey):
            value = str(getattr(obj, name)) if getattr(obj, field.attname) is not None else None
        elif isinstance(field, models.Field) and field.choices:
            raw = getattr(obj, name)
            value = dict(field.flatchoices).get(raw, raw)
            value = str(value) if value is not None else None
        else:
            value = getattr(obj, name)
        out[label] = _json(value)
    return out


def task_snapshot(task: BatchTask, fields: Iterable[str]) -> dict[str, Any]:
    """A task's fields, its parameters one by one, and its conditions as "T1 Ended"."""
    out = snapshot(task, [f for f in fields if f != "parameters"])
    for name, value in sorted((task.parameters or {}).items()):
        out[f"Parameter {name}"] = _json(value)
    if task.pk:
        conditions = BatchTaskCondition.objects.filter(task=task).select_related("depends_on")
        labels = dict(BatchTaskCondition.ExpectedStatus.choices)
        out["Has conditions"] = sorted(
            f"{c.depends_on.key} {labels.get(c.expected_status, c.expected_status)}"
            for c in conditions
        )
        out["Condition type"] = str(task.get_condition_type_display())
    return out


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """{label: [before, after]} for what differs, in ``after``'s order."""
    names = list(after) + [k for k in before if k not in after]
    return {k: [before.get(k), after.get(k)] for k in names if before.get(k) != after.get(k)}


def _json(value: Any) -> Any:
    # Times as people read them, in one zone for everyone: the entry is text, not a field.
    if isinstance(value, dt.datetime):
        at = value.astimezone(dt.UTC) if value.tzinfo else value
        return at.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.tzinfo else "")
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S" if value.second else "%H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def record_edit(
    action: Action,
    *,
    before: dict[str, Any],
    after: dict[str, Any],
    user: Any = None,
    job: BatchJob | int | None = None,
    target: str = "",
    via: str = Via.WEB,
) -> AuditEntry | None:
    """Record an edit as what changed between two snapshots; nothing when nothing did (a
    form saved unchanged is not an action anyone needs to read about)."""
    changes = changed(before, after)
    if not changes:
        return None
    return record(action, user=user, job=job, target=target, changes=changes, via=via)
