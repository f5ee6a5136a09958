from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING
from unittest import mock

import time_machine
from django.contrib.auth.backends import ModelBackend
from django.test import override_settings

from batchadmin.accounts import tokens
from tests.base import BaseTestCase

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse

URL = "/login/"


@override_settings(AXES_ENABLED=True)
class LockoutTestCase(BaseTestCase):
    def sign_in(
        self, password: str, *, username: str = "dave", address: str = "203.0.113.7"
    ) -> _MonkeyPatchedWSGIResponse:
        return self.client.post(
            URL, {"username": username, "password": password}, REMOTE_ADDR=address
        )

    def fail_times(self, times: int, **kwargs: str) -> list[int]:
        return [self.sign_in("wrong", **kwargs).status_code for _ in range(times)]

    def test_it_locks_a_user_out_from_an_address_after_five_failures(self):
        assert self.fail_times(4) == [200] * 4  # the form again, with its error
        r = self.sign_in("wrong")
        assert r.status_code == 429
        html = r.content.decode()
        assert "Too many failed sign-ins for this user name from your address" in html
        assert "locked for 15 min" in html
        # Even the right password is refused now, and cheaply: no password is hashed.
        with mock.patch.object(ModelBackend, "authenticate") as hashing_backend:
            r = self.sign_in("password")
        assert r.status_code == 429
        hashing_backend.assert_not_called()
        assert "_auth_user_id" not in self.client.session

    def test_it_locks_only_that_user_from_that_address(self):
        self.fail_times(5)
        assert self.sign_in("password", address="198.51.100.9").status_code == 302
        self.client.logout()
        assert self.sign_in("password", username="alice").status_code == 302

    def test_the_lock_ends_after_the_cooloff(self):
        self.fail_times(5)
        with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)):
            r = self.sign_in("password")
        assert r.status_code == 302
        assert self.client.session["_auth_user_id"] == str(self.dave.pk)

    def test_a_success_forgets_earlier_failures(self):
        self.fail_times(4)
        assert self.sign_in("password").status_code == 302
        self.client.logout()
        assert self.fail_times(4) == [200] * 4

    def test_api_tokens_and_force_login_still_work(self):
        _token, plain = tokens.issue(self.dave, name="lockout")
        r = self.client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {plain}"})
        assert r.status_code == 200
        self.client.force_login(self.dave)
        assert self.client.get("/jobs/").status_code == 200

    @override_settings(AXES_ENABLED=True, BATCH_TRUSTED_PROXIES=1)
    def test_behind_a_proxy_the_address_is_the_one_the_proxy_recorded(self):
        def through_proxy(client: str, password: str = "wrong") -> int:
            return self.client.post(
                URL,
                {"username": "dave", "password": password},
                REMOTE_ADDR="127.0.0.1",
                HTTP_X_FORWARDED_FOR=f"10.9.9.9, {client}",  # the first entry is forgeable
            ).status_code

        assert [through_proxy("203.0.113.7") for _ in range(5)] == [200] * 4 + [429]
        # Another client behind the same proxy is not locked out.
        assert through_proxy("198.51.100.9", "password") == 302
