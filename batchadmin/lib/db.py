"""Living through database trouble: the one way the worker, the tick and the alerts do it.

A blip is an OperationalError or InterfaceError: PostgreSQL restarted, the network dropped a
connection, a failover. The connection that saw it is dead, so it is closed and the next query
opens a fresh one; Django would otherwise keep handing out the broken connection for the rest
of CONN_MAX_AGE. What to do with the work that failed is the caller's: try again a few times
(``retry``), skip it until the next time round (``after_blip``), or let the lease decide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")
BLIPS = (OperationalError, InterfaceError)


def reset() -> None:
    """Close this thread's connection; the next query reconnects."""
    connection.close()


def after_blip(log: logging.Logger, what: str) -> None:
    """A blip cost ``what``; it is tried again later (the next flush, check or beat)."""
    log.warning("Database unavailable; could not %s, trying again later", what)
    reset()


def retry(fn: Callable[[], T], *, delays: Sequence[float], log: logging.Logger, what: str) -> T:
    """``fn()``, again after each delay (seconds) while it fails with a blip; the last blip is
    raised. Every try runs on a fresh connection, so ``fn`` must be safe to repeat (a claim or
    a finish is: each is a conditional update that a second call finds already done)."""
    for delay in (*delays, None):
        try:
            return fn()
        except BLIPS:
            if delay is None:
                raise
            log.warning("Database error while %s; retrying in %ss", what, delay)
            reset()
            if delay:
                time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


# PostgreSQL's lock_not_available: a statement gave up waiting for a row lock (lock_timeout,
# NOWAIT). Django raises it as an OperationalError, like a blip, but the connection is fine.
LOCK_NOT_AVAILABLE = "55P03"


def busy(exc: BaseException) -> bool:
    """``exc`` is a lock another transaction holds, given up on (not a lost connection)."""
    return getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE


@contextmanager
def lock_timeout(seconds: float) -> Iterator[None]:
    """Statements on this connection wait at most ``seconds`` for a lock, then raise (``busy``).

    Session-wide for the block rather than ``SET LOCAL`` in each transaction: the block spans
    many short transactions (each of the tick's transitions has its own). PostgreSQL only;
    SQLite has one writer lock and its own busy timeout.
    """
    if connection.vendor != "postgresql" or seconds <= 0:
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {max(1, round(seconds * 1000))}")
    try:
        yield
    finally:
        # Left set on a connection the database closed: nothing to undo.
        with suppress(*BLIPS), connection.cursor() as cursor:
            cursor.execute("SET lock_timeout TO DEFAULT")
