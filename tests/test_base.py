from __future__ import annotations

from batchadmin.jobs.models import BatchStatus, Company
from batchadmin.servers.models import BatchGroup
from tests.base import BaseTestCase, statuses


class FixturesTestCase(BaseTestCase):
    def test_it_has_the_fixed_users_and_company(self):
        assert Company.objects.get().code == "USMF"
        assert self.alice.has_perm("jobs.change_batchjob")
        assert self.bob.has_perm("jobs.view_batchjob")
        assert not self.bob.has_perm("jobs.change_batchjob")
        assert not self.charlie.has_perm("jobs.view_batchjob")

    def test_it_makes_jobs_and_tasks_with_overrides(self):
        job = self.make_job(description="Other", status=BatchStatus.WITHHOLD)
        assert (job.description, job.status, job.company, job.created_by) == (
            "Other",
            BatchStatus.WITHHOLD,
            self.usmf,
            self.alice,
        )
        task = self.make_task(job, "T1", max_retries=2)
        assert (task.process, task.group, task.max_retries) == (
            "demo.noop",
            BatchGroup.objects.default(),
            2,
        )
        assert statuses(job) == {"T1": BatchStatus.WAITING}
