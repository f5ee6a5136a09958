from __future__ import annotations

from django.urls import path

from batchadmin.alerts import views

app_name = "alerts"

urlpatterns = [
    path("poll/", views.poll, name="poll"),
    path("panel/", views.panel, name="panel"),
    path("notifications/", views.notification_list, name="notifications"),
    path("notifications/read-all/", views.notification_read_all, name="read-all"),
    path("notifications/<int:pk>/read/", views.notification_read, name="read"),
    path("rules/", views.rule_list, name="rules"),
    path("rules/new/", views.rule_create, name="rule-create"),
    path("rules/<int:pk>/edit/", views.rule_edit, name="rule-edit"),
    path("rules/<int:pk>/delete/", views.rule_delete, name="rule-delete"),
    path("webhooks/", views.webhook_list, name="webhooks"),
    path("webhooks/new/", views.webhook_create, name="webhook-create"),
    path("webhooks/<int:pk>/edit/", views.webhook_edit, name="webhook-edit"),
    path("webhooks/<int:pk>/delete/", views.webhook_delete, name="webhook-delete"),
]
