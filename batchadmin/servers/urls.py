from __future__ import annotations

from django.urls import include, path

from batchadmin.servers import views

app_name = "servers"

group_urls = [
    path("edit/", views.group_edit, name="group-edit"),
    path("delete/", views.group_delete, name="group-delete"),
    path("servers/", views.group_servers, name="group-servers"),
]

server_urls = [
    path("", views.server_detail, name="server"),
    path("delete/", views.server_delete, name="server-delete"),
]

urlpatterns = [
    path("groups/", views.group_list, name="groups"),
    path("groups/new/", views.group_create, name="group-create"),
    path("groups/<int:pk>/", include(group_urls)),
    path("servers/", views.server_list, name="servers"),
    path("servers/new/", views.server_create, name="server-create"),
    path("servers/schedule-row/", views.schedule_row, name="schedule-row"),
    path("servers/<int:pk>/", include(server_urls)),
]
