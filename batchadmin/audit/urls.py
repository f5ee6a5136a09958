from __future__ import annotations

from django.urls import path

from batchadmin.audit import views

app_name = "audit"

urlpatterns = [
    path("", views.audit_list, name="list"),
    path("jobs/<int:pk>/", views.job_audit, name="job"),
]
