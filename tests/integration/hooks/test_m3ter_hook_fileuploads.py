"""``M3terHook``'s file-upload methods, the bulk helpers' exactly-once upload and
``M3terUploadJobsTrigger``, against the m3ter emulator (no mocks)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest

from m3sh.hooks.m3ter import M3terHook, UploadUrlExpired
from m3sh.triggers.m3ter_uploads import M3terUploadJobsTrigger
from m3sh.usage.bulk import PartWriter, existing_jobs, upload_file_name, upload_part, wait_jobs

pytestmark = pytest.mark.sandbox
# the stats collapse id-like path segments: "generateUploadUrl" (17 letters) reads as a Salesforce id
GENERATE = "POST /organizations/{id}/fileuploads/measurements/{id}"


def _file(n: int) -> bytes:
    tag = uuid.uuid4().hex[:8]
    return json.dumps([{"uid": f"{tag}-{i}", "meter": "api_calls", "account": "acme-media",
                        "ts": "2024-03-01T10:00:00Z", "measure": {"quantity": 2}} for i in range(n)]).encode()


def test_generate_put_and_follow_a_job(m3: Any) -> None:
    hook = M3terHook()
    body = _file(50)
    got = hook.generate_upload_url("hook-test.json", len(body))
    hook.put_upload(got["url"], got["headers"], io.BytesIO(body), len(body))
    jobs, error = wait_jobs(hook, [got["jobId"]], poll_interval=0.05, timeout_s=30)
    assert error is None
    job = jobs[got["jobId"]]
    assert (job["status"], job["processedRows"], job["failedRows"]) == ("succeeded", 50, 0)
    assert hook.get_upload_job(got["jobId"])["fileName"] == "hook-test.json"
    assert got["jobId"] in [j["id"] for j in hook.list_upload_jobs()]
    assert hook.get_upload_job_original_url(got["jobId"]).startswith("http")


def test_an_expired_url_raises_upload_url_expired_without_the_signature(m3: Any) -> None:
    m3.admin("m3ter", "fileuploads", "POST", url_ttl_s=0)
    hook = M3terHook()
    body = _file(1)
    got = hook.generate_upload_url("expired.json", len(body))
    with pytest.raises(UploadUrlExpired) as exc:
        hook.put_upload(got["url"], got["headers"], io.BytesIO(body), len(body))
    assert "Request has expired" in str(exc.value)
    assert "X-Amz-Signature" not in str(exc.value)  # the URL's credential is never in an error


def test_upload_part_reuses_a_sent_job_and_resends_one_never_uploaded(m3: Any) -> None:
    hook = M3terHook()
    body = _file(10)
    name = upload_file_name("feed", f"k-{uuid.uuid4().hex}", "etag", 0)
    since = "2020-01-01T00:00:00+00:00"
    # A previous attempt that got its URL but died before the PUT arrived: notUploaded, sent again.
    stale = hook.generate_upload_url(name, len(body))["jobId"]
    job_id = upload_part(hook, name, io.BytesIO(body), len(body), existing_jobs(hook, name[:37], since))
    assert job_id != stale
    wait_jobs(hook, [job_id], poll_interval=0.05, timeout_s=30)
    generated = m3.stats("m3ter")["counts"].get(GENERATE, 0)
    assert generated == 2
    # A retry finds the succeeded job by its file name: no new URL, no second upload.
    found = existing_jobs(hook, name[:37], since)
    assert found[name]["id"] == job_id and found[name]["status"] == "succeeded"
    assert upload_part(hook, name, io.BytesIO(body), len(body), found) == job_id
    assert m3.stats("m3ter")["counts"].get(GENERATE, 0) == generated


def test_upload_part_retries_an_expired_url_with_a_new_one(m3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = M3terHook()
    body = _file(3)
    real_put = hook.put_upload
    calls: list[str] = []

    def first_expires(url: str, headers: dict[str, str], fileobj: Any, size: int) -> None:
        calls.append(url)
        if len(calls) == 1:
            raise UploadUrlExpired("403 Request has expired")
        real_put(url, headers, fileobj, size)

    monkeypatch.setattr(hook, "put_upload", first_expires)
    monkeypatch.setattr("m3sh.usage.bulk.time.sleep", lambda s: None)
    job_id = upload_part(hook, "retry.json", io.BytesIO(body), len(body), {})
    assert len(calls) == 2 and calls[0] != calls[1]
    jobs, _ = wait_jobs(hook, [job_id], poll_interval=0.05, timeout_s=30)
    assert jobs[job_id]["processedRows"] == 3


def test_part_writer_splits_at_the_size_and_every_part_is_a_json_array() -> None:
    parts: list[tuple[int, list[Any], int, int]] = []

    def on_part(part: int, f: Any, size: int, rows: int) -> None:
        data = f.read()
        assert len(data) == size <= 2048
        parts.append((part, json.loads(data), size, rows))

    writer = PartWriter(2048, on_part)
    for i in range(100):
        writer.add({"uid": f"u{i}", "meter": "m", "account": "a", "ts": "2024-01-01T00:00:00Z"})
    writer.finish()
    assert [p[0] for p in parts] == list(range(len(parts))) and len(parts) > 1
    assert [m["uid"] for p in parts for m in p[1]] == [f"u{i}" for i in range(100)]
    assert sum(p[3] for p in parts) == 100


def test_trigger_serializes_and_waits_for_every_job(m3: Any) -> None:
    hook = M3terHook()
    ids = []
    for i in range(2):
        body = _file(5)
        got = hook.generate_upload_url(f"trig-{i}.json", len(body))
        hook.put_upload(got["url"], got["headers"], io.BytesIO(body), len(body))
        ids.append(got["jobId"])
    trigger = M3terUploadJobsTrigger(job_ids=ids, poll_interval=0.05, timeout_s=60)
    path, kwargs = trigger.serialize()
    assert path == "m3sh.triggers.m3ter_uploads.M3terUploadJobsTrigger"
    again = M3terUploadJobsTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    json.dumps(kwargs)  # primitive only

    async def first_event() -> Any:
        return await again.run().asend(None)

    event = asyncio.run(first_event()).payload
    assert event["status"] == "success" and set(event["jobs"]) == set(ids)
    assert all(j["status"] == "succeeded" and j["processedRows"] == 5 for j in event["jobs"].values())


def test_trigger_times_out_on_a_job_never_uploaded(m3: Any) -> None:
    job_id = M3terHook().generate_upload_url("never.json", 10)["jobId"]
    trigger = M3terUploadJobsTrigger(job_ids=[job_id], poll_interval=0.05, timeout_s=0.3)

    async def first_event() -> Any:
        return await trigger.run().asend(None)

    event = asyncio.run(first_event()).payload
    assert event["status"] == "error" and job_id in event["message"]


def test_trigger_reports_an_unreadable_job_as_one_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sandbox: a hook whose read fails; the trigger still yields exactly one event, with its carry."""

    class Broken:
        async def aget_upload_job(self, job_id: str) -> dict[str, Any]:
            raise RuntimeError("m3ter unreachable")

        async def aclose(self) -> None:
            return None

    trigger = M3terUploadJobsTrigger(job_ids=["j-1"], poll_interval=0.01, carry=[{"key": "a.csv"}])
    monkeypatch.setattr(trigger, "_hook", Broken)

    async def events() -> list[Any]:
        return [e.payload async for e in trigger.run()]

    (event,) = asyncio.run(events())
    assert event["status"] == "error" and "m3ter unreachable" in event["message"]
    assert event["carry"] == [{"key": "a.csv"}]
