"""The bell, its poll (badge and toasts), the panel and the notifications page.

Delivery (alerts.delivery) writes Notification rows; these tests write them directly.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import time_machine
from django.contrib.auth.models import User
from django.utils.timezone import now

from batchadmin.accounts.models import UserPreference
from batchadmin.alerts.models import AlertEvent, AlertKind, Notification
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus
from tests.jobs.form_base import FormTestCase, squash

NOON = dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.UTC)
POLL = "/alerts/poll/"
PANEL = "/alerts/panel/"
LIST = "/alerts/notifications/"
READ_ALL = "/alerts/notifications/read-all/"


def read_url(n: Notification) -> str:
    return f"/alerts/notifications/{n.pk}/read/"


def toasts(html: str) -> list[str]:
    """The toasts of a poll answer, one string each."""
    return re.findall(r'<div class="toast toast-[^"]*".*?</button>\s*</div>', html, re.S)


class NotificationTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = self.enterContext(time_machine.travel(NOON, tick=False))
        self.job = self.make_job(description="Nightly settlement", status=BatchStatus.ERROR)
        self.job_run = BatchJobRun.objects.create(
            job=self.job,
            status=BatchStatus.ERROR,
            scheduled_start=NOON - dt.timedelta(minutes=5),
            started_at=NOON - dt.timedelta(minutes=5),
            ended_at=NOON - dt.timedelta(minutes=2),
        )
        self.login(self.bob)

    _keys = 0

    def event(
        self,
        kind: AlertKind = AlertKind.ERROR,
        *,
        job: BatchJob | None = None,
        run: BatchJobRun | None = None,
        **details: Any,
    ) -> AlertEvent:
        job = job or self.job
        type(self)._keys += 1
        snapshot: dict[str, Any] = {
            "description": job.description,
            "status": kind.value if kind in ("ended", "error", "canceled") else "executing",
            "started_at": (NOON - dt.timedelta(minutes=5)).isoformat(),
            "ended_at": (NOON - dt.timedelta(minutes=2)).isoformat(),
        }
        if kind == AlertKind.ERROR:
            snapshot["failed_tasks"] = [
                {"key": "T2", "description": "Post invoices", "error": "ZeroDivisionError: oops"}
            ]
            snapshot["failed_count"] = 1
        snapshot.update(details)
        return AlertEvent.objects.create(
            job=job,
            job_run=run,
            kind=kind,
            key=f"test:{self._keys}",
            details=snapshot,
            created=now(),
        )

    def notify(
        self, user: User | None = None, event: AlertEvent | None = None, **fields: Any
    ) -> Notification:
        return Notification.objects.create(
            event=event or self.event(run=self.job_run),
            user=user or self.bob,
            created=fields.pop("created", now()),
            **fields,
        )


class PollTestCase(NotificationTestCase):
    def test_it_stops_polling_for_a_signed_out_browser(self):
        self.client.logout()
        r = self.client.get(POLL, headers=self.htmx())
        assert r.status_code == 286  # htmx: stop polling; no login page swapped into the bell
        assert r.content == b""

    def test_a_quiet_poll_is_a_hidden_badge_and_one_query_besides_the_session(self):
        self.client.get(POLL)  # the session's time zone is stored once
        with self.assertNumQueries(3):  # session, user, the unread aggregate
            r = self.client.get(POLL, headers=self.htmx())
        html = r.content.decode()
        assert html.lstrip().startswith('<span id="bell-count" class="bell-count" hidden>')
        assert "toast" not in html
        assert "HX-Trigger" not in r.headers

    def test_a_new_popup_becomes_one_toast_and_counts_in_the_badge(self):
        n = self.notify()
        r = self.client.get(POLL, headers=self.htmx())
        html = squash(r.content.decode())
        assert re.search(r'<span id="bell-count" class="bell-count">\s*1 <span', html)
        [toast] = toasts(html)
        assert 'hx-swap-oob="beforeend:#toasts"' in html
        for text in (
            'class="toast toast-error"',
            'role="alert"',
            '<span class="badge status-error">Error</span>',
            f'href="/jobs/{self.job.pk}/history/{self.job_run.pk}/"',
            f'data-read-url="{read_url(n)}"',
            ">Nightly settlement</a>",
            "T2 Post invoices: ZeroDivisionError: oops",
            f"Batch job {self.job.pk}",
            "Open the run",
            'aria-label="Dismiss"',
        ):
            assert text in toast, text
        assert "data-dismiss-after" not in toast  # an error stays until closed
        assert json.loads(r.headers["HX-Trigger"]) == {"notifications-changed": {}}
        n.refresh_from_db()
        assert n.toasted_at == NOON
        assert n.read_at is None
        # Once: the next poll (this tab or another) shows no toast, the badge still counts it.
        html = squash(self.client.get(POLL, headers=self.htmx()).content.decode())
        assert toasts(html) == []
        assert re.search(r'class="bell-count">\s*1 <span', html)

    def test_ended_and_canceled_toasts_go_by_themselves_stuck_ones_stay(self):
        self.notify(event=self.event(AlertKind.ENDED, run=self.job_run))
        self.notify(event=self.event(AlertKind.LONG_RUNNING, reason="Running 3 h 10 min."))
        html = squash(self.client.get(POLL, headers=self.htmx()).content.decode())
        ended, long_running = toasts(html)
        assert '<span class="badge status-ended">Ended</span>' in ended
        assert 'data-dismiss-after="10"' in ended
        assert 'role="alert"' not in ended
        assert '<span class="badge kind-stuck">Running long</span>' in long_running
        assert "Running 3 h 10 min." in long_running
        assert "data-dismiss-after" not in long_running
        # No run to link to: the job.
        assert f'href="/jobs/{self.job.pk}/"' in long_running
        assert "Open the job" in long_running

    def test_it_skips_others_read_old_and_email_only_notifications(self):
        self.notify(user=self.alice)
        self.notify(read_at=NOON)
        self.notify(popup=False, email=Notification.Email.SENT)
        old = self.notify(created=NOON - dt.timedelta(hours=2))  # the user was away
        html = squash(self.client.get(POLL, headers=self.htmx()).content.decode())
        assert toasts(html) == []
        assert re.search(r'class="bell-count">\s*1 <span', html)  # only the old one is unread
        old.refresh_from_db()
        assert old.toasted_at is None  # it waits in the bell

    def test_many_at_once_show_a_few_and_sum_up_the_rest(self):
        for _ in range(7):
            self.notify()
        html = squash(self.client.get(POLL, headers=self.htmx()).content.decode())
        assert len(toasts(html)) == 5  # four alerts and the summary
        assert "3 more alerts" in html
        assert f'href="{LIST}?show=unread"' in html
        assert not Notification.objects.filter(toasted_at=None).exists()
        assert re.search(r'class="bell-count">\s*7 <span', html)

    def test_the_badge_caps_at_99(self):
        Notification.objects.bulk_create(
            [Notification(event=self.event(run=self.job_run), user=self.bob) for _ in range(100)]
        )
        html = squash(self.client.get(POLL, headers=self.htmx()).content.decode())
        assert re.search(r'class="bell-count">\s*99\+ <span', html)

    def test_polls_with_toasts_cost_the_same_for_one_or_many(self):
        self.client.get(POLL)
        self.notify()
        with self.assertNumQueries(8) as one:
            self.client.get(POLL, headers=self.htmx())
        for _ in range(10):
            self.notify()
        with self.assertNumQueries(len(one.captured_queries)):
            self.client.get(POLL, headers=self.htmx())


class BellTestCase(NotificationTestCase):
    def test_every_signed_in_user_has_the_bell_and_its_poll(self):
        for user in (self.alice, self.bob, self.charlie, self.dave):
            self.login(user)
            html = self.client.get("/account/settings/").content.decode()
            assert 'id="notify"' in html, user
            assert f'hx-get="{POLL}"' in html
            assert "every 5s [document.visibilityState == 'visible']" in html
            assert 'id="toasts" class="toasts" role="region" aria-live="polite"' in html

    def test_the_sign_in_page_has_no_bell(self):
        self.client.logout()
        html = self.client.get("/login/").content.decode()
        assert 'id="notify"' not in html
        assert POLL not in html

    def test_the_panel_lists_the_latest_in_the_users_time_zone(self):
        UserPreference.objects.create(user=self.bob, time_zone="Europe/Oslo")
        self.login(self.bob)
        self.notify(event=self.event(AlertKind.ENDED, run=self.job_run), read_at=NOON)
        self.notify()
        r = self.client.get(PANEL, headers=self.htmx("notify-panel"))
        html = squash(r.content.decode())
        assert "<html" not in html
        items = re.findall(r'<li class="notify-item.*?</li>', html)
        assert len(items) == 2
        newest, older = items
        assert 'class="notify-item unread"' in newest
        assert '<span class="badge status-error">Error</span>' in newest
        assert "T2 Post invoices: ZeroDivisionError: oops" in newest
        assert "2025-03-03 13:00" in newest  # noon UTC is 13:00 in Oslo
        assert "data-read-url" in newest and "data-read-url" not in older
        assert f'href="/jobs/{self.job.pk}/history/{self.job_run.pk}/"' in newest
        assert "1 unread" in html
        assert "Mark all read" in html
        assert f'href="{LIST}">All notifications</a>' in html
        assert "Alert rules" not in html  # bob is a Viewer
        assert 'id="bell-count" class="bell-count" hx-swap-oob="true"' in html

    def test_the_panel_says_when_there_is_nothing(self):
        html = squash(self.client.get(PANEL, headers=self.htmx()).content.decode())
        assert "No notifications yet." in html
        assert "Mark all read" not in html

    def test_a_manager_finds_the_alert_rules_in_the_panel(self):
        self.login(self.alice)
        assert 'href="/alerts/rules/">Alert rules</a>' in self.client.get(PANEL).content.decode()

    def test_the_panel_sends_a_signed_out_browser_to_sign_in(self):
        self.client.logout()
        r = self.client.get(PANEL, headers=self.htmx())
        assert r.headers["HX-Redirect"] == "/login/"
        r = self.client.get(PANEL)
        assert (r.status_code, r.headers["Location"]) == (302, "/login/?next=/alerts/panel/")


class ReadTestCase(NotificationTestCase):
    def test_opening_a_notification_marks_it_read_once(self):
        n = self.notify()
        r = self.client.post(read_url(n), headers=self.htmx())
        html = squash(r.content.decode())
        n.refresh_from_db()
        assert n.read_at == NOON
        assert html.startswith(f'<tr id="notification-{n.pk}">')
        assert "Mark read" not in html
        assert 'id="bell-count" class="bell-count" hidden hx-swap-oob="true"' in html
        self.clock.shift(dt.timedelta(minutes=5))
        self.client.post(read_url(n))
        n.refresh_from_db()
        assert n.read_at == NOON  # the first time it was read

    def test_without_htmx_it_goes_back_to_the_list(self):
        n = self.notify()
        r = self.client.post(read_url(n))
        assert (r.status_code, r.headers["Location"]) == (302, LIST)

    def test_nobody_reads_anothers_notification(self):
        n = self.notify(user=self.alice)
        assert self.client.post(read_url(n)).status_code == 404
        assert self.client.get(read_url(n)).status_code == 405
        n.refresh_from_db()
        assert n.read_at is None

    def test_mark_all_read_stops_at_the_newest_one_shown(self):
        shown = [self.notify(), self.notify()]
        later = self.notify()  # arrived after the panel was rendered
        alices = self.notify(user=self.alice)
        r = self.client.post(
            READ_ALL, {"upto": str(shown[-1].pk)}, headers=self.htmx("notify-panel")
        )
        html = squash(r.content.decode())
        assert Notification.objects.filter(read_at=NOON).count() == 2
        assert set(Notification.objects.filter(read_at=None)) == {later, alices}
        # The panel comes back with the badge beside it.
        assert "1 unread" in html
        assert re.search(r'hx-swap-oob="true">\s*1 <span', html)

    def test_mark_all_read_on_the_list_keeps_the_filter(self):
        self.notify()
        self.notify()
        r = self.client.post(READ_ALL, {"show": "unread"}, headers=self.htmx("notification-list"))
        html = squash(r.content.decode())
        assert html.startswith('<section id="notification-list"')
        assert "Nothing unread." in html
        assert not Notification.objects.filter(read_at=None).exists()

    def test_mark_all_read_without_htmx_says_how_many(self):
        self.notify()
        r = self.client.post(READ_ALL, follow=True)
        assert r.redirect_chain == [(LIST, 302)]
        assert "Marked 1 notification read." in r.content.decode()


class NotificationListTestCase(NotificationTestCase):
    def test_it_lists_what_happened_with_links_to_the_runs(self):
        stuck_job = self.make_job(description="Month-end close")
        self.notify()
        self.notify(
            event=self.event(
                AlertKind.UNSERVED,
                job=stuck_job,
                reason="Due since 11:40; no online batch server serves group Integration.",
            )
        )
        self.notify(
            event=self.event(AlertKind.ENDED, run=self.job_run),
            popup=False,
            email=Notification.Email.SENT,
            email_sent_at=NOON,
        )
        self.notify(user=self.alice, event=self.event(AlertKind.CANCELED))
        html = squash(self.client.get(LIST).content.decode())
        rows = re.findall(r'<tr id="notification-\d+".*?</tr>', html)
        assert len(rows) == 3  # not alice's
        error, unserved, ended = sorted(rows, key=lambda row: row.count("status-error"))[::-1]
        assert "<html" in html
        assert "T2 Post invoices: ZeroDivisionError: oops" in error
        assert f'href="/jobs/{self.job.pk}/history/{self.job_run.pk}/"' in error
        assert ">Mark read</button>" in error
        assert unserved.count("Cannot start") == 1
        assert "no online batch server serves group Integration" in unserved
        assert f'href="/jobs/{stuck_job.pk}/"' in unserved
        assert "Ran 3 min 00 s" in ended
        assert "E-mail <span" in ended and "sent 2025-03-03 12:00" in ended
        assert ">Mark read</button>" not in ended  # an e-mail is not a popup to read

    def test_it_filters_unread_and_pages(self):
        for _ in range(30):
            self.notify(read_at=NOON)
        self.notify()
        html = self.client.get(LIST).content.decode()
        assert len(re.findall(r'<tr id="notification-', html)) == 25
        assert "Page 1 of 2" in html
        assert 'href="?show=all&amp;page=2"' in html
        html = self.client.get(LIST + "?show=unread").content.decode()
        assert len(re.findall(r'<tr id="notification-', html)) == 1
        assert 'aria-current="page"' in html.split("Unread")[0].rsplit("<a", 1)[1]
        assert self.client.get(LIST + "?show=nonsense&page=99").status_code == 200

    def test_the_list_is_a_fragment_for_htmx(self):
        self.notify()
        r = self.client.get(LIST, headers=self.htmx("notification-list"))
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="notification-list"')
        assert 'hx-trigger="notifications-changed from:body"' in html

    def test_it_says_when_there_is_nothing(self):
        html = squash(self.client.get(LIST).content.decode())
        assert "No notifications yet." in html
        assert "alert rules" not in html  # bob is no manager
        self.login(self.alice)
        html = squash(self.client.get(LIST).content.decode())
        assert 'set up <a href="/alerts/rules/">alert rules</a>' in html

    def test_it_costs_the_same_queries_for_many_rows(self):
        self.notify()
        self.client.get(LIST)
        with self.assertNumQueries(6) as few:
            self.client.get(LIST)
        for _ in range(20):
            self.notify(event=self.event(AlertKind.UNSERVED, reason="No server."))
        with self.assertNumQueries(len(few.captured_queries)):
            self.client.get(LIST)
