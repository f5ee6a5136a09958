from __future__ import annotations

from django.urls import path

from batchadmin.accounts import views

app_name = "accounts"

urlpatterns = [
    path("settings/", views.user_settings, name="settings"),
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/new/", views.token_create, name="token-create"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
]
