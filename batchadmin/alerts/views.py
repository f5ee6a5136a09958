"""Notifications (the bell, toasts, the full list) and a manager's alert rules.

Every signed-in user has a bell, whatever their role: alerts are per user. Each page polls
``poll`` every POLL_SECONDS while the tab is visible; the poll returns the bell's badge and turns
new popup notifications into toasts, marking them ``toasted_at`` so each shows once, in whichever
tab polls first. A common poll (nothing new) costs one indexed aggregate besides the session.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.timezone import now
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    HttpResponseStopPolling,
    trigger_client_event,
)

from batchadmin.alerts.forms import AlertRuleForm, WebhookForm
from batchadmin.alerts.models import (
    DEADLINE_KINDS,
    STUCK_KINDS,
    AlertKind,
    AlertRule,
    Notification,
    Webhook,
    WebhookDelivery,
)
from batchadmin.audit import trail
from batchadmin.jobs import access
from batchadmin.lib import durations, numbers
from batchadmin.lib.http import AuthedRequest, HtmxHttpRequest, close_dialog, render_dialog

POLL_SECONDS = 5  # templates/base.html polls at this interval; keep the two in step
# A toast is news: a notification older than this (the user was away) waits in the bell instead.
TOAST_WINDOW = dt.timedelta(minutes=10)
TOASTS_SHOWN = 4  # per poll; more at once become one "N more" toast
TOAST_CLAIM_LIMIT = 100
PANEL_SIZE = 8
PAGE_SIZE = 25
SHOW_FILTERS = {"all": "All", "unread": "Unread"}
# Errors and stuck jobs need someone to act: their toasts stay until closed.
STICKY_KINDS = (AlertKind.ERROR, *STUCK_KINDS, *DEADLINE_KINDS)
KIND_CSS: dict[str, str] = {
    AlertKind.ENDED: "status-ended",
    AlertKind.ERROR: "status-error",
    AlertKind.CANCELED: "status-canceled",
    AlertKind.LONG_RUNNING: "kind-stuck",
    AlertKind.UNSERVED: "kind-stuck",
    AlertKind.AT_RISK: "kind-stuck",
    AlertKind.MISSED: "status-error",
}


@dataclass(frozen=True)
class Item:
    """A notification as the bell, a toast and the list show it (from the event's snapshot)."""

    notification: Notification
    kind: str
    label: str
    css: str
    description: str
    job_id: int
    url: str
    problem: str  # the first failing task's error line, or why a job is stuck
    more: int  # failing tasks beyond the one shown
    took: str  # the run's duration, for a job run that ended
    unread: bool
    sticky: bool
    tone: str  # "error" or "warn": how loud the problem line is

    @classmethod
    def of(cls, n: Notification) -> Item:
        event = n.event
        details: dict[str, Any] = event.details if isinstance(event.details, dict) else {}
        kind = event.kind
        problem, more = "", 0
        if kind in STUCK_KINDS or kind in DEADLINE_KINDS:
            problem = str(details.get("reason") or "")
        failed = details.get("failed_tasks") or []
        if failed and isinstance(failed[0], dict):
            first = failed[0]
            task = " ".join(str(first.get(k) or "") for k in ("key", "description")).strip()
            error = str(first.get("error") or "")
            problem = f"{task}: {error}" if task and error else task or error
            more = max(int(details.get("failed_count") or len(failed)) - 1, 0)
        if event.job_run_id:
            url = reverse("jobs:history-run", args=[event.job_id, event.job_run_id])
        else:
            # The run's history was not kept (Save job to history), or it is a stuck job.
            url = reverse("jobs:detail", args=[event.job_id])
        return cls(
            notification=n,
            kind=kind,
            label=event.get_kind_display(),
            css=KIND_CSS.get(kind, "status-withhold"),
            description=str(details.get("description") or f"Batch job {event.job_id}"),
            job_id=event.job_id,
            url=url,
            problem=problem,
            more=more,
            took=_took(details),
            unread=n.popup and n.read_at is None,
            sticky=kind in STICKY_KINDS,
            tone="error" if kind in (AlertKind.ERROR, AlertKind.MISSED) else "warn",
        )


def _took(details: dict[str, Any]) -> str:
    try:
        started = dt.datetime.fromisoformat(str(details["started_at"]))
        ended = dt.datetime.fromisoformat(str(details["ended_at"]))
        return durations.short(ended - started)
    except (KeyError, TypeError, ValueError):  # a stuck job's event has no end
        return ""


def _mine(user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user).select_related("event")


def _unread(user: User) -> QuerySet[Notification]:
    # The partial index notification_unread_idx covers exactly this filter.
    return Notification.objects.filter(user=user, popup=True, read_at=None)


def _items(notifications: Any) -> list[Item]:
    return [Item.of(n) for n in notifications]


def _claim_toasts(user: User, fresh: int) -> list[Notification]:
    """The user's new popups, marked toasted by this poll and no other.

    1. Read the candidates without a lock (most polls stop here with ``fresh`` == 0 anyway).
    2. Lock the ones still untoasted, skipping rows another tab's poll holds, and mark them.
    """
    if not fresh:
        return []
    at = now()
    candidates = list(
        _unread(user)
        .filter(toasted_at=None, created__gte=at - TOAST_WINDOW)
        .select_related("event")
        .order_by("created", "pk")[:TOAST_CLAIM_LIMIT]
    )
    if not candidates:
        return []
    with transaction.atomic():
        won = set(
            Notification.objects.filter(pk__in=[n.pk for n in candidates], toasted_at=None)
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)
        )
        if won:
            Notification.objects.filter(pk__in=won).update(toasted_at=at)
    return [n for n in candidates if n.pk in won]


