"""Alert delivery end to end: a real worker and beat, PostgreSQL, Redis and an SMTP server.

The SMTP server (aiosmtpd) runs in this test process; the worker gets its address through the
same environment variables an operator sets (EMAIL_BACKEND, EMAIL_HOST, EMAIL_PORT).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.alerts.smtp import Inbox, bodies
from tests.e2e.cluster import ROOT, Cluster, free_port, unique, wait_for

BASE_URL = "http://batch.example.test:8000"


def smtp_env(port: int) -> dict[str, str]:
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "EMAIL_TIMEOUT": "5",
        "DEFAULT_FROM_EMAIL": "batchadmin@example.test",
        "SITE_ROOT": BASE_URL,
        # Retry a failed e-mail after 1 s, then every 2 s, and don't give up during a test.
        "BATCH_ALERT_RETRY_SECONDS": "1",
        "BATCH_ALERT_RETRY_MAX_SECONDS": "2",
        "BATCH_ALERT_EMAIL_ATTEMPTS": "1000",
    }


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def inbox(smtp_port: int) -> Iterator[Inbox]:
    server = Inbox(smtp_port).start()
    yield server
    server.stop()


def shell(cluster: Cluster, script: str, env: dict[str, str]) -> str:
    """``manage.py shell -c`` with the worker's settings (a mail server, the retry times)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
        cwd=ROOT,
        env={**cluster.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def subscribed_job(cluster: Cluster, process: str, kind: str) -> tuple[int, str, str]:
    """A withheld job with one task, user A subscribed to ``kind`` (popup and e-mail), B not.

    Returns the job id and the addresses of A and B. The job runs once set to Waiting.
    """
    parameters = {"message": "Ledger USMF-2025 locked by another session\nsecond line"}
    [job_id] = cluster.import_jobs(
        {
            "description": unique("alert e2e "),
            "status": "withhold",
            "tasks": [
                {
                    "key": "Post",
                    "description": "Post the ledger",
                    "process": process,
                    "parameters": parameters if process == "demo.fail" else {},
                }
            ],
        }
    )
    a, b = unique("ann"), unique("ben")
    cluster.manage(
        "shell",
        "-c",
        f"""
from django.contrib.auth.models import User
from batchadmin.alerts.models import BatchJobAlert
ann = User.objects.create_user({a!r}, {a!r} + "@example.org")
User.objects.create_user({b!r}, {b!r} + "@example.org")
BatchJobAlert.objects.create(job_id={job_id}, user=ann, {kind}=True, popup=True, email=True)
""",
    )
    return job_id, f"{a}@example.org", f"{b}@example.org"


def notifications(cluster: Cluster, job_id: int) -> list[tuple[str, bool, str, int]]:
    return [
        (email, popup, state, attempts)
        for email, popup, state, attempts in cluster.rows(
            "SELECT u.email, n.popup, n.email, n.email_attempts FROM alerts_notification n"
            " JOIN alerts_alertevent e ON e.id = n.event_id JOIN auth_user u ON u.id = n.user_id"
            " WHERE e.job_id = %s ORDER BY n.id",
            job_id,
        )
    ]


def deliveries_done(cluster: Cluster, hostname: str) -> int:
    """Delivery tasks the worker has finished (its log says so for each)."""
    log = (cluster.log_dir / f"{hostname}.log").read_text(errors="replace")
    return sum(
        1
        for line in log.splitlines()
        if "batchadmin.deliver_alerts[" in line and "succeeded" in line
    )


def test_it_alerts_a_subscriber_once_by_popup_and_email(cluster, inbox, smtp_port):
    env = smtp_env(smtp_port)
    worker = cluster.start_worker(unique("alerts-"), concurrency=2, env=env)
    job_id, ann, ben = subscribed_job(cluster, "demo.fail", "error")

    cluster.cli("status", str(job_id), "waiting")
    assert cluster.wait(job_id) == "error"

    [message] = wait_for(lambda: inbox.to(ann), timeout=60, what="the alert e-mail")
    run_id = cluster.scalar("SELECT id FROM jobs_batchjobrun WHERE job_id = %s", job_id)
    assert message["Subject"].startswith(f"Batch job {job_id} ended in Error: alert e2e ")
    text, html = bodies(message)
    assert "DemoFailure: Ledger USMF-2025 locked by another session" in text
    assert "second line" not in text
    assert f"Open the run: {BASE_URL}/jobs/{job_id}/history/{run_id}/" in text
    assert f'href="{BASE_URL}/jobs/{job_id}/history/{run_id}/"' in html
    assert inbox.to(ben) == []
    assert notifications(cluster, job_id) == [(ann, True, "sent", 0)]

    # The finishing step once more for the same run, a delivery in this process and two more
    # messages to the worker: nothing new.
    done = deliveries_done(cluster, worker)
    out = shell(
        cluster,
        f"""
from batchadmin.alerts import delivery, outbox
from batchadmin.alerts.models import AlertEvent
from batchadmin.jobs.models import BatchJob, BatchStatus
job = BatchJob.objects.get(pk={job_id})
event = AlertEvent.objects.get(job=job)
print(outbox.job_ended(job, run_id={run_id}, final=BatchStatus.ERROR, at=job.ended_at))
result = delivery.deliver(event.pk)
print(result.notified, result.sent)
outbox.send(event.pk)
outbox.send(event.pk)
""",
        env,
    )
    assert out.split() == ["None", "0", "0"]
    wait_for(
        lambda: deliveries_done(cluster, worker) >= done + 2,
        timeout=60,
        what="the worker to run the two extra deliveries",
    )
    assert len(inbox.to(ann)) == 1
    assert cluster.scalar("SELECT count(*) FROM alerts_alertevent WHERE job_id = %s", job_id) == 1
    assert notifications(cluster, job_id) == [(ann, True, "sent", 0)]


def test_racing_deliveries_of_one_event_send_one_email(cluster, inbox, smtp_port):
    env = smtp_env(smtp_port)
    worker = cluster.start_worker(unique("race-"), concurrency=3, env=env)
    job_id, ann, _ = subscribed_job(cluster, "demo.noop", "error")
    done = deliveries_done(cluster, worker)

    # One event, three delivery messages at once: the one sent on commit and two more.
    shell(
        cluster,
        f"""
from django.db import transaction
from batchadmin.alerts import outbox
from batchadmin.alerts.models import AlertKind
from batchadmin.jobs.models import BatchJob
job = BatchJob.objects.get(pk={job_id})
with transaction.atomic():
    event_id = outbox.record(job, AlertKind.ERROR, key="race:{job_id}", details={{"status": "error"}})
    transaction.on_commit(lambda: [outbox.send(event_id) for _ in range(2)])
""",
        env,
    )

    wait_for(
        lambda: deliveries_done(cluster, worker) >= done + 3,
        timeout=60,
        what="the worker to run the three deliveries",
    )
    assert len(inbox.to(ann)) == 1
    assert notifications(cluster, job_id) == [(ann, True, "sent", 0)]


def test_the_job_ends_while_the_mail_server_is_down_and_the_email_follows(cluster, smtp_port):
    env = smtp_env(smtp_port)  # nothing listens there yet
    cluster.start_worker(unique("smtp-down-"), env=env)
    job_id, ann, _ = subscribed_job(cluster, "demo.noop", "ended")

    cluster.cli("status", str(job_id), "waiting")
    assert cluster.wait(job_id) == "ended"  # the job is not held up by its alert

    wait_for(
        lambda: (
            [(a, p, s) for a, p, s, n in notifications(cluster, job_id) if n >= 2]
            == [(ann, True, "pending")]
        ),
        timeout=60,
        what="two failed attempts to send the e-mail",
    )
    error = cluster.scalar(
        "SELECT n.email_error FROM alerts_notification n JOIN alerts_alertevent e"
        " ON e.id = n.event_id WHERE e.job_id = %s",
        job_id,
    )
    assert "ConnectionRefusedError" in error

    server = Inbox(smtp_port).start()  # the mail server comes back
    try:
        [message] = wait_for(lambda: server.to(ann), timeout=60, what="the retried e-mail")
    finally:
        server.stop()
    assert message["Subject"].startswith(f"Batch job {job_id} ended: alert e2e ")
    [(_, popup, state, attempts)] = notifications(cluster, job_id)
    assert (popup, state) == (True, "sent")
    assert attempts >= 2
