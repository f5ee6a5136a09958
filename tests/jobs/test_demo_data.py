from __future__ import annotations

from io import StringIO

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import TestCase

from batchadmin.alerts.models import AlertRule, BatchJobAlert
from batchadmin.jobs.models import BatchJob


class DemoDataTestCase(TestCase):
    def test_the_demo_night_comes_with_alerts_for_the_manager(self):
        call_command("demo_data", stdout=StringIO())
        manager = User.objects.get(username="manager")
        alert = BatchJobAlert.objects.get(user=manager)
        assert alert.job.description == "Nightly invoicing USMF"
        assert alert.events() == ["Ended", "Error", "Canceled"]
        assert AlertRule.objects.get(user=manager).stuck
        assert BatchJob.objects.get(description="Warehouse clean-up (fails)").critical
        # Run again: nothing is added twice.
        call_command("demo_data", stdout=StringIO())
        assert BatchJobAlert.objects.count() == 1
        assert AlertRule.objects.count() == 1
