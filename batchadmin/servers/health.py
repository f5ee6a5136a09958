"""/healthz: can this installation run batch jobs? For load balancers and monitoring.

Three checks, each bounded to about a second: the database answers, the broker (Redis)
answers, and beat ticked recently. 200 when all pass, 503 with the failing check's error
otherwise. No login, and nothing secret in the answer (no URLs, no passwords). With
BATCH_METRICS_TOKEN set (production), the checks' detail (timings, errors, beat's last tick)
is for requests that carry the token; others get the status alone.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.utils.timezone import now
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from batchadmin.engine import beat
from batchadmin.lib import broker
from batchadmin.servers import metrics

STATEMENT_TIMEOUT_MS = 1000
ERROR_MAX_CHARS = 300


def check_database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # A database that accepts connections but stalls must not stall the check.
                cursor.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {"ok": False, "ms": _ms(started), "error": _describe(exc)}
    return {"ok": True, "ms": _ms(started)}


def check_broker() -> dict[str, Any]:
    started = time.monotonic()
    try:
        # A fresh connection, no retries: the answer is about Redis now, within a second.
        with broker.client() as client:
            client.ping()
    except Exception as exc:
        return {"ok": False, "ms": _ms(started), "error": _describe(exc)}
    return {"ok": True, "ms": _ms(started)}


def check_beat(at: dt.datetime | None = None) -> dict[str, Any]:
    """Beat is alive when its last successful tick is recent (engine/beat.py, Liveness)."""
    at = at or now()
    try:
        state = beat.liveness()
    except Exception as exc:
        return {"ok": False, "last_tick": None, "age_seconds": None, "error": _describe(exc)}
    age = state.age(at)
    if state.last_tick is None or age is None:
        error = (
            "Beat has not ticked yet: is `celery -A batchadmin beat` running?"
            if state.enabled
            else f"No enabled periodic task runs {beat.TICK_TASK}: nothing starts due jobs."
        )
        return {"ok": False, "last_tick": None, "age_seconds": None, "error": error}
    result: dict[str, Any] = {
        "ok": state.alive(at),
        "last_tick": state.last_tick.isoformat(),
        "age_seconds": round(age.total_seconds(), 1),
    }
    if not result["ok"]:
        limit = beat.stale_after().total_seconds()
        result["error"] = (
            f"Beat's last tick was {age.total_seconds():.0f} s ago (limit {limit:g} s): "
            "is `celery -A batchadmin beat` running?"
        )
    return result


@login_not_required  # load balancers and monitoring do not sign in
@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": check_database(), "broker": check_broker()}
    if checks["database"]["ok"]:
        checks["beat"] = check_beat()
    else:
        # Beat records its ticks in the database: without it, beat's state is unknown.
        checks["beat"] = {
            "ok": False,
            "last_tick": None,
            "age_seconds": None,
            "error": "Unknown: the database is unreachable.",
        }
    ok = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ok" if ok else "fail"}
    if metrics.authorized(request):
        body["checks"] = checks
    return JsonResponse(body, status=200 if ok else 503)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _describe(exc: Exception) -> str:
    """The error's first line, without any password it might quote."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    secrets = [
        settings.DATABASES["default"].get("PASSWORD") or "",
        urlsplit(settings.CELERY_BROKER_URL).password or "",
    ]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:ERROR_MAX_CHARS]
