from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from batchadmin.accounts.models import UserPreference
from batchadmin.lib import clock


class PreferenceForm(forms.ModelForm[UserPreference]):
    time_zone = clock.ZoneField(
        help_text="Dates and times on every page are shown in this zone. Type a city or region "
        "to find it.",
    )

    class Meta:
        model = UserPreference
        fields = ["time_zone", "clock", "theme"]
        widgets = {"clock": forms.RadioSelect, "theme": forms.RadioSelect}


class TokenForm(forms.Form):
    """A new API token: for oneself, or (a Batch job manager) for another user."""

    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        required=False,
        empty_label="Myself",
        help_text="Batch job managers can make tokens for other users.",
    )
    name = forms.CharField(
        max_length=100, help_text="What the token is for, e.g. nightly ETL or CI."
    )
