"""Production defaults of the web side (issue 13, item 6): numeric query parameters parsed
strictly (lib/numbers.py), the Content Security Policy on every page, and a debug page that
shows no password."""

from __future__ import annotations

from django.views.debug import get_exception_reporter_filter

from tests.base import BaseTestCase


class StrictParametersTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)  # Batch job manager
        self.job = self.make_job(created_by=self.alice)

    def test_unicode_digits_are_not_numbers(self):
        # isdigit() says yes to "²", int() says no: these answered 500.
        assert self.client.get("/groups/?group=²").status_code == 200
        assert self.client.get(f"/jobs/{self.job.pk}/?lines=²").status_code == 200
        r = self.client.get(
            f"/jobs/{self.job.pk}/tasks/page/?offset=²", headers={"HX-Request": "true"}
        )
        assert r.status_code == 400
        assert r.content == b"offset must be a whole number of lines."

    def test_numbers_too_big_for_the_database_are_not_numbers(self):
        assert self.client.get("/groups/?group=" + "9" * 30).status_code == 200

    def test_pages_carry_the_content_security_policy(self):
        r = self.client.get("/jobs/")
        policy = r["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "object-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy


class DebugPageSettingsTestCase(BaseTestCase):
    def test_the_debug_page_hides_passwords_inside_urls(self):
        with self.settings(
            CELERY_BROKER_URL="redis://:s3cret@redis.internal:6379/0",
            CACHES={"default": {"BACKEND": "x", "LOCATION": "redis://:s3cret@redis.internal"}},
        ):
            shown = get_exception_reporter_filter(None).get_safe_settings()
        assert "s3cret" not in repr(shown)
        assert shown["CELERY_BROKER_URL"] == "********************"
