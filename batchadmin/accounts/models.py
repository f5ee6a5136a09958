from __future__ import annotations

from zoneinfo import available_timezones

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.timezone import now

from batchadmin.lib.clock import CLOCK_24, CLOCK_CHOICES

# D365's batch roles, as Django groups created by a migration.
MANAGER = "Batch job manager"
BATCH_USER = "Batch user"
VIEWER = "Viewer"
ROLES = (MANAGER, BATCH_USER, VIEWER)


def validate_time_zone(value: str) -> None:
    if value not in available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/Oslo).")


class Theme(models.TextChoices):
    AUTO = "auto", "Automatic (as the browser)"
    LIGHT = "light", "Light"
    DARK = "dark", "Dark"


class UserPreference(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="batch_preference"
    )
    time_zone = models.CharField(
        "time zone",
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="Dates and times are shown in this zone, e.g. Europe/Oslo.",
    )

    clock = models.CharField(
        "clock",
        max_length=2,
        choices=CLOCK_CHOICES,
        default=CLOCK_24,
        help_text="How times are written on every page.",
    )
    theme = models.CharField(
        "colours",
        max_length=5,
        choices=Theme.choices,
        default=Theme.AUTO,
        help_text="Light or dark pages; Automatic follows your browser or system setting.",
    )

    class Meta:
        verbose_name = "user preference"

    def __str__(self) -> str:
        return f"{self.user}: {self.time_zone}, {self.clock} h, {self.theme}"


class ApiToken(models.Model):
    """A personal API token: ``Authorization: Bearer <token>`` acts as ``user`` on /api/v1/.

    Only the SHA-256 digest of the token is kept, so it is shown once, when it is made. A token
    is 32 random bytes, so a fast hash is enough (no salt or stretching, as for passwords), and
    finding it is one lookup on the unique digest. Revoking deletes the row.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(
        "name", max_length=100, help_text="What the token is for, e.g. nightly ETL or CI."
    )
    # The token's first characters, to tell tokens apart in a list without showing them.
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["user", "-created"]

    def __str__(self) -> str:
        return f"{self.user}: {self.name} ({self.prefix}...)"
