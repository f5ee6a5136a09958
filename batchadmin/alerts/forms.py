from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from batchadmin.alerts.models import BatchJobAlert

EVENTS = ("ended", "error", "canceled")


class AlertForm(forms.ModelForm[BatchJobAlert]):
    """The Alerts dialog of one job for the signed-in user (D365 alerts.md)."""

    class Meta:
        model = BatchJobAlert
        fields = ["ended", "error", "canceled", "popup", "email"]

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        if user.email:
            self.fields["email"].help_text = f"An e-mail to {user.email}."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if any(cleaned.get(e) for e in EVENTS):
            if not cleaned.get("popup") and not cleaned.get("email"):
                self.add_error("popup", "Choose how to be alerted: popup, e-mail or both.")
            if cleaned.get("email") and not self.user.email:
                self.add_error(
                    "email",
                    "Your account has no e-mail address. Ask an administrator to add one, "
                    "or choose popup.",
                )
        return cleaned

    def save_or_delete(self) -> BatchJobAlert | None:
        """Save the choices; no event chosen means no alerts, so the row goes."""
        alert = self.instance
        if not any(getattr(alert, e) for e in EVENTS):
            if alert.pk:
                alert.delete()
            return None
        return self.save()
