from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, create_database, drop_database, flush_redis, migrate


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A migrated private PostgreSQL database, an empty Redis DB and one beat process."""
    name = f"batchadmin_e2e_{os.getpid()}"
    create_database(name)
    cluster = Cluster(
        f"postgres://postgres@127.0.0.1:5432/{name}",
        tmp_path_factory.mktemp("e2e-logs"),
        pg_dbname=name,
    )
    try:
        migrate(cluster.env)
        flush_redis()
        cluster.start_beat()
        yield cluster
    finally:
        cluster.stop_all()
        drop_database(name)


@pytest.fixture
def cluster(pg_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's cluster; workers a test starts are stopped when it ends."""
    before = set(pg_cluster.procs)
    yield pg_cluster
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(pg_cluster.logs())
    for name in set(pg_cluster.procs) - before:
        pg_cluster.stop(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)
