from __future__ import annotations

import secrets
from typing import Any

from django import forms
from django.contrib.auth.models import User

from batchadmin.alerts.models import AlertRule, BatchJobAlert, JobWebhook, Webhook
from batchadmin.jobs.models import Priority

EVENTS = ("ended", "error", "canceled", "deadline")


def check_channels(
    form: forms.BaseForm, cleaned: dict[str, Any], user: User, *, webhooks: bool = False
) -> None:
    """At least one way to be alerted, and e-mail only to an account that has an address.

    ``webhooks``: the alerts also go to webhooks, which is a way too (a rule may post to a
    Teams channel and alert nobody in person)."""
    if not cleaned.get("popup") and not cleaned.get("email") and not webhooks:
        form.add_error("popup", "Choose how to be alerted: popup, e-mail or both.")
    if cleaned.get("email") and not user.email:
        form.add_error(
            "email",
            "Your account has no e-mail address. Ask an administrator to add one, or choose popup.",
        )


class AlertForm(forms.ModelForm[BatchJobAlert]):
    """The Alerts dialog of one job for the signed-in user (D365 alerts.md)."""

    class Meta:
        model = BatchJobAlert
        fields = ["ended", "error", "canceled", "deadline", "popup", "email"]

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        if user.email:
            self.fields["email"].help_text = f"An e-mail to {user.email}."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if any(cleaned.get(e) for e in EVENTS):
            check_channels(self, cleaned, self.user)
        return cleaned

    def save_or_delete(self) -> BatchJobAlert | None:
        """Save the choices; no event chosen means no alerts, so the row goes."""
        alert = self.instance
        if not any(getattr(alert, e) for e in EVENTS):
            if alert.pk:
                alert.delete()
            return None
        return self.save()


RULE_EVENTS = ("ended", "error", "canceled", "stuck", "deadline")


class AlertRuleForm(forms.ModelForm[AlertRule]):
    """One of a manager's alert rules: every job of a batch group and/or a priority."""

    class Meta:
        model = AlertRule
        fields = [
            "group",
            "priority",
            "ended",
            "error",
            "canceled",
            "stuck",
            "deadline",
            "popup",
            "email",
            "webhooks",
        ]
        widgets = {"webhooks": forms.CheckboxSelectMultiple}
        help_texts = {
            "ended": "When a job ends.",
            "error": "When a job ends in Error.",
            "canceled": "When a job is canceled.",
            "popup": "A notification on the batchadmin pages.",
            "email": "An e-mail to the address of your account.",
        }

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        group = self.fields["group"]
        assert isinstance(group, forms.ModelChoiceField)
        group.empty_label = "Any batch group"
        priority = self.fields["priority"]
        assert isinstance(priority, forms.TypedChoiceField)
        priority.choices = [("", "Any priority"), *Priority.choices]
        if user.email:
            self.fields["email"].help_text = f"An e-mail to {user.email}."
        hooks = self.fields["webhooks"]
        assert isinstance(hooks, forms.ModelMultipleChoiceField)
        hooks.queryset = Webhook.objects.filter(enabled=True).order_by("code")
        hooks.required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not any(cleaned.get(e) for e in RULE_EVENTS):
            self.add_error(
                None, "Choose at least one event: ended, error, canceled, stuck or deadline."
            )
        check_channels(self, cleaned, self.user, webhooks=bool(cleaned.get("webhooks")))
        # Two rules for the same jobs would only split one choice in two places.
        same = AlertRule.objects.filter(
            user=self.user, group=cleaned.get("group"), priority=cleaned.get("priority")
        ).exclude(pk=self.instance.pk)
        if "group" in cleaned and "priority" in cleaned and same.exists():
            self.add_error(None, "You already have a rule for these jobs. Edit that rule instead.")
        return cleaned

    def save(self, commit: bool = True) -> AlertRule:
        self.instance.user = self.user
        return super().save(commit)


class JobWebhooksForm(forms.Form):
    """The Alerts dialog's webhooks: for each enabled webhook, which ends of the job it gets.

    Unlike the user's own alerts these are the job's: anyone who may change the job sets them.
    """

    def __init__(self, *args: Any, job: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job
        self.hooks = list(Webhook.objects.filter(enabled=True).order_by("code"))
        saved = {h.webhook_id: h for h in JobWebhook.objects.filter(job=job)}
        for hook in self.hooks:
            current = saved.get(hook.pk)
            for event in EVENTS:
                self.fields[f"hook{hook.pk}_{event}"] = forms.BooleanField(
                    label=event.capitalize(),
                    required=False,
                    initial=bool(current and getattr(current, event)),
                )

    def rows(self) -> list[tuple[Webhook, list[forms.BoundField]]]:
        return [(h, [self[f"hook{h.pk}_{e}"] for e in EVENTS]) for h in self.hooks]

    def save(self) -> None:
        for hook in self.hooks:
            events = {e: bool(self.cleaned_data.get(f"hook{hook.pk}_{e}")) for e in EVENTS}
            if any(events.values()):
                JobWebhook.objects.update_or_create(job=self.job, webhook=hook, defaults=events)
            else:
                JobWebhook.objects.filter(job=self.job, webhook=hook).delete()


class WebhookForm(forms.ModelForm[Webhook]):
    """A webhook, set up by a Batch job manager."""

    # Declared for assume_scheme: an address typed without a scheme is https (Django 6's default).
    url = forms.URLField(
        label="URL",
        max_length=500,
        assume_scheme="https",
        help_text=str(Webhook._meta.get_field("url").help_text),
    )

    class Meta:
        model = Webhook
        fields = ["code", "description", "url", "format", "secret", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance.pk and not self.is_bound:
            # A strong secret to start with; the receiver needs a copy to check signatures.
            self.initial["secret"] = secrets.token_urlsafe(32)
