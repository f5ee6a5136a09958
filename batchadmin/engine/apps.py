from __future__ import annotations

from django.apps import AppConfig


class EngineConfig(AppConfig):
    """The batch runtime: no models, only the code that moves jobs and tasks through their
    statuses (docs/architecture.md). An app so that Celery finds its tasks and the worker's
    signal handlers are connected."""

    name = "batchadmin.engine"
    label = "engine"
    verbose_name = "Batch engine"

    def ready(self) -> None:
        # Connects the Celery worker signals that turn a worker into a batch server.
        from batchadmin.engine import worker  # noqa: F401
