"""Whole numbers from query strings and form posts, parsed strictly.

``str.isdigit()`` says yes to "²" and other Unicode digits that ``int()`` refuses (a 500), and
``int()`` alone takes " 7", "+7", "1_000" and numbers too big for a database column (another
500 at the query). Request parameters go through here: ASCII digits only, within a BIGINT.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]{1,18}")  # at most 18 digits: always below 2**63


def whole(value: object) -> int | None:
    """``value`` as a whole number >= 0 when it is written in ASCII digits only, else None."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None
