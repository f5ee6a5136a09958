from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from batchadmin.accounts import tokens
from batchadmin.accounts.forms import PreferenceForm, TokenForm
from batchadmin.accounts.middleware import remember
from batchadmin.accounts.models import ApiToken, UserPreference
from batchadmin.jobs import access
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
    return render(request, "accounts/settings.html", _settings_context(request, form=form))


def _settings_context(request: AuthedRequest, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "form": PreferenceForm(instance=UserPreference.objects.get_or_create(user=request.user)[0]),
        "zones": clock.picker_zones(),
        "tokens": ApiToken.objects.filter(user=request.user).order_by("-created"),
        "token_form": TokenForm(),
        "is_manager": access.is_manager(request.user),
    }
    return context | extra


# --- API tokens -------------------------------------------------------------------------


@require_GET
def token_list(request: AuthedRequest) -> HttpResponse:
    """Every user's API tokens, for Batch job managers (who make and revoke them for others)."""
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can see other users' API tokens.")
    context = {
        "nav": "tokens",
        "tokens": ApiToken.objects.select_related("user", "created_by").order_by(
            "user__username", "-created"
        ),
        "token_form": TokenForm(),
    }
    return render(request, "accounts/token_list.html", context)


@require_POST
def token_create(request: AuthedRequest) -> HttpResponse:
    """Make a token and show it once: only its digest is kept."""
    manager = access.is_manager(request.user)
    form = TokenForm(request.POST)
    if form.is_valid():
        owner = form.cleaned_data["user"] or request.user
        if owner != request.user and not manager:
            raise PermissionDenied("Only a Batch job manager can make tokens for other users.")
        token, plain = tokens.issue(owner, name=form.cleaned_data["name"], by=request.user)
        shown = {"new_token": token, "new_plain": plain}
    else:
        shown = {"token_form": form}
    if request.POST.get("back") == "list" and manager:
        context = {
            "nav": "tokens",
            "tokens": ApiToken.objects.select_related("user", "created_by").order_by(
                "user__username", "-created"
            ),
            "token_form": TokenForm(),
            **shown,
        }
        return render(request, "accounts/token_list.html", context)
    return render(request, "accounts/settings.html", _settings_context(request, **shown))


@require_POST
def token_revoke(request: AuthedRequest, pk: int) -> HttpResponse:
    """Revoke (delete) a token: one's own, or any for a Batch job manager."""
    manager = access.is_manager(request.user)
    mine = ApiToken.objects.all() if manager else ApiToken.objects.filter(user=request.user)
    token = get_object_or_404(mine, pk=pk)
    token.delete()
    messages.success(
        request, f"Revoked the API token {token.name!r} ({token.prefix}...) of {token.user}."
    )
    if request.POST.get("back") == "list" and manager:
        return redirect("accounts:tokens")
    return redirect("accounts:settings")
