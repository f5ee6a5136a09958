"""Requests are limited per token, counted in the shared cache (Redis).

Counters are kept per token digest: each test run's tokens are new, so earlier runs' counters do
not get in the way.
"""

from __future__ import annotations

from django.test import override_settings

from tests.api.base import ApiTestCase


class RateLimitTestCase(ApiTestCase):
    @override_settings(BATCH_API_RATE_LIMIT=3, BATCH_API_RATE_WINDOW=3600)
    def test_a_token_over_its_limit_is_told_when_to_come_back(self):
        for _ in range(3):
            assert self.call("GET", "/api/v1/groups", as_user=self.dave).status_code == 200
        r = self.call("GET", "/api/v1/groups", as_user=self.dave)
        assert r.status_code == 429
        assert r.data == {"message": "Too many requests: at most 3 per 3600 s for each token."}
        assert 0 < int(r["Retry-After"]) <= 3600
        # Each token has its own count.
        assert self.call("GET", "/api/v1/groups", as_user=self.erin).status_code == 200

    @override_settings(
        BATCH_API_RATE_LIMIT=1,
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
                "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
            }
        },
    )
    def test_without_the_cache_the_api_stays_up_unlimited(self):
        for _ in range(3):
            assert self.call("GET", "/api/v1/groups", as_user=self.dave).status_code == 200
