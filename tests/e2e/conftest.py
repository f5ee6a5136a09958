from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import isolation
from tests.e2e.cluster import (
    Cluster,
    create_database,
    drop_database,
    flush_redis,
    free_port,
    migrate,
)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A migrated private PostgreSQL database, an empty Redis DB and one beat process."""
    name = isolation.db_name("batchadmin_e2e")
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


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
USERS_SCRIPT = """
from django.contrib.auth.models import Group, User
for name, role in [("manager", "Batch job manager"), ("ursula", "Batch user"), ("victor", "Batch user"), ("viewer", "Viewer")]:
    user, created = User.objects.get_or_create(username=name)
    if created:
        user.set_password(name + "-pw")
        user.save()
    user.groups.add(Group.objects.get(name=role))
"""


@pytest.fixture(scope="session")
def web(pg_cluster: Cluster) -> str:
    """A real web server (gunicorn) on the e2e database, with users for each role."""
    pg_cluster.manage("shell", "-c", USERS_SCRIPT)
    return pg_cluster.start_web(free_port())


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    yield page
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shots = Path(os.environ.get("E2E_ARTIFACTS", "test-artifacts"))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()
