from __future__ import annotations

import os

# Production settings refuse to start without a key unless DEBUG is on; tests run with DEBUG
# off, as production does.
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-used-anywhere-else-0123456789")

from batchadmin.settings import *  # noqa: F403
from batchadmin.settings import database_from_url

# Tests run against real PostgreSQL (pytest-django creates test_<name> from this).
DATABASES = {
    "default": database_from_url(
        os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchadmin")
    )
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A Redis db of the tests' own: code that runs on-commit callbacks (metrics counters, queue
# lengths) must not write into the development broker's db 0.
CELERY_BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/7")
CACHES = {"default": {**CACHES["default"], "LOCATION": CELERY_BROKER_URL}}  # noqa: F405
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
BATCH_RETRY_BACKOFF_SECONDS = 0.1
# Static files come from the finders in tests; no collectstatic needed.
MIDDLEWARE = [m for m in MIDDLEWARE if m != "whitenoise.middleware.WhiteNoiseMiddleware"]  # noqa: F405
# Sign-in throttling needs a request in every authenticate(); client.login() has none. The
# lockout test (tests/accounts/test_lockout.py) turns it back on.
AXES_ENABLED = False
