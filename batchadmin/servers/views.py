"""Batch groups and Server configuration (D365 System administration > Setup).

Everyone with a batch role reads these pages; only Batch job managers change them. Changes to a
server's groups reach its running workers within one heartbeat (engine/worker.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    push_url,
    reswap,
    retarget,
    trigger_client_event,
)

from batchadmin.audit import trail
from batchadmin.jobs import access
from batchadmin.jobs.models import RUNNING_STATUSES, BatchTask
from batchadmin.lib import numbers
from batchadmin.lib.http import AuthedRequest
from batchadmin.servers import coverage, forms
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
)

GROUP_TARGETS = ("group-table", "group-detail")


# What the audit trail compares of a batch group and of a batch server.
GROUP_AUDIT_FIELDS = [
    "code",
    "description",
    "default_priority",
    "max_concurrency",
    "max_tasks",
    "reserved_capacity",
]
SERVER_AUDIT_FIELDS = ["name", "description", "enabled", "time_zone", "groups"]


def _server_snapshot(server: BatchServer) -> dict[str, Any]:
    """The server's fields, and its schedule as "08:00-18:00 x4" rows, as they are saved."""
    out = trail.snapshot(server, SERVER_AUDIT_FIELDS)
    rows = server.schedule.order_by("start_time") if server.pk else []
    out["Schedule"] = [f"{r.start_time:%H:%M}-{r.end_time:%H:%M} x{r.max_threads}" for r in rows]
    return out


def _require_viewer(request: AuthedRequest) -> None:
    """Any batch role may read the setup pages; people without one may not."""
    if not (access.is_manager(request.user) or access.roles(request.user)):
        raise PermissionDenied("You have no batch role.")


def _require_manager(request: AuthedRequest) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can change batch groups and servers.")


def _dialog_error(response: HttpResponse) -> HttpResponse:
    """An invalid dialog form goes back into the dialog, whatever the form's own target."""
    return reswap(retarget(response, "#dialog"), "innerHTML")


# --- Batch groups ----------------------------------------------------------------------------


def _group_pane(
    request: AuthedRequest,
    selected_pk: int | None,
    *,
    picklist: forms.GroupServersForm | None = None,
    staged: set[int] | None = None,
) -> dict[str, Any]:
    """The groups page with one group selected (the default group if none or unknown).

    ``staged`` is the selected group's unsaved Selected list, while servers are moved about.
    """
    # D365 lists the default ("empty") group first.
    groups = sorted(BatchGroup.objects.all(), key=lambda g: (not g.is_default(), g.code.lower()))
    servers = coverage.servers_with_settings()
    online_ids = coverage.online_server_ids()
    cover = coverage.coverage(groups, servers, online_ids=online_ids)
    selected = next((g for g in groups if g.pk == selected_pk), None)
    if selected is None and groups:
        selected = next((g for g in groups if g.is_default()), groups[0])
    # Maximum running tasks, shown as used / limit (one query, only when a group has one).
    capped = [g.pk for g in groups if g.task_cap() is not None]
    running: dict[int, int] = (
        dict(
            BatchTask.objects.running()
            .filter(group_id__in=capped)
            .values_list("group_id")
            .order_by()
            .annotate(n=Count("pk"))
        )
        if capped
        else {}
    )
    rows = [(g, cover[g.pk], running.get(g.pk, 0)) for g in groups]
    saved = {s.pk for s in servers if any(g == selected for g in s.groups.all())}
    chosen = saved if staged is None else staged
    return {
        "nav": "groups",
        "rows": rows,
        "unserved": [(g, c) for g, c, _ in rows if not c.ok],
        "selected": selected,
        "cover": cover[selected.pk] if selected else None,
        "selected_running": running.get(selected.pk, 0) if selected else 0,
        "servers": servers,
        "online_ids": online_ids,
        "is_manager": access.is_manager(request.user),
        "heartbeat": int(settings.BATCH_HEARTBEAT_SECONDS),
        "picklist": picklist or forms.GroupServersForm(),
        "chosen": [s for s in servers if s.pk in chosen],
        "remaining": [s for s in servers if s.pk not in chosen],
        "unsaved": chosen != saved,
    }


