from __future__ import annotations

from django.test import RequestFactory, override_settings
from django.views.defaults import server_error

from tests.base import BaseTestCase


@override_settings(DEBUG=False)
class ErrorPagesTestCase(BaseTestCase):
    def test_a_missing_job_is_the_apps_404_page(self):
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/999999/")
        html = r.content.decode()
        assert r.status_code == 404
        assert '<h1 id="error-title">Nothing here</h1>' in html
        assert "/jobs/999999/" in html
        assert 'id="site-nav"' in html  # the app's header and navigation

    def test_a_user_without_a_role_is_told_to_ask_a_manager(self):
        self.client.force_login(self.charlie)  # signed in, no batch role
        r = self.client.get("/")  # where sign-in sends everyone
        html = r.content.decode()
        assert r.status_code == 403
        assert "You have no batch role yet" in html
        assert "Ask a batch job manager for a role" in html
        assert ">Workspace</a>" not in html  # no links to pages that refuse them

    def test_a_refused_action_says_why(self):
        self.client.force_login(self.dave)  # a batch user, not a manager
        r = self.client.get("/alerts/rules/")
        assert r.status_code == 403
        assert "Only a Batch job manager can set up alert rules." in r.content.decode()

    def test_the_500_page_needs_no_request_context(self):
        r = server_error(RequestFactory().get("/"))
        html = r.content.decode()
        assert r.status_code == 500
        assert "Something went wrong on our side" in html
        assert 'class="topbar"' in html

    def test_the_favicon_is_there_for_pages_that_name_none(self):
        r = self.client.get("/favicon.ico")  # no sign-in needed
        assert r.status_code == 301
        assert r.headers["Location"].endswith("favicon.svg")
