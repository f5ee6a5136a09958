"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """No ``_gw0`` suffix from pytest-django: under pytest-xdist the run id tests/isolation.py
    gives each worker already names its test database (``test_batchadmin_<run id>_gw0``)."""
