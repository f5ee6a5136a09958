from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class ProcessesConfig(AppConfig):
    name = "batchadmin.processes"
    label = "processes"
    verbose_name = "Batch processes"

    def ready(self) -> None:
        # Registering is a side effect of importing a process module (like admin.site.register),
        # so import every module that holds processes once the app registry is ready.
        for module in settings.BATCH_PROCESS_MODULES:
            import_module(module)
