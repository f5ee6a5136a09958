"""Text a batch process wrote, made fit to store: what PostgreSQL can't hold is replaced, and
what is too long is cut with a note that says so.

A NUL character (PostgreSQL text can't hold it) or half a surrogate pair (not UTF-8) in one log
line or error used to make the whole finish fail: the attempt ended as "Batch server lost"
after its lease, its log lines were lost, and a process that had succeeded ran again.
"""

from __future__ import annotations

import re

# NUL, and UTF-16 surrogates that Python strings may hold alone (from "\\ud800" in JSON, or
# bytes decoded with errors="surrogateescape").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"  # the Unicode replacement character, as a decoder writes it


def unstorable(text: str) -> bool:
    """``text`` holds a character PostgreSQL can't store (for input to refuse)."""
    return _UNSTORABLE.search(text) is not None


def storable(text: str, limit: int) -> str:
    """``text`` with NUL and lone surrogates replaced, cut to ``limit`` characters or so (0: no
    limit) with a note of how much was cut."""
    text = _UNSTORABLE.sub(REPLACEMENT, text)
    if limit and len(text) > limit:
        cut = len(text) - limit
        return f"{text[:limit]}\n[... {cut:,} more characters cut]"
    return text
