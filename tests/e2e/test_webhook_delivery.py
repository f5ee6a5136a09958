"""Webhooks end to end: jobs imported with their alerts, run by a real worker, posted to an HTTP
server in this test process (127.0.0.1) by the worker's alert delivery."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import pytest

from tests.alerts.receiver import Receiver
from tests.e2e.cluster import Cluster, unique, wait_for

SECRET = "e2e-shared-secret"
ENV = {
    "BATCH_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    # Retry a failed request after 1 s, then 2 s, and don't give up during a test.
    "BATCH_ALERT_RETRY_SECONDS": "1",
    "BATCH_ALERT_RETRY_MAX_SECONDS": "2",
    "BATCH_WEBHOOK_ATTEMPTS": "1000",
    "SITE_ROOT": "http://batch.example.test",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def hooks_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, with the settings above for the CLI too (its import checks the URL)."""
    before = dict(cluster.env)
    cluster.env.update(ENV)
    yield cluster
    cluster.env.clear()
    cluster.env.update(before)


def job(description: str, process: str, hook: str, on: list[str]) -> dict[str, object]:
    parameters = {"message": "Ledger locked"} if process == "demo.fail" else {}
    return {
        "description": description,
        "status": "withhold",
        "tasks": [{"key": "post", "process": process, "parameters": parameters}],
        "alerts": [{"webhook": hook, "on": on}],
    }


def processed(cluster: Cluster, job_id: int) -> bool:
    return bool(
        cluster.scalar(
            "SELECT count(*) FROM alerts_alertevent WHERE job_id = %s AND processed_at IS NOT NULL",
            job_id,
        )
    )


def test_one_signed_post_per_event_none_for_other_ends_and_retries_while_503(
    hooks_cluster, receiver
):
    cluster = hooks_cluster
    cluster.start_worker(unique("hooks-"), concurrency=2, env=ENV)
    code = unique("ops-")
    failing, ending = cluster.import_jobs(
        {
            "webhooks": [{"code": code, "url": receiver.url, "secret": SECRET, "format": "json"}],
            "jobs": [
                job(unique("webhook e2e fails "), "demo.fail", code, ["error"]),
                job(unique("webhook e2e ends "), "demo.noop", code, ["error", "canceled"]),
            ],
        }
    )
    for job_id in (failing, ending):
        cluster.cli("status", str(job_id), "waiting")
    assert cluster.wait(failing) == "error"
    assert cluster.wait(ending) == "ended"

    [request] = wait_for(receiver.received, timeout=60, what="the webhook request")
    signature = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Batchadmin-Signature"] == f"sha256={signature}"
    body = request.json
    assert (body["event"], body["job"]["id"], body["status"]) == ("error", failing, "error")
    assert body["job"]["link"] == f"http://batch.example.test/jobs/{failing}/"
    assert body["failed_tasks"][0]["error"] == "DemoFailure: Ledger locked"
    # The job that ended was delivered too (its event processed), and nothing was posted.
    wait_for(lambda: processed(cluster, ending), timeout=60, what="the Ended job's delivery")
    assert len(receiver.received()) == 1

    # The receiver is busy twice, then takes the request: three attempts, one request sent.
    receiver.answer(503, 503)
    [busy] = cluster.import_jobs(
        {"jobs": [job(unique("webhook e2e 503 "), "demo.fail", code, ["error"])]}
    )
    cluster.cli("status", str(busy), "waiting")
    assert cluster.wait(busy) == "error"
    wait_for(lambda: len(receiver.received()) == 4, timeout=90, what="three attempts")
    state = wait_for(
        lambda: cluster.rows(
            "SELECT d.state, d.attempts, d.last_status FROM alerts_webhookdelivery d"
            " JOIN alerts_alertevent e ON e.id = d.event_id WHERE e.job_id = %s AND d.state = 'sent'",
            busy,
        ),
        timeout=30,
        what="the delivery marked sent",
    )
    assert state == [("sent", 3, 200)]
    retried = receiver.received()[1:]
    assert len({r.body for r in retried}) == 1  # the same request each time
    assert {r.json["job"]["id"] for r in retried} == {busy}
