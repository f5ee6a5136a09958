from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _read_dates_out_of_range(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor == "postgresql":
        from batchadmin.lib import daterange

        daterange.install(connection)


class JobsConfig(AppConfig):
    name = "batchadmin.jobs"
    label = "jobs"
    verbose_name = "Batch jobs"

    def ready(self) -> None:
        # A job's dates out of range (stored before the bounds, or by hand) must not make
        # every page that reads the job fail (lib/daterange.py).
        connection_created.connect(_read_dates_out_of_range, dispatch_uid="daterange")
