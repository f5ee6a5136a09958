from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob


class BatchJobAlert(models.Model):
    """D365 Alerts: which ends of a job one user hears about, and how.

    A row without any of ended / error / canceled means nothing; the Alerts dialog deletes the
    row instead of keeping it. Delivery (popup notifications, e-mail) reads these rows.
    """

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="alerts")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="batch_alerts")
    ended = models.BooleanField("ended", default=False, help_text="When the job ends.")
    error = models.BooleanField("error", default=False, help_text="When the job ends in Error.")
    canceled = models.BooleanField("canceled", default=False, help_text="When the job is canceled.")
    popup = models.BooleanField(
        "popup", default=True, help_text="A notification on the batchadmin pages."
    )
    email = models.BooleanField(
        "e-mail", default=False, help_text="An e-mail to the address of your account."
    )
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "batch job alert"
        constraints = [
            models.UniqueConstraint(fields=["job", "user"], name="alert_job_user_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} on job {self.job_id}: {self.describe() or 'nothing'}"

    def events(self) -> list[str]:
        chosen = [("Ended", self.ended), ("Error", self.error), ("Canceled", self.canceled)]
        return [label for label, on in chosen if on]

    def channels(self) -> list[str]:
        return [label for label, on in [("popup", self.popup), ("e-mail", self.email)] if on]

    def describe(self) -> str:
        """'Error (popup, e-mail)'; empty when no event is chosen."""
        events = self.events()
        if not events:
            return ""
        channels = self.channels()
        return ", ".join(events) + (f" ({', '.join(channels)})" if channels else "")
