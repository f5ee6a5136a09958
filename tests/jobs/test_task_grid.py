from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from batchadmin.engine import transitions
from batchadmin.jobs import forms
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, BatchTaskCondition
from batchadmin.servers.models import BatchGroup
from tests.base import start
from tests.jobs.form_base import FormTestCase

S = BatchStatus


def task_data(conditions: Sequence[tuple[int, str]] = (), /, **fields: str) -> dict[str, Any]:
    """What the task line's form posts."""
    data: dict[str, Any] = {
        "description": "Post invoices",
        "process": "demo.sleep",
        "param-seconds": "2.5",
        "company": "",
        "group": str(BatchGroup.objects.default().pk),
        "max_retries": "1",
        "condition_type": "all",
        "cond-TOTAL_FORMS": str(len(conditions)),
        "cond-INITIAL_FORMS": "0",
    }
    for i, (parent, expected) in enumerate(conditions):
        data[f"cond-{i}-depends_on"] = str(parent)
        data[f"cond-{i}-expected_status"] = expected
    return data | fields


class TaskGridTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)

    def new_url(self, job: BatchJob | None = None) -> str:
        return f"/jobs/{(job or self.job).pk}/tasks/new/"

    def edit_url(self, task: BatchTask) -> str:
        return f"/jobs/{task.job_id}/tasks/{task.pk}/edit/"

    def delete_url(self, task: BatchTask) -> str:
        return f"/jobs/{task.job_id}/tasks/{task.pk}/delete/"

    # --- adding ---------------------------------------------------------------------------

    def test_it_opens_a_new_line_for_htmx(self):
        r = self.client.get(self.new_url(), headers=self.htmx("task-new"))
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert 'id="task-new"' in html
        assert 'id="task-new-form"' in html
        assert "hx-trigger=\"keyup[key=='Escape']\"" in html

    def test_it_opens_a_new_line_in_the_full_page_without_htmx(self):
        r = self.client.get(self.new_url())
        html = r.content.decode()
        assert "<html" in html
        assert 'id="task-new-form"' in html

    def test_esc_puts_the_empty_slot_back(self):
        r = self.client.get(self.new_url() + "?cancel=1", headers=self.htmx("task-new"))
        assert r.content.decode().strip() == '<tr id="task-new" hidden></tr>'

    def test_it_adds_a_task_with_the_next_key_and_cleaned_parameters(self):
        r = self.client.post(self.new_url(), task_data(), headers=self.htmx("task-new"))
        assert r.status_code == 200
        task = BatchTask.objects.get(job=self.job)
        assert (task.key, task.position, task.status) == ("T1", 1, S.WAITING)
        assert task.parameters == {"seconds": 2.5}
        assert task.max_retries == 1
        html = r.content.decode()
        assert f'id="task-{task.pk}"' in html
        assert '<tr id="task-new" hidden></tr>' in html  # the slot for the next Alt+N
        assert json.loads(r.headers["HX-Trigger"]) == {"tasks-changed": {}}

    def test_keys_continue_after_the_highest_tn(self):
        self.make_task(self.job, "T7", position=1)
        self.make_task(self.job, "post", position=2)
        self.client.post(self.new_url(), task_data(), headers=self.htmx())
        self.client.post(self.new_url(), task_data(), headers=self.htmx())
        keys = list(self.job.tasks.order_by("position").values_list("key", flat=True))
        assert keys == ["T7", "post", "T8", "T9"]

    def test_it_saves_without_htmx_and_redirects_to_the_line(self):
        r = self.client.post(self.new_url(), task_data())
        task = BatchTask.objects.get(job=self.job)
        self.assertRedirects(r, f"/jobs/{self.job.pk}/#task-{task.pk}")

    def test_it_shows_parameter_errors_at_the_field_and_keeps_the_input(self):
        data = task_data(**{"param-seconds": "-3", "description": "Keep me"})
        r = self.client.post(self.new_url(), data, headers=self.htmx("task-new"))
        html = r.content.decode()
        assert "Ensure this value is greater than or equal to 0." in html
        assert 'name="param-seconds" value="-3"' in html
        assert 'value="Keep me"' in html
        # The message sits inside the field that holds the bad value.
        field = html[html.index('<div class="field invalid') :]
        assert field.index('name="param-seconds"') < field.index("greater than or equal to 0")
        assert not self.job.tasks.exists()

    def test_it_validates_parameters_with_the_process_form(self):
        data = task_data(process="mail.send_document", **{"param-to": "not-an-address"})
        data |= {"param-subject": "Hi", "param-document": "../../etc/passwd", "param-body": ""}
        r = self.client.post(self.new_url(), data, headers=self.htmx())
        html = r.content.decode()
        assert "Enter a valid email address." in html
        assert "Give a path inside the media folder." in html
        assert not self.job.tasks.exists()

    def test_it_requires_a_registered_process(self):
        r = self.client.post(self.new_url(), task_data(process="os.system"), headers=self.htmx())
        assert "Select a valid choice. os.system is not one of the available choices." in (
            r.content.decode()
        )
        assert not self.job.tasks.exists()

    def test_it_refuses_more_than_five_retries_at_the_field(self):
        r = self.client.post(self.new_url(), task_data(max_retries="9"), headers=self.htmx())
        assert "Ensure this value is less than or equal to 5." in r.content.decode()
        assert not self.job.tasks.exists()

    def test_the_new_task_takes_the_default_group_and_the_jobs_company(self):
        html = self.client.get(self.new_url(), headers=self.htmx()).content.decode()
        default = BatchGroup.objects.default()
        assert f'<option value="{default.pk}" selected>default</option>' in html
        assert "The job&#x27;s company (USMF)" in html

    # --- the process's parameter form -----------------------------------------------------

    def test_it_swaps_in_the_parameter_fields_of_the_chosen_process(self):
        url = f"/jobs/{self.job.pk}/tasks/parameters/?task=new&process=demo.fail"
        r = self.client.get(url, headers=self.htmx("task-new-parameters"))
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<div id="task-new-parameters"')
        assert 'name="param-message"' in html
        assert 'value="Simulated failure"' in html  # the form's initial value
        assert "Always raises an error." in html  # the process's description

    def test_it_shows_a_tasks_stored_parameters_for_its_own_process(self):
        task = self.make_task(self.job, "T1", process="demo.sleep", parameters={"seconds": 42})
        url = f"/jobs/{self.job.pk}/tasks/parameters/?task={task.pk}&process=demo.sleep"
        html = self.client.get(url, headers=self.htmx()).content.decode()
        assert 'value="42"' in html

    def test_the_process_picker_lists_label_and_name(self):
        html = self.client.get(self.new_url(), headers=self.htmx()).content.decode()
        assert '<optgroup label="demo">' in html
        assert (
            '<option value="demo.sleep" title="Waits the given number of seconds; stops early '
            'when the job is canceled.">Sleep (demo.sleep)</option>' in html
        )
        assert f'hx-get="/jobs/{self.job.pk}/tasks/parameters/?task=new"' in html

    # --- editing --------------------------------------------------------------------------

    def test_it_opens_a_line_for_editing_with_its_values(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2", process="demo.sleep", parameters={"seconds": 7})
        self.add_condition(t2, t1, "error")
        r = self.client.get(self.edit_url(t2), headers=self.htmx(f"task-{t2.pk}"))
        html = r.content.decode()
        assert "<html" not in html
        assert f'id="task-{t2.pk}-form"' in html
        assert 'value="7"' in html
        assert f'<option value="{t1.pk}" selected>T1 · Task T1</option>' in html
        assert '<option value="error" selected>Error</option>' in html
        assert f'<option value="{t2.pk}"' not in html  # never a condition on itself

    def test_it_saves_an_edited_line_and_replaces_its_conditions(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2")
        t3 = self.make_task(self.job, "T3")
        self.add_condition(t3, t1)
        data = task_data([(t2.pk, "ended_or_error")], description="Settle", condition_type="any")
        r = self.client.post(self.edit_url(t3), data, headers=self.htmx(f"task-{t3.pk}"))
        assert r.status_code == 200
        t3.refresh_from_db()
        assert (t3.key, t3.description, t3.condition_type) == ("T3", "Settle", "any")
        conditions = list(t3.conditions.values_list("depends_on__key", "expected_status"))
        assert conditions == [("T2", "ended_or_error")]
        html = r.content.decode()
        assert f'<tr id="task-{t3.pk}" class="task-line" tabindex="-1">' in html
        assert "T2 <span>Ended or error</span>" in html

    def test_the_edit_never_writes_status_or_retries(self):
        task = self.make_task(self.job, "T1")
        BatchTask.objects.filter(pk=task.pk).update(status=S.ERROR, retries=2)
        self.client.post(self.edit_url(task), task_data(), headers=self.htmx())
        task.refresh_from_db()
        assert (task.status, task.retries) == (S.ERROR, 2)

    def test_esc_puts_the_read_only_line_back(self):
        task = self.make_task(self.job, "T1", description="Read me")
        url = f"/jobs/{self.job.pk}/tasks/{task.pk}/"
        r = self.client.get(url, headers=self.htmx(f"task-{task.pk}"))
        html = r.content.decode()
        assert html.lstrip().startswith(f'<tr id="task-{task.pk}" class="task-line" tabindex="-1">')
        assert "Read me" in html
        self.assertRedirects(self.client.get(url), f"/jobs/{self.job.pk}/#task-{task.pk}")

    def test_add_condition_adds_a_line_without_saving_or_complaining(self):
        task = self.make_task(self.job, "T1", description="Before")
        data = task_data(description="", **{"add-condition": "1"})
        r = self.client.post(self.edit_url(task), data, headers=self.htmx())
        html = r.content.decode()
        assert 'name="cond-TOTAL_FORMS" value="1"' in html
        assert 'name="cond-0-depends_on"' in html
        assert "errorlist" not in html
        task.refresh_from_db()
        assert task.description == "Before"

    # --- conditions that are refused ------------------------------------------------------

    def test_it_refuses_a_cycle_with_a_clear_message(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2")
        t3 = self.make_task(self.job, "T3")
        self.add_condition(t2, t1)
        self.add_condition(t3, t2)
        data = task_data([(t3.pk, "ended")])
        r = self.client.post(self.edit_url(t1), data, headers=self.htmx())
        html = r.content.decode()
        assert (
            "This condition makes a cycle: T1 waits for T3, T3 waits for T2, T2 waits for T1. "
            "A task can&#x27;t wait for itself." in html
        )
        assert not t1.conditions.exists()

    def test_it_refuses_a_condition_on_the_task_itself(self):
        t1 = self.make_task(self.job, "T1")
        data = task_data([(t1.pk, "ended")])
        r = self.client.post(self.edit_url(t1), data, headers=self.htmx())
        assert "A task can&#x27;t have a condition on itself." in r.content.decode()
        assert not BatchTaskCondition.objects.exists()

    def test_it_refuses_a_condition_on_a_task_of_another_job(self):
        other = self.make_task(self.make_job(created_by=self.dave), "T1")
        data = task_data([(other.pk, "ended")])
        r = self.client.post(self.new_url(), data, headers=self.htmx())
        assert (
            f"Task #{other.pk} is not a task of this batch job: a condition can only name a "
            "task of the same job." in r.content.decode()
        )
        assert not self.job.tasks.exists()

    def test_it_refuses_two_conditions_on_the_same_task(self):
        t1 = self.make_task(self.job, "T1")
        data = task_data([(t1.pk, "ended"), (t1.pk, "error")])
        r = self.client.post(self.new_url(), data, headers=self.htmx())
        assert "There is already a condition on T1." in r.content.decode()

    def test_removed_and_empty_condition_lines_are_ignored(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2")
        data = task_data([(t1.pk, "ended"), (t2.pk, "error")])
        data |= {"cond-1-DELETE": "on", "cond-TOTAL_FORMS": "3", "cond-2-depends_on": ""}
        data["cond-2-expected_status"] = "ended"
        self.client.post(self.new_url(), data, headers=self.htmx())
        task = self.job.tasks.get(key="T3")
        assert list(task.conditions.values_list("depends_on__key", flat=True)) == ["T1"]

    # --- deleting -------------------------------------------------------------------------

    def test_it_deletes_a_line_and_updates_the_lines_that_waited_for_it(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2")
        self.add_condition(t2, t1)
        r = self.client.post(self.delete_url(t1), headers=self.htmx(f"task-{t1.pk}"))
        assert r.status_code == 200
        assert not BatchTask.objects.filter(pk=t1.pk).exists()
        assert not BatchTaskCondition.objects.exists()
        html = r.content.decode()
        assert f'<tr id="task-{t2.pk}" class="task-line" tabindex="-1" hx-swap-oob="true">' in html
        assert f'id="task-{t1.pk}"' not in html
        assert json.loads(r.headers["HX-Trigger"]) == {"tasks-changed": {}}

    def test_it_deletes_without_htmx_and_redirects(self):
        t1 = self.make_task(self.job, "T1")
        r = self.client.post(self.delete_url(t1))
        self.assertRedirects(r, f"/jobs/{self.job.pk}/")
        assert not self.job.tasks.exists()

    # --- while the job executes -----------------------------------------------------------

    def executing_job(self) -> tuple[BatchJob, BatchTask]:
        job = self.make_job(created_by=self.dave)
        task = self.make_task(job, "T1", description="Before")
        start(job)
        assert job.status == S.EXECUTING
        return job, task

    def test_it_refuses_to_save_a_line_while_the_job_executes(self):
        job, task = self.executing_job()
        r = self.client.post(
            self.edit_url(task), task_data(description="After"), headers=self.htmx()
        )
        html = r.content.decode()
        assert "The job is Executing: it can&#x27;t be changed until it ends." in html
        assert 'value="After"' in html  # what was typed stays in the form
        task.refresh_from_db()
        assert task.description == "Before"
        r = self.client.post(self.new_url(job), task_data(), headers=self.htmx())
        assert "can&#x27;t be changed until it ends" in r.content.decode()
        assert job.tasks.count() == 1

    def test_it_refuses_to_delete_a_line_while_the_job_executes(self):
        job, task = self.executing_job()
        r = self.client.post(self.delete_url(task), headers=self.htmx())
        assert "can&#x27;t be changed until it ends" in r.content.decode()
        assert BatchTask.objects.filter(pk=task.pk).exists()

    def test_the_editor_says_so_when_the_job_executes(self):
        _, task = self.executing_job()
        html = self.client.get(self.edit_url(task), headers=self.htmx()).content.decode()
        assert "its tasks can&#x27;t be changed until it ends" in html

    def test_a_job_that_started_meanwhile_loses_the_race_cleanly(self):
        task = self.make_task(self.job, "T1")
        editor = forms.task_editor(
            self.job, task, user=self.alice, data=task_data(description="After")
        )
        assert editor.is_valid()
        assert transitions.release_job(job_id=self.job.pk, by_id=None)
        start(self.job)
        with self.assertRaises(transitions.ChangeRefused):
            editor.save()
        task.refresh_from_db()
        assert task.description == "Task T1"

    def test_a_parent_deleted_meanwhile_refuses_the_save(self):
        t1 = self.make_task(self.job, "T1")
        editor = forms.task_editor(
            self.job, None, user=self.alice, data=task_data([(t1.pk, "ended")])
        )
        assert editor.is_valid()
        t1.delete()
        with self.assertRaisesMessage(transitions.ChangeRefused, "deleted meanwhile"):
            editor.save()
        assert not self.job.tasks.exists()

    def test_a_task_deleted_meanwhile_refuses_the_save(self):
        task = self.make_task(self.job, "T1")
        editor = forms.task_editor(self.job, task, user=self.alice, data=task_data())
        assert editor.is_valid()
        BatchTask.objects.filter(pk=task.pk).delete()
        r = self.client.post(self.edit_url(task), task_data(), headers=self.htmx())
        assert r.status_code == 404
        with self.assertRaisesMessage(
            transitions.ChangeRefused, "This task was deleted meanwhile."
        ):
            editor.save()

    def test_a_cycle_closed_by_a_change_made_meanwhile_is_refused(self):
        t1 = self.make_task(self.job, "T1")
        t2 = self.make_task(self.job, "T2")
        editor = forms.task_editor(
            self.job, t1, user=self.alice, data=task_data([(t2.pk, "ended")])
        )
        assert editor.is_valid()
        self.add_condition(t2, t1)  # another user, between validating and saving
        with self.assertRaisesMessage(transitions.ChangeRefused, "would now make a cycle"):
            editor.save()
        assert not t1.conditions.exists()

    # --- permissions ----------------------------------------------------------------------

    def test_a_batch_user_cannot_touch_the_tasks_of_others(self):
        job = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        task = self.make_task(job, "T1")
        for method, url in [
            ("get", self.new_url(job)),
            ("post", self.new_url(job)),
            ("get", self.edit_url(task)),
            ("post", self.edit_url(task)),
            ("post", self.delete_url(task)),
            ("get", f"/jobs/{job.pk}/tasks/{task.pk}/"),
            ("get", f"/jobs/{job.pk}/tasks/parameters/?process=demo.noop"),
        ]:
            r = getattr(self.client, method)(url, task_data(), headers=self.htmx())
            assert r.status_code == 404, (method, url)
        assert job.tasks.count() == 1

    def test_a_viewer_cannot_add_edit_or_delete(self):
        task = self.make_task(self.job, "T1")
        self.login(self.bob)
        assert self.client.get(self.edit_url(task)).status_code == 404
        assert self.client.post(self.new_url(), task_data()).status_code == 404
        assert self.client.post(self.edit_url(task), task_data()).status_code == 404
        assert self.client.post(self.delete_url(task)).status_code == 404
        assert self.job.tasks.count() == 1

    def test_a_task_of_another_job_is_not_found_under_this_one(self):
        other = self.make_task(self.make_job(created_by=self.dave), "T1")
        r = self.client.get(f"/jobs/{self.job.pk}/tasks/{other.pk}/edit/", headers=self.htmx())
        assert r.status_code == 404
