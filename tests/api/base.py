from __future__ import annotations

import json
from typing import Any, ClassVar

from django.contrib.auth.models import Group, User
from django.test import override_settings

from batchadmin.accounts import tokens
from batchadmin.accounts.models import BATCH_USER
from tests.base import BaseTestCase


@override_settings(BATCH_API_RATE_LIMIT=0)  # the rate limit has its own tests
class ApiTestCase(BaseTestCase):
    """BaseTestCase's users (alice manager, bob viewer, charlie no role, dave batch user) plus
    erin, a second batch user, each with an API token."""

    erin: ClassVar[User]
    plain: ClassVar[dict[str, str]]

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.erin = User.objects.create_user("erin", "erin@example.org", "password")
        cls.erin.groups.add(Group.objects.get_or_create(name=BATCH_USER)[0])
        cls.plain = {
            u.username: tokens.issue(u, name="tests")[1]
            for u in (cls.alice, cls.bob, cls.charlie, cls.dave, cls.erin)
        }

    def call(
        self,
        method: str,
        path: str,
        *,
        as_user: User | None = None,
        body: Any = None,
        **params: Any,
    ) -> Any:
        """One API request as ``as_user`` (None: without a token); the response, .data = JSON."""
        headers = {}
        if as_user is not None:
            headers["Authorization"] = f"Bearer {self.plain[as_user.username]}"
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        elif params:
            kwargs["data"] = params
        response = getattr(self.client, method.lower())(path, **kwargs)
        content_type = response.get("Content-Type", "")
        is_json = "json" in content_type and response.content
        response.data = json.loads(response.content) if is_json else None
        return response
