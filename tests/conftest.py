"""Fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """No ``_gw0`` suffix from pytest-django: under pytest-xdist the run id tests/isolation.py
    gives each worker already names its test database (``test_batchadmin_<run id>_gw0``)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Which test process runs what (bin/test: pytest-xdist, ``--dist loadgroup``).

    Everything but the end-to-end tests is one group, so one process runs it in pytest-django's
    order: a TransactionTestCase empties the tables when it ends, the rows the migrations
    seeded included, so it must come after the TestCases, as it does in one process. Each
    end-to-end module is a group of its own (its cluster is per module); they come after that
    group in a process, as in one process: Playwright's event loop, once started, makes Django
    refuse database calls in the test process (SynchronousOnlyOperation).
    """
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        path = Path(str(item.fspath))
        name = str(path.relative_to(e2e.parent)) if path.is_relative_to(e2e) else "unit"
        item.add_marker(pytest.mark.xdist_group(name))
