"""Model instances from hand-written SQL, as the ORM would build them, without its compiler.

The engine reads a few rows per task or job start (engine/sql.py); building such a query with
the ORM cost more Python than the rest of a job start together (select_related's compilation,
bench/hot_path.py). ``columns(Model, alias)`` writes the select list once per process, and
``instance(Model, values)`` applies the same converters Django's compiler applies (the
backend's and each field's from_db_value: JSON, the date bounds of lib/daterange.py) and
builds the instance with ``Model.from_db``, so the object is what ``objects.get`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)
Converter = Callable[[Any, Any, Any], Any]


@cache
def _fields(
    model: type[models.Model],
) -> tuple[tuple[str, ...], tuple[tuple[Any, tuple[Converter, ...]], ...]]:
    fields = model._meta.concrete_fields
    names = tuple(f.attname for f in fields)
    converters = []
    for f in fields:
        col = f.get_col(model._meta.db_table)
        # What the compiler's get_converters collects for a column: the backend's, then the
        # column's (its field's from_db_value).
        found = tuple(connection.ops.get_db_converters(col)) + tuple(
            col.get_db_converters(connection)
        )
        converters.append((col, found))
    return names, tuple(converters)


def columns(model: type[models.Model], alias: str, *, prefix: str = "") -> str:
    """The select list of every concrete column of ``model``, read from table alias ``alias``,
    in the order ``instance`` expects; ``prefix``: each named ``<prefix><column>`` (a CTE that
    selects two tables' columns side by side)."""
    return ", ".join(
        f'{alias}."{f.column}"' + (f' AS "{prefix}{f.column}"' if prefix else "")
        for f in model._meta.concrete_fields
    )


def width(model: type[models.Model]) -> int:
    """How many values ``columns`` selects."""
    return len(model._meta.concrete_fields)


def instance(model: type[M], values: Sequence[Any]) -> M:
    names, converters = _fields(model)
    row = []
    for value, (col, found) in zip(values, converters, strict=True):
        for convert in found:
            value = convert(value, col, connection)
        row.append(value)
    return model.from_db(connection.alias, list(names), row)
