"""django.tasks end to end: functions enqueued from one process (a Django shell), run by a real
batch server, and their results read back with get_result from another process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.cluster import ROOT, Cluster, unique

ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.tasks_settings"}

ENQUEUE = """
from tests.djangotasks import tasks
results = [
    tasks.add.enqueue(20, 22),
    tasks.fail.enqueue("Ledger USMF-2025 locked"),
    tasks.flaky.using(backend="retrying").enqueue(failures=2),
]
print(" ".join(r.id for r in results))
"""

READ = """
import json
from tests.djangotasks import tasks
out = []
for task, result_id in zip([tasks.add, tasks.fail, tasks.flaky], {ids!r}):
    r = task.get_result(result_id)
    out.append({{
        "status": r.status,
        "value": r.return_value if r.status == "SUCCESSFUL" else None,
        "errors": [[e.exception_class_path, e.traceback] for e in r.errors],
        "workers": r.worker_ids,
        "attempts": r.attempts,
        "finished": r.is_finished,
    }})
print(json.dumps(out))
"""


def shell(cluster: Cluster, script: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
        cwd=ROOT,
        env={**cluster.env, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tasks_enqueued_in_one_process_run_on_a_worker_and_report_their_results(cluster):
    worker = cluster.start_worker(unique("djt-"), concurrency=2, env=ENV)
    ids = shell(cluster, ENQUEUE).split()
    assert len(ids) == 3
    assert [cluster.wait(int(i)) for i in ids] == ["ended", "error", "ended"]

    added, failed, retried = json.loads(shell(cluster, READ.format(ids=ids)))
    assert added == {
        "status": "SUCCESSFUL",
        "value": 42,
        "errors": [],
        "workers": [worker],
        "attempts": 1,
        "finished": True,
    }
    assert failed["status"] == "FAILED"
    [(cls, traceback)] = failed["errors"]
    assert cls == "tests.djangotasks.tasks.LedgerLocked"
    assert traceback.rstrip().endswith("LedgerLocked: Ledger USMF-2025 locked")
    assert failed["workers"] == [worker]
    assert retried["status"] == "SUCCESSFUL"
    assert retried["value"] == {"attempt": 3, "result_id": ids[2]}
    assert [cls for cls, _ in retried["errors"]] == ["builtins.RuntimeError"] * 2
    assert retried["workers"] == [worker] * 3
    # The jobs are batch jobs like any other, labelled in the list.
    shown = cluster.show(int(ids[0]))
    assert (shown["description"], shown["tasks"][0]["server"]) == (
        "add (Django task)",
        worker.split("@")[0],
    )
