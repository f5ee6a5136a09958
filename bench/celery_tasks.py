"""Plain Celery tasks for bench/engine_vs_celery.py, the baseline the engine is compared with.

The bench loads them into its batch servers with ``celery ... worker -I bench.celery_tasks``, so
they run on the same workers, broker, queue (``batch.default``) and Celery settings as the
engine's ``batchadmin.run_batch_task``. They keep no Celery results (the app ignores results);
they report to Redis instead, at ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import time

import redis

from batchadmin.celery import app

_client: redis.Redis | None = None
_client_pid = 0


def client() -> redis.Redis:
    """One Redis client per process (the pool children are forked from the worker)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client


@app.task(name="bench.noop")
def noop(key: str, expected: int) -> None:
    """Count one completion; the first records its start, the one that completes the set its end."""
    started = time.time()
    pipe = client().pipeline(transaction=False)
    pipe.set(f"{key}:first", repr(started), nx=True)
    pipe.incr(key)
    count = pipe.execute()[1]
    if count == expected:
        client().set(f"{key}:done", repr(time.time()))


@app.task(name="bench.hop")
def hop(key: str, index: int) -> None:
    """One link of a chain: record when the body started and ended, as the engine's task rows do."""
    started = time.time()
    ended = time.time()
    client().hset(key, mapping={f"s{index}": repr(started), f"e{index}": repr(ended)})
