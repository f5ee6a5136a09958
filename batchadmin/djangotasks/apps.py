from __future__ import annotations

from django.apps import AppConfig


class DjangoTasksConfig(AppConfig):
    name = "batchadmin.djangotasks"
    label = "djangotasks"
    verbose_name = "Django tasks"

    def ready(self) -> None:
        # The engine does not know about Django tasks: it signals that a job settled, and
        # this app turns that into django.tasks' task_finished.
        from batchadmin.djangotasks import receivers
        from batchadmin.engine import signals

        signals.job_settled.connect(receivers.on_job_settled, dispatch_uid="djangotasks.settled")
