from __future__ import annotations

from django.urls import path

from batchadmin.accounts import views

app_name = "accounts"

urlpatterns = [path("settings/", views.user_settings, name="settings")]
