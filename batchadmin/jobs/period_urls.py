from __future__ import annotations

from django.urls import path

from batchadmin.jobs import period_views

app_name = "periods"

urlpatterns = [
    path("", period_views.period_list, name="list"),
    path("new/", period_views.period_create, name="create"),
    path("<int:pk>/edit/", period_views.period_edit, name="edit"),
    path("<int:pk>/delete/", period_views.period_delete, name="delete"),
]
