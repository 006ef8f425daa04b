"""``[core] hostname_callable`` for the distributed test's Celery workers.

Both workers run on this one machine, so the FQDN would be the same for both; each worker process
gets ``M3SH_WORKER_HOSTNAME`` instead, and task instances record it as their ``hostname`` — which
is how the test proves that tasks really ran on both workers and that a retry moved to the survivor.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    return os.environ.get("M3SH_WORKER_HOSTNAME") or socket.getfqdn()
