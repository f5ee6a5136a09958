from __future__ import annotations

from django.urls import include, path

from batchadmin.jobs import views

app_name = "jobs"

job_urls = [
    path("", views.job_detail, name="detail"),
    path("row/", views.job_row, name="row"),
]

urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("bulk-status/", views.bulk_status, name="bulk-status"),
    path("<int:pk>/", include(job_urls)),
]
