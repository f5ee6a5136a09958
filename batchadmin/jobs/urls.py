from __future__ import annotations

from django.urls import include, path

from batchadmin.jobs import history_views, inquiries, list_views, ops_views, views

app_name = "jobs"

job_urls = [
    path("", views.job_detail, name="detail"),
    path("change-status/", views.change_status, name="change-status"),
    path("alerts/", views.job_alerts, name="alerts"),
    path("copy/", views.job_copy, name="copy"),
    path("recurrence/", views.job_recurrence, name="recurrence"),
    path("recurrence/preview/", views.recurrence_preview, name="recurrence-preview"),
    path("recurrence/remove/", views.recurrence_remove, name="recurrence-remove"),
    path("tasks/new/", views.task_new, name="task-new"),
    path("tasks/parameters/", views.task_parameters, name="task-parameters"),
    path("tasks/page/", views.task_page, name="task-page"),
    path("tasks/<int:task_pk>/", views.task_row, name="task-row"),
    path("tasks/<int:task_pk>/edit/", views.task_edit, name="task-edit"),
    path("tasks/<int:task_pk>/delete/", views.task_delete, name="task-delete"),
    path("history/", history_views.job_history, name="history"),
    path("history/<int:run_pk>/", history_views.history_run, name="history-run"),
    path("history/<int:run_pk>/log/", history_views.run_log, name="log"),
    path("runs/", history_views.job_runs, name="runs-grid"),
    path("rerun/", history_views.job_rerun, name="rerun"),
    path("run-now/", ops_views.job_run_now, name="run-now"),
    path("pause/", ops_views.job_pause, name="pause"),
    path("resume/", ops_views.job_resume, name="resume"),
    path("backfill/", ops_views.job_backfill, name="backfill"),
    path("tasks/<int:task_pk>/skip/", ops_views.task_skip, name="task-skip"),
    path("tasks/<int:task_pk>/rerun-from/", ops_views.task_rerun_from, name="task-rerun-from"),
]

urlpatterns = [
    path("", list_views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("bulk-status/", list_views.bulk_status, name="bulk-status"),
    path("export.csv", list_views.job_export, {"fmt": "csv"}, name="export-csv"),
    path("export.xlsx", list_views.job_export, {"fmt": "xlsx"}, name="export-xlsx"),
    path("filters/", list_views.filter_save, name="filter-save"),
    path("filters/<int:pk>/delete/", list_views.filter_delete, name="filter-delete"),
    path("history/", inquiries.run_inquiry, name="runs"),
    path("tasks/", inquiries.attempt_inquiry, name="attempts"),
    path("<int:pk>/", include(job_urls)),
]