def _with_badge(request: AuthedRequest, template: str, context: dict[str, Any]) -> HttpResponse:
    """Render ``template`` with the bell's badge out of band (after a read changes the count)."""
    context["unread"] = _unread(request.user).count()
    context["badge_oob"] = True
    return render(request, template, context)


# --- The bell -------------------------------------------------------------------------------


@login_not_required
@require_GET
def poll(request: HttpRequest) -> HttpResponse:
    """The bell's badge, plus new popups as toasts (appended to #toasts out of band)."""
    if not request.user.is_authenticated:
        # Signed out (in another tab, or the session expired): stop, a login page is no badge.
        response: HttpResponse = HttpResponseStopPolling()
        return response
    user = request.user
    assert isinstance(user, User)
    counts = _unread(user).aggregate(
        unread=Count("pk"),
        fresh=Count("pk", filter=Q(toasted_at=None, created__gte=now() - TOAST_WINDOW)),
    )
    toasts = _items(_claim_toasts(user, counts["fresh"]))
    response = render(
        request,
        "alerts/poll.html",
        {
            "unread": counts["unread"],
            "toasts": toasts[:TOASTS_SHOWN],
            "more_toasts": len(toasts) - TOASTS_SHOWN,
        },
    )
    if toasts:
        # An open bell panel or notifications page reloads to show them.
        trigger_client_event(response, "notifications-changed")
    return response


@login_not_required
@require_GET
def panel(request: HtmxHttpRequest) -> HttpResponse:
    """The bell's dropdown: the latest popups, Mark all read, the way to the full list."""
    if not request.user.is_authenticated:
        if request.htmx:
            response: HttpResponse = HttpResponseClientRedirect(reverse("login"))
            return response
        return redirect_to_login(request.get_full_path())
    assert isinstance(request.user, User)
    return _panel(request, request.user)


def _panel(request: HttpRequest, user: User) -> HttpResponse:
    recent = list(_mine(user).filter(popup=True)[:PANEL_SIZE])
    context = {
        "items": _items(recent),
        "unread": _unread(user).count(),
        "upto": max((n.pk for n in recent), default=""),
        "is_manager": access.is_manager(user),
        "badge_oob": True,
    }
    return render(request, "alerts/_panel.html", context)


# --- Notifications --------------------------------------------------------------------------


