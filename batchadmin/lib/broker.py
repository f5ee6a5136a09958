"""The broker's Redis, read directly: one client, and the one way to read a queue's length.

Not kombu's connection: it keeps retrying a lost broker, which would hang a health check, a
page, a scrape, the tick or a worker finishing its task. This client gives up within about a
second. Pages, /healthz, /metrics, the tick and the alert sweep all read queues through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from django.conf import settings
from kombu.transport.redis import Channel as RedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry

TIMEOUT_SECONDS = 1.0


def client(*, retries: int = 0, url: str | None = None) -> redis.Redis:
    """A client of the broker's Redis (or ``url``) that gives up within about a second.

    ``retries``: 1 for a caller that keeps the client, so a pooled connection that died with
    a Redis restart fails once and reconnects instead of raising.
    """
    return redis.Redis.from_url(
        url or settings.CELERY_BROKER_URL,
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), retries),
    )


def queue_keys(queue: str, *, before: int | None = None) -> list[str]:
    """The Redis lists that hold a kombu queue: one per priority step (``before``: only the
    steps served before that one, lower numbers).

    The lists kombu's own Channel._size counts, read here with a plain client in one round
    trip for any number of queues.
    """
    options: dict[str, Any] = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sep = str(options.get("sep", RedisChannel.sep))
    steps = options.get("priority_steps", RedisChannel.priority_steps)
    prefix = str(options.get("global_keyprefix", ""))
    return [
        prefix + (f"{queue}{sep}{step}" if step else queue)
        for step in steps
        if before is None or step < before
    ]


def queue_lengths(
    queues: Sequence[str], *, retries: int = 0, url: str | None = None
) -> dict[str, int]:
    """Messages waiting in each queue over its priority lists (not those workers hold
    unacked): one round trip. Raises ``redis.RedisError`` or ``OSError`` when the broker does
    not answer; each caller decides what that means for it."""
    if not queues:
        return {}
    keys = {queue: queue_keys(queue) for queue in queues}
    with client(retries=retries, url=url) as c, c.pipeline(transaction=False) as pipe:
        for queue_keys_ in keys.values():
            for key in queue_keys_:
                pipe.llen(key)
        lengths = iter(pipe.execute())
    return {queue: sum(int(next(lengths)) for _ in ks) for queue, ks in keys.items()}


def queue_length(queue: str) -> int:
    """One queue's length, for the tick: one retry, for a connection a Redis restart broke."""
    return queue_lengths([queue], retries=1)[queue]
