from __future__ import annotations

import os

# Production settings refuse to start without a key unless DEBUG is on; tests run with DEBUG
# off, as production does.
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-used-anywhere-else-0123456789")

from batchadmin.settings import *  # noqa: F403
from batchadmin.settings import database_from_url
from tests import isolation

# Tests run against real PostgreSQL. pytest-django creates its test database under the name
# TEST.NAME: test_<name>_<run id>, so two runs on one machine never share (or drop) one.
DATABASES = {
    "default": database_from_url(
        os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchadmin")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["TEST"] = {
        "NAME": isolation.db_name(f"test_{DATABASES['default']['NAME']}")
    }
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A Redis db of this run's own (tests/isolation.py): code that runs on-commit callbacks (metrics
# counters, queue lengths) must not write into a development broker or another run's db.
CELERY_BROKER_URL = isolation.BROKER_URL
CACHES = {"default": {**CACHES["default"], "LOCATION": CELERY_BROKER_URL}}  # noqa: F405
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
BATCH_RETRY_BACKOFF_SECONDS = 0.1
# Static files come from the finders in tests; no collectstatic needed.
MIDDLEWARE = [m for m in MIDDLEWARE if m != "whitenoise.middleware.WhiteNoiseMiddleware"]  # noqa: F405
# Counters go to Redis at each settled attempt, so a test can read them at once (the tally
# that batches them has its own tests).
BATCH_METRICS_FLUSH_SECONDS = 0.0
# mail.send_document's allowed domains (issue 13): the tests' addresses are @example.com.
BATCH_MAIL_ALLOWED_DOMAINS = ["example.com"]
# Role checks at run time read the user each attempt, so a test may change a role between two.
BATCH_RUN_AS_CACHE_SECONDS = 0.0
# Sign-in throttling needs a request in every authenticate(); client.login() has none. The
# lockout test (tests/accounts/test_lockout.py) turns it back on.
AXES_ENABLED = False
