"""The registry of batch processes: D365's "Class name" list.

A batch process is a Python callable ``func(ctx, **parameters)`` registered under a dotted name
with a label, a description and a Django form for its parameters. Only registered processes can
be chosen for a task; parameters are validated by the form when the task is saved and again,
from the stored JSON, when the task runs.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django import forms

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


class NoParameters(forms.Form):
    pass


@dataclass(frozen=True)
class BatchProcess:
    name: str
    label: str
    description: str
    form_class: type[forms.Form]
    func: ProcessFunc

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
        # What is stored must be what the process can read back when it runs.
        self.kwargs_from(cleaned)
        return cleaned

    def kwargs_from(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Parameters as the process receives them: the form's cleaned_data of the stored JSON."""
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


_REGISTRY: dict[str, BatchProcess] = {}


def register(
    name: str, *, label: str, description: str, form: type[forms.Form] = NoParameters
) -> Callable[[ProcessFunc], ProcessFunc]:
    def decorator(func: ProcessFunc) -> ProcessFunc:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"batch process {name!r} is registered twice")
        _REGISTRY[name] = BatchProcess(name, label, description, form, func)
        return func

    return decorator


def get(name: str) -> BatchProcess:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProcess(f"Unknown batch process {name!r}.") from None


def all_processes() -> list[BatchProcess]:
    return sorted(_REGISTRY.values(), key=lambda p: p.name)


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
