"""Personal API tokens: issued to a user, found again by their digest, revoked by deletion."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.db.models import Q
from django.utils.timezone import now

from batchadmin.accounts.models import ApiToken

# Tokens start with this, so a leaked one is recognisable (secret scanners, logs).
PREFIX = "bat_"
SHOWN_CHARS = len(PREFIX) + 4
# last_used_at is written at most this often per token: not one UPDATE per API request.
TOUCH_EVERY = dt.timedelta(minutes=1)


def digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def issue(user: Any, *, name: str, by: Any = None) -> tuple[ApiToken, str]:
    """A new token for ``user``; the plain token is returned once and never stored."""
    plain = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=plain[:SHOWN_CHARS],
        digest=digest(plain),
        created_by=by if by is not None else user,
    )
    return token, plain


def find(plain: str) -> ApiToken | None:
    """The token of an active user, or None; records its use (at most once a minute)."""
    if not plain.startswith(PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=digest(plain), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    at = now()
    if token.last_used_at is None or token.last_used_at < at - TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at=None) | Q(last_used_at__lt=at - TOUCH_EVERY)
        ).update(last_used_at=at)
        token.last_used_at = at
    return token
