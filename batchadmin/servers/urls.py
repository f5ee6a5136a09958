from __future__ import annotations

from django.urls import path

from batchadmin.servers import views

app_name = "servers"

urlpatterns = [
    path("groups/", views.group_list, name="groups"),
    path("servers/", views.server_list, name="servers"),
]
