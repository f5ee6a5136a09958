"""batchadmin's settings plus a second django.tasks alias whose tasks are retried."""

from __future__ import annotations

from batchadmin.settings import *  # noqa: F403
from batchadmin.settings import TASKS

TASKS = {
    **TASKS,
    "retrying": {
        "BACKEND": "batchadmin.djangotasks.backend.BatchadminBackend",
        "OPTIONS": {"MAX_RETRIES": 3},
    },
}
