"""The production defaults of batchadmin/settings.py, each read by a fresh interpreter with an
environment of the test's choosing (settings are read once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = ROOT / "deploy/systemd/batchadmin.env.example"
# Variables of the settings a test must not inherit from the shell running it.
OURS = (
    "DEBUG", "SECRET_KEY", "SITE_ROOT", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DATABASE_URL",
    "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_", "DJANGO_SETTINGS_MODULE", "AXES_",
)  # fmt: skip
READ = """
import json
from django.conf import settings
names = [
    "DEBUG", "SECRET_KEY", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_PROXY_SSL_HEADER",
    "CSRF_TRUSTED_ORIGINS", "AXES_FAILURE_LIMIT",
]
print(json.dumps({n: getattr(settings, n, None) for n in names}))
"""


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return subprocess.run(
        args,
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "batchadmin.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings_with(**env: str) -> dict[str, Any]:
    result = run([sys.executable, "-c", READ], **env)
    assert result.returncode == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return values


class ProductionSettingsTestCase(SimpleTestCase):
    def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off(self):
        result = run([sys.executable, "-c", READ])
        assert result.returncode != 0
        assert "ImproperlyConfigured: SECRET_KEY is not set." in result.stderr
        assert "or set DEBUG=1 on a development machine" in result.stderr

    def test_debug_is_off_and_plain_http_keeps_plain_cookies_unless_asked(self):
        values = settings_with(SECRET_KEY="k" * 50)
        assert values["DEBUG"] is False
        assert values["SESSION_COOKIE_SECURE"] is False
        assert values["SECURE_SSL_REDIRECT"] is False
        assert values["SECURE_HSTS_SECONDS"] == 0
        assert values["CSRF_TRUSTED_ORIGINS"] == ["http://localhost:8000"]
        dev = settings_with(DEBUG="1")  # bin/dev: no key needed
        assert dev["DEBUG"] is True
        assert dev["SECRET_KEY"].startswith("dev-only-")

    def test_an_https_site_gets_secure_cookies_hsts_and_the_redirect(self):
        values = settings_with(
            SECRET_KEY="k" * 50,
            SITE_ROOT="https://batch.example.com",
            SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
            CSRF_TRUSTED_ORIGINS="https://batch.example.com,https://ops.example.com",
            AXES_FAILURE_LIMIT="3",
        )
        assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is True
        assert values["SECURE_SSL_REDIRECT"] is True
        assert values["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
        assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
        assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
        assert values["CSRF_TRUSTED_ORIGINS"] == [
            "https://batch.example.com",
            "https://ops.example.com",
        ]
        assert values["AXES_FAILURE_LIMIT"] == 3

    def test_the_documented_production_env_passes_the_deploy_check(self):
        env = {}
        for line in ENV_EXAMPLE.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
        result = run(
            [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "System check identified no issues" in result.stdout
