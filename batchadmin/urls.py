from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from batchadmin.jobs import workspace
from batchadmin.servers import health, metrics

urlpatterns = [
    path("", workspace.workspace, name="workspace"),
    path("jobs/", include("batchadmin.jobs.urls")),
    path("active-periods/", include("batchadmin.jobs.period_urls")),
    path("calendars/", include("batchadmin.jobs.calendar_urls")),
    path("", include("batchadmin.servers.urls")),
    path("account/", include("batchadmin.accounts.urls")),
    path("alerts/", include("batchadmin.alerts.urls")),
    path("audit/", include("batchadmin.audit.urls")),
    path("api/", include("batchadmin.api.urls")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.scrape, name="metrics"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's, a JSON reply).
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    ),
]
