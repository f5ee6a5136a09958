"""What the engine tells the rest of batchadmin without importing it.

The engine sits below the alerts (``lib`` <- models <- ``engine`` <- alerts and pages), yet a
settled job run must write its alert event in the same transaction, and beat's tick must run
the alert checks. These two signals turn that dependency around: ``alerts/apps.py`` connects
its receivers. Receivers run synchronously, inside the sender's transaction where there is
one, and an exception they raise propagates as an inline call's would (``send``, not
``send_robust``): a settle whose alert event could not be written rolls back and is retried.
"""

from __future__ import annotations

from django.dispatch import Signal

# A job run got its final status, inside the transaction that settled it (under the job lock).
# Keyword arguments: job (BatchJob, as read before the move), run_id (int | None), final
# (BatchStatus: Ended, Error or Canceled), at (datetime).
job_settled = Signal()

# The engine's tick handlers ran (beat, every second). Keyword argument: at (datetime).
# A receiver returns a dict of counts, merged into the tick's log line, and must not raise:
# whatever it does is not allowed to stop the engine's own work on the next tick.
ticked = Signal()
