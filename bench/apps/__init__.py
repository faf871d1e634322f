"""One ASGI app per variant, each with the same endpoints (see ``_common``).

Every module exposes ``app`` and these GET endpoints, each answering
``{"ok": true}``:

- ``/none``: no background task (the baseline, and the ping endpoint);
- ``/async``: adds one no-op async task;
- ``/sync``: adds one no-op sync task (run in a worker thread);
- ``/sleep``: adds one async task that sleeps for an hour (scale, shutdown);
- ``/spin``: adds one async task that wakes once a second for an hour
  (isolation);
- ``/pending``: how many ``/sleep`` and ``/spin`` tasks started and ended.
"""
