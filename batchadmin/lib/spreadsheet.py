"""Cells that a spreadsheet opens as text, never as a formula (CSV formula injection).

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@``
as a formula, and skip a leading tab or carriage return before looking; a job description
``=HYPERLINK(...)`` in a report would run on the reader's machine. OWASP's advice: start such
a cell with a single quote, which the spreadsheet shows as text and does not display.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """``value`` as a CSV cell: text that would start a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def row(values: list[Any]) -> list[Any]:
    return [cell(v) for v in values]
