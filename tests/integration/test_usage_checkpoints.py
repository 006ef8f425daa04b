"""The ingest's resume manifest: written after the first 5 confirmed batches, then at most once per
``CHECKPOINT_MIN_INTERVAL_S`` (an S3 PUT per 5 batches was ~10 % of a fast ingest's CPU), and a retry
resumes after the last one written."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from m3sh.storage import Storage
from m3sh.usage import ingest
from tests.property.test_bad_usage_files import FEED, NOW, RecordingM3ter, _account_exists

pytestmark = [pytest.mark.sandbox]
ROWS = 40 * 10  # 40 batches of 10


class _CountingStorage(Storage):
    manifest_writes: list[int]

    def put_json(self, key: str, value: Any) -> str:
        if value.get("status") == "in_progress":
            self.manifest_writes.append(int(value["batches_sent"]))
        return super().put_json(key, value)


def _ingest(sandbox: Any, monkeypatch: pytest.MonkeyPatch, interval_s: float) -> tuple[list[int], int]:
    monkeypatch.setattr(ingest, "CHECKPOINT_MIN_INTERVAL_S", interval_s)
    key = f"fuzz/checkpoints-{uuid.uuid4().hex[:8]}.csv"
    ts = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = "".join(f"e{i},acc-1,api_calls,{ts},{i % 7 + 1},us-east-1\n" for i in range(ROWS))
    src = Storage("aws_default", "m3sh-usage")
    src.put_bytes(key, ("event_id,account,meter,ts,quantity,region\n" + rows).encode())
    state = _CountingStorage("aws_default", "m3sh-archive", f"fuzz-{uuid.uuid4().hex[:8]}/")
    state.manifest_writes = []
    m3ter = RecordingM3ter()
    result = ingest.ingest_s3_object(feed=FEED, key=key, m3ter=m3ter, source_storage=src,  # type: ignore[arg-type]
                                     state=state, account_exists=_account_exists, now=NOW, batch_size=10,
                                     max_in_flight=1)
    assert result.status == "complete" and result.accepted == ROWS == len(m3ter.sent)
    return state.manifest_writes, result.batches_sent


def test_the_first_checkpoint_follows_batch_5_then_one_per_interval(sandbox: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    every_5, batches = _ingest(sandbox, monkeypatch, interval_s=0.0)
    assert batches == 40 and every_5 == list(range(5, 41, 5))
    # a long interval: only the first checkpoint is written during the run (the final manifest follows)
    throttled, _ = _ingest(sandbox, monkeypatch, interval_s=3600.0)
    assert throttled == [5]
