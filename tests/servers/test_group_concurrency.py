"""Max concurrency in the Batch group form, the groups page, the workspace and the admin."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from batchadmin.servers.forms import MAX_CONCURRENCY_ERROR
from batchadmin.servers.models import BatchGroup
from tests.base import BaseTestCase

HTMX = {"HX-Request": "true"}


class GroupConcurrencyTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)  # Batch job manager
        self.reporting = BatchGroup.objects.create(code="Reporting", description="Reports")

    def edit(self, value: str) -> str:
        r = self.client.post(
            f"/groups/{self.reporting.pk}/edit/",
            {"description": "Reports", "max_concurrency": value},
            headers=HTMX,
        )
        return r.content.decode()

    def test_the_form_offers_the_field_with_its_meaning(self):
        html = self.client.get(f"/groups/{self.reporting.pk}/edit/").content.decode()
        assert 'name="max_concurrency"' in html
        assert 'min="-1"' in html and 'max="512"' in html
        assert "-1 = pause the group: running tasks finish, no new ones start." in html

    def test_it_sets_a_limit_per_job(self):
        html = self.edit("3")
        self.reporting.refresh_from_db()
        assert self.reporting.max_concurrency == 3
        assert "max 3 per job" in html

    def test_it_pauses_a_group_and_says_what_that_means(self):
        html = self.edit("-1")
        self.reporting.refresh_from_db()
        assert self.reporting.is_paused()
        assert "It is paused: running tasks finish, no new ones start." in html
        assert '<span class="badge group-paused"' in html

    def test_it_rejects_values_out_of_range_with_a_clear_message(self):
        for bad in ("-2", "513", "1.5", "many"):
            html = self.edit(bad)
            assert MAX_CONCURRENCY_ERROR in html.replace("&#x27;", "'"), bad
        self.reporting.refresh_from_db()
        assert self.reporting.max_concurrency == 0

    def test_left_out_it_keeps_the_groups_value(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=4)
        self.client.post(f"/groups/{self.reporting.pk}/edit/", {"description": "New words"})
        self.reporting.refresh_from_db()
        assert self.reporting.max_concurrency == 4
        assert self.reporting.description == "New words"

    def test_the_detail_pane_shows_the_setting(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=-1)
        html = self.client.get(f"/groups/?group={self.reporting.pk}").content.decode()
        assert "Group Reporting is paused (max concurrency -1)" in html

    def test_the_workspace_marks_a_paused_group(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=-1)
        html = self.client.get("/").content.decode()
        assert '<span class="badge group-paused"' in html

    def test_the_database_refuses_values_out_of_range(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=-5)

    def test_the_admin_lists_it(self):
        self.alice.is_staff = True
        self.alice.is_superuser = True
        self.alice.save()
        html = self.client.get("/admin/servers/batchgroup/").content.decode()
        assert "column-max_concurrency" in html
