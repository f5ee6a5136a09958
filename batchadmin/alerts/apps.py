from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "batchadmin.alerts"
    label = "alerts"
    verbose_name = "Alerts"

    def ready(self) -> None:
        # The engine does not import the alerts; it signals, and these receivers listen.
        from batchadmin.alerts import receivers
        from batchadmin.engine import signals

        signals.job_settled.connect(receivers.on_job_settled, dispatch_uid="alerts.job_settled")
        signals.ticked.connect(receivers.on_tick, dispatch_uid="alerts.tick")
