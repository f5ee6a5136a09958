from __future__ import annotations

from zoneinfo import available_timezones

from django import forms

from batchadmin.accounts.models import UserPreference

ZONES = sorted(available_timezones())


class PreferenceForm(forms.ModelForm[UserPreference]):
    time_zone = forms.ChoiceField(
        choices=[(z, z.replace("_", " ")) for z in ZONES],
        help_text="Dates and times on every page are shown in this zone.",
    )

    class Meta:
        model = UserPreference
        fields = ["time_zone"]