def _list_context(user: User, params: QueryDict) -> dict[str, Any]:
    show = params.get("show", "all")
    if show not in SHOW_FILTERS:
        show = "all"
    notifications = _mine(user)
    if show == "unread":
        notifications = notifications.filter(popup=True, read_at=None)
    page = Paginator(notifications, PAGE_SIZE).get_page(params.get("page"))
    items = _items(page.object_list)
    return {
        "nav": "notifications",
        "show": show,
        "filters": SHOW_FILTERS,
        "page": page,
        "items": items,
        "unread": _unread(user).count(),
        # Mark all read stops at the newest one listed; on page 1 that is the newest of all.
        "upto": max((i.notification.pk for i in items), default="") if page.number == 1 else "",
        "is_manager": access.is_manager(user),
    }


@require_GET
def notification_list(request: AuthedRequest) -> HttpResponse:
    """Every alert the user received (popup or e-mail), newest first, paged."""
    template = "alerts/notification_list.html"
    if request.htmx and request.htmx.target == "notification-list":
        template += "#notification-list"
    return render(request, template, _list_context(request.user, request.GET))


@require_POST
def notification_read(request: AuthedRequest, pk: int) -> HttpResponse:
    """Mark one notification read: clicking it anywhere, or its Mark read button."""
    notification = get_object_or_404(_mine(request.user), pk=pk)
    if notification.read_at is None:
        # Conditional: a second tab's click keeps the first time it was read.
        Notification.objects.filter(pk=pk, read_at=None).update(read_at=now())
        notification.refresh_from_db(fields=["read_at"])
    if not request.htmx:
        return redirect("alerts:notifications")
    return _with_badge(
        request, "alerts/notification_list.html#notification-row", {"item": Item.of(notification)}
    )


@require_POST
def notification_read_all(request: AuthedRequest) -> HttpResponse:
    """Mark all read, up to the newest notification the user was shown (not one that came after)."""
    unread = _unread(request.user)
    upto = numbers.whole(request.POST.get("upto", ""))
    if upto is not None:
        unread = unread.filter(pk__lte=upto)
    count = unread.update(read_at=now())
    target = request.htmx.target if request.htmx else None
    if target == "notify-panel":
        return _panel(request, request.user)
    if target == "notification-list":
        # The list's filter and page ride along as hidden fields.
        context = _list_context(request.user, request.POST)
        return render(request, "alerts/notification_list.html#notification-list", context)
    messages.success(request, f"Marked {count} notification{'s' if count != 1 else ''} read.")
    return redirect("alerts:notifications")


# --- Alert rules (Batch job managers) -------------------------------------------------------


# What the audit trail compares of an alert rule (the form's fields).
RULE_AUDIT_FIELDS = ["group", "priority", "ended", "error", "canceled", "stuck", "popup", "email"]


def _require_manager(request: AuthedRequest) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can set up alert rules.")


@require_GET
def rule_list(request: AuthedRequest) -> HttpResponse:
    _require_manager(request)
    rules = (
        AlertRule.objects.filter(user=request.user)
        .select_related("group")
        .prefetch_related("webhooks")
    )
    context = {
        "nav": "rules",
        # Rules for any group first: the widest nets on top.
        "rules": rules.order_by(F("group__code").asc(nulls_first=True), "priority", "pk"),
        "stuck_help": AlertRule._meta.get_field("stuck").help_text,
        "deadline_help": AlertRule._meta.get_field("deadline").help_text,
    }
    template = "alerts/rule_list.html"
    if request.htmx and request.htmx.target == "rule-table":
        template += "#rule-table"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
def rule_create(request: AuthedRequest) -> HttpResponse:
    return _rule_form(request, None)


@require_http_methods(["GET", "POST"])
def rule_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    # Only one's own rules: another manager's rule id is as unknown as a missing one.
    return _rule_form(request, get_object_or_404(AlertRule, pk=pk, user=request.user))


def _rule_form(request: AuthedRequest, rule: AlertRule | None) -> HttpResponse:
    _require_manager(request)
    before = trail.snapshot(rule, RULE_AUDIT_FIELDS) if rule else {}
    form = AlertRuleForm(request.POST or None, instance=rule, user=request.user)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            saved = form.save()
            trail.record_edit(
                trail.Action.RULE_EDIT if rule else trail.Action.RULE_ADD,
                before=before,
                after=trail.snapshot(saved, RULE_AUDIT_FIELDS),
                user=request.user,
                target=f"alert rule for {describe_scope(saved)}",
            )
        verb = "Saved" if rule else "Created"
        messages.success(request, f"{verb} the alert rule for {describe_scope(saved)}.")
        return close_dialog(request, "rules-changed", "alerts:rules")
    return render_dialog(
        request, "alerts/rule_form.html", {"form": form, "rule": rule}, nav="rules"
    )


