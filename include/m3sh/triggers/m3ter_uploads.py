"""A deferrable wait for m3ter measurement file upload jobs (m3ter's File Upload Service).

:class:`M3terUploadJobsTrigger` polls ``GET /fileuploads/measurements/jobs/{id}`` for each job until
every one is terminal (``succeeded`` or ``failed``, :data:`~m3sh.hooks.m3ter.UPLOAD_JOB_TERMINAL`,
the same map the synchronous waiter uses), then yields exactly one event:
``{"status": "success", "jobs": {job_id: UploadJobResponse}}``, or ``{"status": "error",
"message": ...}`` when a job cannot be read or ``timeout_s`` passes. A job still ``notUploaded``
(the upload never arrived) only ends through the timeout: m3ter gives it no terminal status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class M3terUploadJobsTrigger(BaseTrigger):
    """Waits until every file upload job in ``job_ids`` has finished.

    :param job_ids: m3ter file upload job ids.
    :param m3ter_conn_id: Airflow connection of type ``m3ter``.
    :param poll_interval: seconds between polls of the unfinished jobs.
    :param timeout_s: give up (an ``error`` event) after this many seconds.
    :param carry: JSON-safe data returned unchanged as the event's ``carry`` (what the deferring
        task resumes with; ``dag.test()`` drops a deferral's own ``next_kwargs``, the event keeps it).
    """

    def __init__(self, job_ids: Sequence[str], m3ter_conn_id: str = "m3ter_default", poll_interval: float = 10.0,
                 timeout_s: float = 6 * 3600.0, carry: Any = None) -> None:
        super().__init__()
        self.carry = carry
        self.job_ids = list(job_ids)
        self.m3ter_conn_id = m3ter_conn_id
        self.poll_interval = float(poll_interval)
        self.timeout_s = float(timeout_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_ids": self.job_ids, "m3ter_conn_id": self.m3ter_conn_id,
                 "poll_interval": self.poll_interval, "timeout_s": self.timeout_s, "carry": self.carry})

    def _hook(self) -> Any:
        from m3sh.hooks.m3ter import M3terAsyncHook

        return M3terAsyncHook(m3ter_conn_id=self.m3ter_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({**await self._wait(), "carry": self.carry})  # exactly one event, whatever happens

    async def _wait(self) -> dict[str, Any]:
        from m3sh.hooks.m3ter import UPLOAD_JOB_TERMINAL

        deadline = time.monotonic() + self.timeout_s
        done: dict[str, dict[str, Any]] = {}
        try:
            hook = self._hook()
            try:
                while True:
                    for job_id in [j for j in self.job_ids if j not in done]:
                        job = await hook.aget_upload_job(job_id)
                        if job.get("status") in UPLOAD_JOB_TERMINAL:
                            done[job_id] = job
                    pending = [j for j in self.job_ids if j not in done]
                    if not pending:
                        return {"status": "success", "jobs": done,
                                "message": f"{len(done)} file upload job(s) finished"}
                    if time.monotonic() >= deadline:
                        return {"status": "error", "jobs": done,
                                "message": f"{len(pending)} file upload job(s) unfinished after {self.timeout_s:.0f}s: "
                                           f"{pending[:10]}"}
                    self.log.info("%d of %d file upload job(s) finished; next poll in %ss", len(done),
                                  len(self.job_ids), self.poll_interval)
                    await asyncio.sleep(self.poll_interval)
            finally:
                aclose = getattr(hook, "aclose", None)  # releases the hook's HTTP connections
                if aclose is not None:
                    await aclose()
        except Exception as exc:  # one event, never a crashed trigger: the operator decides
            self.log.exception("m3ter file upload trigger failed")
            return {"status": "error", "jobs": done, "message": f"{type(exc).__name__}: {str(exc)[:500]}"}
