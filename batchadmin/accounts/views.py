from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from batchadmin.accounts.forms import PreferenceForm
from batchadmin.accounts.middleware import remember
from batchadmin.accounts.models import UserPreference
from batchadmin.lib import clock
from batchadmin.lib.http import AuthedRequest


@require_http_methods(["GET", "POST"])
def user_settings(request: AuthedRequest) -> HttpResponse:
    pref, _ = UserPreference.objects.get_or_create(user=request.user)
    form = PreferenceForm(request.POST or None, instance=pref)
    if request.method == "POST" and form.is_valid():
        form.save()
        remember(request, pref)
        messages.success(
            request,
            f"Saved. Times are shown in {clock.zone_label(pref.time_zone)} on the "
            f"{pref.get_clock_display().split(' ')[0]} clock; colours: {pref.get_theme_display()}.",
        )
        return redirect("accounts:settings")
    return render(request, "accounts/settings.html", {"form": form, "zones": clock.picker_zones()})
