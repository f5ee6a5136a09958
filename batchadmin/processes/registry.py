"""The registry of batch processes: D365's "Class name" list.

A batch process is a Python callable ``func(ctx, **parameters)`` registered under a dotted name
with a label, a description and a Django form for its parameters. Only registered processes can
be chosen for a task; parameters are validated by the form when the task is saved and again,
from the stored JSON, when the task runs.

Each process also says who may run it (``run_by``): anyone (the default: saving a task is
already for roles that create jobs, and a job may run as a service account without a batch
role), a batch role (accounts.models: a role that creates jobs, or managers only) or a Django
permission ``"app_label.codename"``. The rule itself is ``jobs.access.may_run``, checked
wherever a task is saved and again, against the job's run-as user, when it runs.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django import forms

from batchadmin.accounts.models import BATCH_USER, MANAGER
from batchadmin.lib import text

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from batchadmin.jobs.models import Company


class Context(Protocol):
    """What a batch process may use while it runs (see batchadmin.engine.runner.ProcessContext)."""

    job_id: int
    task_id: int
    task_key: str
    attempt: int
    user: User | None
    company: Company | None
    occurrence: dt.datetime | None  # the recurrence occurrence the run stands for (backfill)

    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def progress(self, percent: int) -> None: ...
    def cancel_requested(self) -> bool: ...


ProcessFunc = Callable[..., None]
ANYONE = ""  # run_by of a process any user may run


class NoParameters(forms.Form):
    pass


@dataclass(frozen=True)
class BatchProcess:
    name: str
    label: str
    description: str
    form_class: type[forms.Form]
    func: ProcessFunc
    # Who may put it in a task and run it: ANYONE, BATCH_USER (every role that creates jobs),
    # MANAGER, or a Django permission "app_label.codename".
    run_by: str = ANYONE

    def run_by_text(self) -> str:
        """Who may run it, as the refusals say it."""
        if self.run_by == ANYONE:
            return "anyone may run it"
        if self.run_by == MANAGER:
            return "only a Batch job manager may run it"
        if self.run_by == BATCH_USER:
            return "only a Batch user or a Batch job manager may run it"
        return f"it needs the permission {self.run_by}"

    def clean_parameters(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate ``data`` with the parameter form and return JSON-ready parameters.

        Raises ``ParameterError`` with the form's messages. Unknown keys are refused, so a
        typo in an import file is not silently dropped.
        """
        if not isinstance(data, dict):
            raise ParameterError({"__all__": ["Parameters must be a JSON object."]})
        fields = self.form_class().fields
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ParameterError({"__all__": [f"Unknown parameter(s): {', '.join(unknown)}."]})
        # A parameter left out takes the form's initial value, as the dialog would show it.
        defaults = {name: f.initial for name, f in fields.items() if f.initial is not None}
        form = self.form_class(data=defaults | data)
        if not form.is_valid():
            raise ParameterError({k: [str(m) for m in v] for k, v in form.errors.items()})
        cleaned = {k: _to_json(v) for k, v in form.cleaned_data.items()}
        bad = [k for k, v in cleaned.items() if _has_unstorable(v)]
        if bad:
            # A form's CharField refuses NUL but not half a surrogate pair; neither can be stored.
            raise ParameterError(
                {k: ["Holds a NUL character or half a surrogate pair."] for k in bad}
            )
        # What is stored must be what the process can read back when it runs.
        self.kwargs_from(cleaned)
        return cleaned

    def kwargs_from(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Parameters as the process receives them: the form's cleaned_data of the stored JSON."""
        if not self.form_class.base_fields and self.form_class.clean is forms.Form.clean:
            return {}  # no parameters: no form to build for every attempt
        form = self.form_class(data=stored)
        if not form.is_valid():
            raise ParameterError({k: [str(m) for m in v] for k, v in form.errors.items()})
        return dict(form.cleaned_data)


class ParameterError(ValueError):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = []
        for field, messages in self.errors.items():
            prefix = "" if field == "__all__" else f"{field}: "
            parts.append(prefix + " ".join(messages))
        return "; ".join(parts)


class UnknownProcess(LookupError):
    pass


class ProcessNotAllowed(PermissionError):
    """A user may not run (or put in a task) a process; the message names both."""


_REGISTRY: dict[str, BatchProcess] = {}


def register(
    name: str,
    *,
    label: str,
    description: str,
    form: type[forms.Form] = NoParameters,
    run_by: str = ANYONE,
) -> Callable[[ProcessFunc], ProcessFunc]:
    if run_by not in (ANYONE, BATCH_USER, MANAGER) and run_by.count(".") != 1:
        raise ValueError(
            f"batch process {name!r}: run_by must be ANYONE, {BATCH_USER!r}, {MANAGER!r} or a "
            f"Django permission 'app_label.codename', not {run_by!r}"
        )

    def decorator(func: ProcessFunc) -> ProcessFunc:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"batch process {name!r} is registered twice")
        _REGISTRY[name] = BatchProcess(name, label, description, form, func, run_by)
        return func

    return decorator


def get(name: str) -> BatchProcess:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProcess(f"Unknown batch process {name!r}.") from None


def all_processes() -> list[BatchProcess]:
    return sorted(_REGISTRY.values(), key=lambda p: p.name)


def _has_unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return text.unstorable(value)
    if isinstance(value, list):
        return any(_has_unstorable(v) for v in value)
    return False


def _to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if hasattr(value, "pk"):  # a model instance from a ModelChoiceField
        return value.pk
    return value