def _selected_pk(query: QueryDict) -> int | None:
    return numbers.whole(query.get("group", ""))


@require_GET
def group_list(request: AuthedRequest) -> HttpResponse:
    _require_viewer(request)
    context = _group_pane(request, _selected_pk(request.GET))
    template = "servers/group_list.html"
    if request.htmx and request.htmx.target in GROUP_TARGETS:
        template += f"#{request.htmx.target}"
    elif request.htmx:
        template += "#groups"
    return render(request, template, context)


@require_POST
def group_servers(request: AuthedRequest, pk: int) -> HttpResponse:
    """Move servers between the Selected and Remaining lists; Save writes the Selected list."""
    _require_manager(request)
    group = get_object_or_404(BatchGroup, pk=pk)
    form = forms.GroupServersForm(request.POST)
    if not form.is_valid():
        # Keep the lists as they were on screen when their ids are still valid.
        staged = {s.pk for s in form.cleaned_data.get("selected", group.servers.all())}
        context = _group_pane(request, group.pk, picklist=form, staged=staged)
    else:
        chosen = set(form.cleaned_data["selected"])
        action = form.cleaned_data["action"]
        if action == "add":
            chosen |= set(form.cleaned_data["add"])
        elif action == "add-all":
            chosen = set(BatchServer.objects.all())
        elif action == "remove":
            chosen -= set(form.cleaned_data["remove"])
        elif action == "remove-all":
            chosen = set()
        elif action == "undo":
            chosen = set(group.servers.all())
        elif action == "save":
            with transaction.atomic():
                before = trail.snapshot(group, ["servers"])
                group.servers.set(chosen)
                trail.record_edit(
                    trail.Action.GROUP_EDIT,
                    before=before,
                    after=trail.snapshot(group, ["servers"]),
                    user=request.user,
                    target=f"batch group {group.code}",
                )
            names = ", ".join(sorted(s.name for s in chosen)) or "no server"
            notice = (
                f"Group {group.code} is now served by {names}. Running workers follow within "
                f"{int(settings.BATCH_HEARTBEAT_SECONDS)} s."
            )
            return _groups_done(request, group.pk, notice)
        context = _group_pane(request, group.pk, staged={s.pk for s in chosen})
    if request.htmx:
        return render(request, "servers/group_list.html#group-detail", context)
    return render(request, "servers/group_list.html", context)


def _groups_done(
    request: AuthedRequest, selected_pk: int | None, notice: str, *, dialog: bool = False
) -> HttpResponse:
    """After a change: the redrawn groups area for htmx (notice inside), else a redirect."""
    url = reverse("servers:groups") + (f"?group={selected_pk}" if selected_pk else "")
    if not request.htmx:
        messages.success(request, notice)
        return redirect(url)
    context = {**_group_pane(request, selected_pk), "notice": notice}
    response = render(request, "servers/group_list.html#groups", context)
    # The warnings and the table change too, not only the form that posted.
    reswap(retarget(response, "#groups"), "outerHTML")
    if dialog:
        push_url(response, url)
        trigger_client_event(response, "dialog-close")
    return response


@require_http_methods(["GET", "POST"])
def group_create(request: AuthedRequest) -> HttpResponse:
    return _group_form(request, None)


@require_http_methods(["GET", "POST"])
def group_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    return _group_form(request, get_object_or_404(BatchGroup, pk=pk))


