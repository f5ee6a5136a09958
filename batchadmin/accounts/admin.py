from __future__ import annotations

from django.contrib import admin

from batchadmin.accounts.models import UserPreference


@admin.register(UserPreference)
class UserPreferenceAdmin(admin.ModelAdmin[UserPreference]):
    list_display = ["user", "time_zone"]
