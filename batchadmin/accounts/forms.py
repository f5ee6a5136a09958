from __future__ import annotations

from django import forms

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