def _group_form(request: AuthedRequest, group: BatchGroup | None) -> HttpResponse:
    _require_manager(request)
    before = trail.snapshot(group, GROUP_AUDIT_FIELDS) if group else {}
    form = forms.GroupForm(request.POST or None, instance=group)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            saved = form.save()
            trail.record_edit(
                trail.Action.GROUP_EDIT if group else trail.Action.GROUP_ADD,
                before=before,
                after=trail.snapshot(saved, GROUP_AUDIT_FIELDS),
                user=request.user,
                target=f"batch group {saved.code}",
            )
        verb = "Saved" if group else "Created"
        notice = f"{verb} batch group {saved.code}."
        if saved.is_paused():
            notice += " It is paused: running tasks finish, no new ones start."
        elif group is not None and {"max_concurrency", "max_tasks"} & set(form.changed_data):
            notice += " The new limit applies within a few seconds."
        return _groups_done(request, saved.pk, notice, dialog=True)
    context = {"form": form, "group": group, "nav": "groups"}
    if request.htmx:
        response = render(request, "servers/group_list.html#group-dialog", context)
        return _dialog_error(response) if request.method == "POST" else response
    return render(request, "servers/group_form.html", context)


@require_http_methods(["GET", "POST"])
def group_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    group = get_object_or_404(BatchGroup, pk=pk)
    used = BatchTask.objects.filter(group=group).count()
    problem = ""
    if group.is_default():
        problem = "The default group can't be deleted: new tasks go into it."
    elif used:
        problem = (
            f"Group {group.code} is used by {used} task{'s' if used != 1 else ''}. "
            "Move them to another group first."
        )
    if request.method == "POST" and not problem:
        code = group.code
        with transaction.atomic():
            before = trail.snapshot(group, GROUP_AUDIT_FIELDS)
            group.delete()
            trail.record(
                trail.Action.GROUP_DELETE,
                user=request.user,
                target=f"batch group {code}",
                changes=trail.changed(before, {}),
            )
        return _groups_done(request, None, f"Deleted batch group {code}.", dialog=True)
    context = {"group": group, "problem": problem, "used": used, "nav": "groups"}
    if request.htmx:
        response = render(request, "servers/group_list.html#group-delete-dialog", context)
        return _dialog_error(response) if request.method == "POST" else response
    if request.method == "POST":
        messages.error(request, problem)
        return redirect(f"{reverse('servers:groups')}?group={group.pk}")
    return render(request, "servers/group_form.html", {**context, "delete": True})


# --- Server configuration --------------------------------------------------------------------


def _activity(request: AuthedRequest, servers: list[BatchServer]) -> dict[str, Any]:
    """Replicas and running tasks of ``servers``: the part of the pages that refreshes.

    A batch user sees the tasks of jobs they may see; the others are only counted.
    """
    at = now()
    ids = [s.pk for s in servers]
    replicas = list(BatchServerReplica.objects.filter(server_id__in=ids).order_by("hostname"))
    running = BatchTask.objects.filter(server_id__in=ids, status__in=RUNNING_STATUSES)
    hidden: dict[int, int] = {}
    if not access.can_view_all(request.user):
        visible = access.visible_jobs(request.user)
        hidden = dict(
            running.exclude(job__in=visible)
            .order_by()
            .values_list("server_id")
            .annotate(n=Count("pk"))
        )
        running = running.filter(job__in=visible)
    tasks = list(running.select_related("job").order_by("started_at", "pk"))
    cards = []
    for server in servers:
        mine = [r for r in replicas if r.server_id == server.pk]
        online = [r for r in mine if r.is_online(at)]
        cards.append(
            {
                "server": server,
                "replicas": mine,
                "online": online,
                "busy": sum(r.busy for r in online),
                "threads": sum(r.concurrency for r in online),
                "threads_now": server.max_threads_at(at),
                "running": [t for t in tasks if t.server_id == server.pk],
                "hidden": hidden.get(server.pk, 0),
            }
        )
    return {"cards": cards, "now": at}


@require_GET
def server_list(request: AuthedRequest) -> HttpResponse:
    _require_viewer(request)
    servers = coverage.servers_with_settings()
    context = {
        "nav": "servers",
        "is_manager": access.is_manager(request.user),
        **_activity(request, servers),
    }
    template = "servers/server_list.html"
    if request.htmx:
        template += "#server-list"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
