from __future__ import annotations

from django.urls import path

from batchadmin.jobs import calendar_views

app_name = "calendars"

urlpatterns = [
    path("", calendar_views.calendar_list, name="list"),
    path("new/", calendar_views.calendar_create, name="create"),
    path("<int:pk>/", calendar_views.calendar_detail, name="detail"),
    path("<int:pk>/edit/", calendar_views.calendar_edit, name="edit"),
    path("<int:pk>/delete/", calendar_views.calendar_delete, name="delete"),
    path("<int:pk>/import/", calendar_views.calendar_import, name="import"),
    path("<int:pk>/dates/", calendar_views.date_add, name="date-add"),
    path("<int:pk>/dates/<int:date_pk>/remove/", calendar_views.date_remove, name="date-remove"),
]
