"""Personal API tokens: made and revoked on the settings page (managers: for others too) and by
`manage.py batch token`; kept only as a digest, shown once."""

from __future__ import annotations

import hashlib
from io import StringIO

from django.core.management import CommandError, call_command

from batchadmin.accounts.models import ApiToken
from tests.api.base import ApiTestCase


class TokenTestCase(ApiTestCase):
    def bearer(self, plain: str) -> int:
        return self.client.get(
            "/api/v1/jobs", headers={"Authorization": f"Bearer {plain}"}
        ).status_code

    def test_the_settings_page_makes_a_token_shows_it_once_and_keeps_its_digest(self):
        self.client.force_login(self.dave)
        html = self.client.post("/account/tokens/new/", {"name": "nightly ETL"}).content.decode()
        token = ApiToken.objects.get(user=self.dave, name="nightly ETL")
        plain = html.split('<code class="token" id="new-token">')[1].split("</code>")[0]
        assert plain.startswith("bat_") and len(plain) > 40
        assert token.digest == hashlib.sha256(plain.encode()).hexdigest()
        assert token.prefix == plain[:8] and plain not in str(token.__dict__)
        assert self.bearer(plain) == 200
        token.refresh_from_db()
        assert token.last_used_at is not None
        # Listed without the token itself afterwards.
        page = self.client.get("/account/settings/").content.decode()
        assert "nightly ETL" in page and f"{token.prefix}…" in page and plain not in page

    def test_revoking_a_token_shuts_it_out(self):
        self.client.force_login(self.dave)
        token = self.dave.api_tokens.get()
        r = self.client.post(f"/account/tokens/{token.pk}/revoke/", follow=True)
        assert "Revoked the API token &#x27;tests&#x27;" in r.content.decode()
        assert self.bearer(self.plain["dave"]) == 401

    def test_a_batch_user_can_neither_make_nor_revoke_tokens_of_others(self):
        self.client.force_login(self.dave)
        r = self.client.post("/account/tokens/new/", {"name": "x", "user": self.erin.pk})
        assert r.status_code == 403
        r = self.client.post(f"/account/tokens/{self.erin.api_tokens.get().pk}/revoke/")
        assert r.status_code == 404
        assert self.client.get("/account/tokens/").status_code == 403
        assert self.bearer(self.plain["erin"]) == 200

    def test_a_manager_makes_and_revokes_tokens_for_others(self):
        self.client.force_login(self.alice)
        page = self.client.get("/account/tokens/").content.decode()
        for user in ("bob", "dave", "erin"):
            assert f"<td>{user}</td>" in page
        html = self.client.post(
            "/account/tokens/new/", {"name": "CI", "user": self.erin.pk, "back": "list"}
        ).content.decode()
        token = ApiToken.objects.get(name="CI")
        assert (token.user, token.created_by) == (self.erin, self.alice)
        assert "Made the token <strong>CI</strong> for erin" in html
        r = self.client.post(f"/account/tokens/{self.dave.api_tokens.get().pk}/revoke/")
        assert r.status_code == 302
        assert self.bearer(self.plain["dave"]) == 401

    def test_the_command_prints_a_working_token(self):
        out = StringIO()
        call_command("batch", "token", "erin", "--name", "deploy", stdout=out)
        plain = out.getvalue().strip()
        assert self.bearer(plain) == 200
        assert self.erin.api_tokens.filter(name="deploy").exists()
        with self.assertRaisesMessage(CommandError, "Unknown user 'zed'."):
            call_command("batch", "token", "zed")