@require_http_methods(["GET", "POST"])
def rule_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_manager(request)
    rule = get_object_or_404(AlertRule.objects.select_related("group"), pk=pk, user=request.user)
    if request.method == "POST":
        scope = describe_scope(rule)
        with transaction.atomic():
            before = trail.snapshot(rule, RULE_AUDIT_FIELDS)
            rule.delete()
            trail.record(
                trail.Action.RULE_DELETE,
                user=request.user,
                target=f"alert rule for {scope}",
                changes=trail.changed(before, {}),
            )
        messages.success(request, f"Deleted the alert rule for {scope}.")
        return close_dialog(request, "rules-changed", "alerts:rules")
    return render_dialog(
        request,
        "alerts/rule_delete.html",
        {"rule": rule, "scope": describe_scope(rule)},
        nav="rules",
    )


def describe_scope(rule: AlertRule) -> str:
    """'jobs in batch group Integration with priority High'; 'every batch job' when open."""
    parts = []
    if rule.group_id:
        parts.append(f"in batch group {rule.group}")
    if rule.priority:
        parts.append(f"with priority {rule.get_priority_display()}")
    return "jobs " + " ".join(parts) if parts else "every batch job"


# --- Webhooks (Batch job managers) ----------------------------------------------------------

DELIVERIES_SHOWN = 50


def _require_webhook_manager(request: AuthedRequest) -> None:
    if not access.is_manager(request.user):
        raise PermissionDenied("Only a Batch job manager can set up webhooks.")


@require_GET
def webhook_list(request: AuthedRequest) -> HttpResponse:
    """The webhooks and the delivery log: each request's state, attempts and last answer."""
    _require_webhook_manager(request)
    hooks = list(Webhook.objects.order_by("code").annotate(n=Count("deliveries")))
    deliveries = WebhookDelivery.objects.select_related("webhook", "event").order_by(
        "-created", "-pk"
    )
    shown = request.GET.get("webhook", "")
    if shown:
        deliveries = deliveries.filter(webhook__code=shown)
    context = {
        "nav": "rules",
        "hooks": hooks,
        "deliveries": deliveries[:DELIVERIES_SHOWN],
        "shown": shown,
        "shown_max": DELIVERIES_SHOWN,
    }
    template = "alerts/webhook_list.html"
    if request.htmx and request.htmx.target == "webhook-area":
        template += "#webhook-area"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
def webhook_create(request: AuthedRequest) -> HttpResponse:
    return _webhook_form(request, None)


@require_http_methods(["GET", "POST"])
def webhook_edit(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_webhook_manager(request)
    return _webhook_form(request, get_object_or_404(Webhook, pk=pk))


def _webhook_form(request: AuthedRequest, hook: Webhook | None) -> HttpResponse:
    _require_webhook_manager(request)
    form = WebhookForm(request.POST or None, instance=hook)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        messages.success(request, f"{'Saved' if hook else 'Created'} the webhook {saved.code}.")
        return close_dialog(request, "webhooks-changed", "alerts:webhooks")
    return render_dialog(
        request, "alerts/webhook_form.html", {"form": form, "hook": hook}, nav="rules"
    )


@require_http_methods(["GET", "POST"])
def webhook_delete(request: AuthedRequest, pk: int) -> HttpResponse:
    _require_webhook_manager(request)
    hook = get_object_or_404(Webhook, pk=pk)
    if request.method == "POST":
        hook.delete()
        messages.success(request, f"Deleted the webhook {hook.code} and its delivery log.")
        return close_dialog(request, "webhooks-changed", "alerts:webhooks")
    context = {"hook": hook, "jobs": hook.jobs.count(), "rules": hook.rules.count()}
    return render_dialog(request, "alerts/webhook_delete.html", context, nav="rules")
