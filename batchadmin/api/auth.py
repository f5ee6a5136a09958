"""Who is calling the API (a personal token) and how often they may (a limit per token)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from batchadmin.accounts import tokens
from batchadmin.accounts.models import ApiToken

log = logging.getLogger(__name__)


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``: the request acts as the token's user, with their role."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        found = tokens.find(token)
        if found is None:
            return None
        # The pages' access rules (jobs/access.py) read request.user, as for a signed-in user.
        request.user = found.user
        return found


class TokenThrottle(BaseThrottle):
    """At most BATCH_API_RATE_LIMIT requests per token in each BATCH_API_RATE_WINDOW seconds.

    A fixed window counted in the cache (Redis, shared by every web process): one atomic
    INCR per request. A burst at the turn of a window may get up to twice the limit through;
    that is the price of one round trip. When the cache is down the API is not limited, rather
    than down too.

    One object serves every request of every thread (django-ninja keeps it per operation), so
    the wait of the request being refused is kept per thread.
    """

    _local = threading.local()

    def allow_request(self, request: HttpRequest) -> bool:
        token: Any = getattr(request, "auth", None)
        limit: int = settings.BATCH_API_RATE_LIMIT
        window: int = settings.BATCH_API_RATE_WINDOW
        if not isinstance(token, ApiToken) or limit <= 0:
            return True
        at = time.time()
        slot = int(at // window)
        # The digest, not the id: ids start again in another database on the same Redis.
        key = f"api-rate:{token.digest[:32]}:{slot}"
        try:
            cache = caches[settings.BATCH_API_CACHE]
            cache.add(key, 0, timeout=window + 1)
            count = cache.incr(key)
        except Exception:
            log.warning(
                "The API rate limit could not be counted; letting the request in", exc_info=True
            )
            return True
        self._local.wait = (slot + 1) * window - at
        return int(count) <= limit

    def wait(self) -> float | None:
        wait: float | None = getattr(self._local, "wait", None)
        return wait
