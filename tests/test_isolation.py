"""tests/isolation.py: a run takes only Redis databases it finds empty, and flushes only those.

Against a redis-server of this test's own, so no database of the run (or anyone) is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import isolation
from tests.e2e.private import PrivateRedis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    broker = PrivateRedis(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def url(server: PrivateRedis, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def test_it_takes_an_empty_database_and_marks_it_with_the_run_id(server):
    assert isolation.claim(url(server, 3), "TEST_BROKER_URL") is True
    client = redis.Redis(port=server.port, db=3)
    assert client.get(isolation.OWNER_KEY) == isolation.RUN_ID.encode()
    # A second process of the same run (a nested pytest) uses it without taking it again.
    client.set("written-by-a-test", 1)
    assert isolation.claim(url(server, 3), "TEST_BROKER_URL") is False


def test_it_refuses_a_database_with_keys_and_leaves_them(server):
    client = redis.Redis(port=server.port, db=4)
    client.set("someone-elses", "data")
    with pytest.raises(isolation.IsolationError) as refused:
        isolation.claim(url(server, 4), "E2E_REDIS_URL")
    message = str(refused.value)
    assert f"E2E_REDIS_URL=redis://127.0.0.1:{server.port}/4 is not empty" in message
    assert "used by someone" in message
    assert client.get("someone-elses") == b"data"
    with pytest.raises(isolation.IsolationError):
        isolation.reset(url(server, 4))
    assert client.get("someone-elses") == b"data"


def test_it_refuses_another_runs_database(server):
    client = redis.Redis(port=server.port, db=5)
    client.set(isolation.OWNER_KEY, "otherrun")
    with pytest.raises(isolation.IsolationError) as refused:
        isolation.claim(url(server, 5), "TEST_BROKER_URL")
    assert "used by test run 'otherrun'" in str(refused.value)
    assert client.dbsize() == 1


def test_reset_empties_the_runs_database_and_keeps_it_the_runs(server):
    assert isolation.claim(url(server, 6), "E2E_REDIS_URL")
    client = redis.Redis(port=server.port, db=6)
    client.set("left-by-a-cluster", 1)
    isolation.reset(url(server, 6))
    assert client.keys() == [isolation.OWNER_KEY.encode()]


def test_the_test_database_is_named_after_the_run():
    from django.conf import settings

    test_name = settings.DATABASES["default"]["TEST"]["NAME"]
    assert test_name.startswith("test_") and test_name.endswith("_" + isolation.RUN_ID)
