"""What the debug page and error e-mails may show of the settings."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SettingsFilter(SafeExceptionReporterFilter):
    """Django's filter hides settings named like secrets (KEY, PASS, TOKEN ...); ours carry
    passwords inside URLs too (CELERY_BROKER_URL, DATABASE_URL, the cache's LOCATION)."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|LOCATION|BROKER", flags=re.I
    )
