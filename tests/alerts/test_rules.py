"""Alert rules: a Batch job manager's own subscriptions to a batch group and/or a priority."""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib.auth.models import Group, User

from batchadmin.accounts.models import MANAGER
from batchadmin.alerts.forms import AlertRuleForm
from batchadmin.alerts.models import AlertRule
from batchadmin.jobs.models import Priority
from batchadmin.servers.models import BatchGroup
from tests.jobs.form_base import FormTestCase, squash

URL = "/alerts/rules/"


def rule_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"group": "", "priority": "", "error": "on", "popup": "on"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


class AlertRulesTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.integration = BatchGroup.objects.create(code="Integration")
        self.erin = User.objects.create_user("erin", "erin@example.org", "password")
        self.erin.groups.add(Group.objects.get_or_create(name=MANAGER)[0])
        self.login(self.alice)

    def rule(self, user: User | None = None, **fields: Any) -> AlertRule:
        return AlertRule.objects.create(user=user or self.alice, **fields)

    # --- who may ------------------------------------------------------------------------------

    def test_only_managers_may_open_them(self):
        rule = self.rule(group=self.integration)
        for user in (self.bob, self.charlie, self.dave):
            self.login(user)
            assert self.client.get(URL).status_code == 403, user
            assert self.client.get(URL + "new/").status_code == 403
            assert self.client.post(URL + "new/", rule_data()).status_code == 403
            assert self.client.post(f"{URL}{rule.pk}/edit/", rule_data()).status_code == 403
            assert self.client.post(f"{URL}{rule.pk}/delete/").status_code == 403
        assert list(AlertRule.objects.all()) == [rule]
        assert AlertRule.objects.get().group == self.integration

    def test_a_manager_sees_and_changes_only_their_own_rules(self):
        eris = self.rule(user=self.erin, priority=Priority.CRITICAL)
        html = self.client.get(URL).content.decode()
        assert f'id="rule-{eris.pk}"' not in html
        assert "No alert rules yet." in html
        assert self.client.get(f"{URL}{eris.pk}/edit/").status_code == 404
        assert self.client.post(f"{URL}{eris.pk}/edit/", rule_data()).status_code == 404
        assert self.client.post(f"{URL}{eris.pk}/delete/").status_code == 404
        eris.refresh_from_db()
        assert (eris.priority, eris.group_id) == (Priority.CRITICAL, None)

    # --- the list -----------------------------------------------------------------------------

    def test_the_empty_list_says_what_a_rule_is_for(self):
        html = squash(self.client.get(URL).content.decode())
        assert "No alert rules yet." in html
        assert "every Error in group Integration" in html
        assert "Create your first rule</a>" in html

    def test_it_lists_the_rules(self):
        first = self.rule(group=self.integration, error=True, stuck=True, email=True)
        second = self.rule(priority=Priority.HIGH, ended=True, error=False, canceled=True)
        html = squash(self.client.get(URL).content.decode())
        one = html.split(f'id="rule-{first.pk}"')[1].split("</tr>")[0]
        two = html.split(f'id="rule-{second.pk}"')[1].split("</tr>")[0]
        assert "Integration </a>" in one
        assert "Any priority" in one
        assert ">Error</span>" in one and ">Stuck</span>" in one and ">Ended<" not in one
        assert "Popup · E-mail" in one
        assert "Any batch group </a>" in two
        assert "High" in two
        assert ">Ended</span>" in two and ">Canceled</span>" in two and ">Error<" not in two
        assert f'href="{URL}{first.pk}/edit/"' in one
        # The rule for any group, the widest, comes first.
        assert html.index(f'id="rule-{second.pk}"') < html.index(f'id="rule-{first.pk}"')
        assert f'hx-get="{URL}{second.pk}/delete/"' in two

    def test_the_table_is_a_fragment_for_htmx(self):
        self.rule()
        html = self.client.get(URL, headers=self.htmx("rule-table")).content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="rule-table"')
        assert 'hx-trigger="rules-changed from:body"' in html

    def test_it_costs_the_same_queries_for_many_rules(self):
        self.rule(group=self.integration)
        self.client.get(URL)
        with self.assertNumQueries(5) as few:  # the fifth: the rules' webhooks, for all of them
            self.client.get(URL)
        for n in range(10):
            self.rule(group=BatchGroup.objects.create(code=f"G{n}"), priority=Priority.LOW)
        with self.assertNumQueries(len(few.captured_queries)):
            html = self.client.get(URL).content.decode()
        assert len(re.findall(r'<tr id="rule-\d+">', html)) == 11

    # --- new, edit, delete --------------------------------------------------------------------

    def test_new_is_a_dialog_for_htmx_and_a_page_without(self):
        html = self.client.get(URL + "new/", headers=self.htmx("dialog")).content.decode()
        assert "<html" not in html
        assert 'id="rule-form"' in html
        assert '<option value="" selected>Any batch group</option>' in html
        assert '<option value="" selected>Any priority</option>' in html
        assert "An e-mail to alice@example.org." in html
        page = self.client.get(URL + "new/").content.decode()
        assert "<html" in page and 'id="rule-form"' in page

    def test_it_creates_a_rule_closes_the_dialog_and_the_table_shows_it(self):
        data = rule_data(group=self.integration.pk, error="on", stuck="on", email="on")
        r = self.client.post(URL + "new/", data, headers=self.htmx("dialog"))
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "rules-changed": {}}
        rule = AlertRule.objects.get()
        assert rule.user == self.alice
        assert (rule.group, rule.priority) == (self.integration, None)
        assert (rule.ended, rule.error, rule.canceled, rule.stuck) == (False, True, False, True)
        assert (rule.popup, rule.email) == (True, True)
        table = squash(self.client.get(URL, headers=self.htmx("rule-table")).content.decode())
        assert "Created the alert rule for jobs in batch group Integration." in table
        assert f'id="rule-{rule.pk}"' in table

    def test_it_creates_without_htmx_and_redirects(self):
        r = self.client.post(URL + "new/", rule_data(priority=Priority.CRITICAL), follow=True)
        assert r.redirect_chain == [(URL, 302)]
        assert "Created the alert rule for jobs with priority Critical." in r.content.decode()

    def test_invalid_choices_stay_in_the_dialog_with_errors(self):
        r = self.client.post(
            URL + "new/", rule_data(error=None, popup=None), headers=self.htmx("dialog")
        )
        html = r.content.decode()
        assert "HX-Trigger" not in r.headers
        assert "Choose at least one event: ended, error, canceled, stuck or deadline." in html
        assert "Choose how to be alerted: popup, e-mail or both." in html
        r = self.client.post(URL + "new/", rule_data(group="999999", priority="7"))
        html = r.content.decode()
        assert "Select a valid choice. That choice is not one of the available choices." in html
        assert "Select a valid choice. 7 is not one of the available choices." in html
        assert not AlertRule.objects.exists()

    def test_e_mail_needs_an_address(self):
        self.alice.email = ""
        self.alice.save()
        html = self.client.post(URL + "new/", rule_data(email="on")).content.decode()
        assert "Your account has no e-mail address." in html
        assert not AlertRule.objects.exists()

    def test_one_rule_per_set_of_jobs(self):
        self.rule(group=self.integration)
        self.rule(user=self.erin, group=self.integration, priority=Priority.HIGH)
        html = self.client.post(URL + "new/", rule_data(group=self.integration.pk)).content.decode()
        assert "You already have a rule for these jobs. Edit that rule instead." in html
        # Another manager's rule for the same jobs is theirs, not a duplicate.
        data = rule_data(group=self.integration.pk, priority=Priority.HIGH)
        assert self.client.post(URL + "new/", data).status_code == 302
        assert AlertRule.objects.filter(user=self.alice).count() == 2

    def test_it_edits_a_rule(self):
        rule = self.rule(group=self.integration)
        html = self.client.get(f"{URL}{rule.pk}/edit/", headers=self.htmx()).content.decode()
        assert "Edit alert rule" in html
        assert f'<option value="{self.integration.pk}" selected>Integration</option>' in html
        data = rule_data(group=self.integration.pk, ended="on", canceled="on")
        r = self.client.post(f"{URL}{rule.pk}/edit/", data, headers=self.htmx())
        assert "dialog-close" in r.headers["HX-Trigger"]
        rule.refresh_from_db()
        assert (rule.ended, rule.error, rule.canceled) == (True, True, True)
        assert AlertRule.objects.count() == 1  # saving itself is no duplicate

    def test_it_deletes_a_rule(self):
        rule = self.rule(group=self.integration, priority=Priority.HIGH)
        html = squash(
            self.client.get(f"{URL}{rule.pk}/delete/", headers=self.htmx("dialog")).content.decode()
        )
        assert "Delete this alert rule?" in html
        assert (
            "You will no longer be alerted about jobs in batch group Integration "
            "with priority High."
        ) in html
        r = self.client.post(f"{URL}{rule.pk}/delete/", headers=self.htmx("dialog"))
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "rules-changed": {}}
        assert not AlertRule.objects.exists()
        assert self.client.post(f"{URL}{rule.pk}/delete/").status_code == 404

    def test_the_form_keeps_the_owner(self):
        form = AlertRuleForm(rule_data(priority=Priority.LOW), user=self.erin)
        assert form.is_valid(), form.errors
        assert form.save().user == self.erin

    # --- the way there ------------------------------------------------------------------------

    def test_the_alerts_dialog_links_here_for_managers(self):
        job = self.make_job(created_by=self.dave)
        link = f'<a href="{URL}">Alert rules</a>'
        assert link in self.client.get(f"/jobs/{job.pk}/alerts/").content.decode()
        self.login(self.dave)
        html = self.client.get(f"/jobs/{job.pk}/alerts/", headers=self.htmx()).content.decode()
        assert 'id="alerts-form"' in html
        assert link not in html

    def test_the_notifications_page_links_here_for_managers(self):
        assert f'href="{URL}"' in self.client.get("/alerts/notifications/").content.decode()
        self.login(self.bob)
        assert f'href="{URL}"' not in self.client.get("/alerts/notifications/").content.decode()
