from __future__ import annotations

from django.apps import AppConfig


class ServersConfig(AppConfig):
    name = "batchadmin.servers"
    label = "servers"
    verbose_name = "Batch servers"

    def ready(self) -> None:
        # Connects the Celery worker signals that turn a worker into a batch server.
        from batchadmin.servers import worker  # noqa: F401