def server_create(request: AuthedRequest) -> HttpResponse:
    _require_manager(request)
    return _server_page(request, BatchServer(), [])


@require_http_methods(["GET", "POST"])
def server_detail(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_viewer(request)
    server = get_object_or_404(BatchServer.objects.prefetch_related("groups", "schedule"), pk=pk)
    if request.htmx and request.htmx.target == "server-activity":
        return render(
            request,
            "servers/server_detail.html#server-activity",
            {"server": server, **_activity(request, [server])},
        )
    if request.method == "POST":
        _require_manager(request)
    return _server_page(request, server, [server])


def _server_page(
    request: AuthedRequest, server: BatchServer, shown: list[BatchServer]
) -> HttpResponse:
    manager = access.is_manager(request.user)
    data = request.POST if request.method == "POST" else None
    adding = server._state.adding
    before = {} if adding else _server_snapshot(server)
    form = forms.ServerForm(data, instance=server)
    formset = forms.ScheduleFormSet(data, instance=server, prefix="schedule")
    if data is not None and form.is_valid() and formset.is_valid():
        with transaction.atomic():
            saved = form.save()
            formset.instance = saved
            formset.save()
            trail.record_edit(
                trail.Action.SERVER_ADD if adding else trail.Action.SERVER_EDIT,
                before=before,
                after=_server_snapshot(saved),
                user=request.user,
                target=f"batch server {saved.name}",
            )
        messages.success(
            request,
            f"Saved batch server {saved.name}. Running workers follow within "
            f"{int(settings.BATCH_HEARTBEAT_SECONDS)} s.",
        )
        return redirect("servers:server", pk=saved.pk)
    context = {
        "nav": "servers",
        "server": server,
        "form": form,
        "formset": formset,
        "is_manager": manager,
        "online": not server._state.adding
        and BatchServerReplica.objects.online().filter(server=server).exists(),
        **_activity(request, shown),
    }
    return render(request, "servers/server_detail.html", context)


@require_GET
def schedule_row(request: AuthedRequest) -> HttpResponse:
    """One more empty schedule row for the formset (htmx appends it and bumps TOTAL_FORMS)."""
    _require_manager(request)
    index = numbers.whole(request.GET.get("schedule-TOTAL_FORMS", "")) or 0
    formset = forms.ScheduleFormSet(prefix="schedule")
    form = formset.empty_form  # with the formset's extra fields (id, server, DELETE)
    form.prefix = formset.add_prefix(index)
    return render(
        request,
        "servers/server_detail.html#schedule-row",
        {"row": form, "total": index + 1},
    )


@require_http_methods(["GET", "POST"])
def server_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    server = get_object_or_404(BatchServer, pk=pk)
    online = BatchServerReplica.objects.online().filter(server=server).count()
    problem = ""
    if online:
        problem = (
            f"{server.name} has {online} online replica{'s' if online != 1 else ''}; stop its "
            "workers first, or clear Is batch server to stop it taking tasks."
        )
    if request.method == "POST" and not problem:
        name = server.name
        with transaction.atomic():
            before = _server_snapshot(server)
            server.delete()
            trail.record(
                trail.Action.SERVER_DELETE,
                user=request.user,
                target=f"batch server {name}",
                changes=trail.changed(before, {}),
            )
        messages.success(request, f"Deleted batch server {name}.")
        if request.htmx:
            return HttpResponseClientRedirect(reverse("servers:servers"))
        return redirect("servers:servers")
    context = {"server": server, "problem": problem, "nav": "servers"}
    if request.htmx:
        response = render(request, "servers/server_detail.html#server-delete-dialog", context)
        return _dialog_error(response) if request.method == "POST" else response
    if request.method == "POST":
        messages.error(request, problem)
        return redirect("servers:server", pk=server.pk)
    return render(request, "servers/server_delete.html", context)
