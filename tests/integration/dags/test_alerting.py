"""Alerts on failed tasks, end to end: one alert per failure with the affected records, no repeat
while the same failure persists, one "resolved" message when the task succeeds again.

Delivered through the real provider hooks (SlackWebhookHook, SmtpHook) to the sandbox's Slack and
SMTP sinks.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.aws_seed import s3_client

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]
PREFIX = "usage/alerting/"
BAD_KEY = PREFIX + "broken.csv.gz"


@pytest.fixture
def alert_env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> Any:
    m3sh_config({"prefix: usage/\n": f"prefix: {PREFIX}\n"},
                extra="\ndag_defaults: {retries: 0, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    s3 = s3_client(fresh_sandbox.url("moto"))
    truncated = gzip.compress(b"event_id,account,meter,ts,quantity,region\n" * 2000)[:-40]
    s3.put_object(Bucket="m3sh-usage", Key=BAD_KEY, Body=truncated)
    return fresh_sandbox, s3


def _run() -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    return build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": ["platform_files"]})


def _slack(sandbox: Any) -> list[str]:
    return [m["text"] for m in sandbox.state("platform")["slack"]]


def test_alert_once_then_resolved(alert_env: Any) -> None:
    sandbox, s3 = alert_env
    assert _run().state == "failed"
    messages = _slack(sandbox)
    assert len(messages) == 1
    text = messages[0]
    assert "m3sh task failed: m3sh_usage_ingest.summarize" in text
    assert "try 1" in text and "cause: RunFailed: 1 usage file(s) failed" in text
    assert f"records: {BAD_KEY}" in text
    assert "log: http" in text
    emails = sandbox.state("platform")["emails"]
    assert len(emails) == 1 and "billing-ops@northwind.example" in emails[0]["to"]
    # no secret of any sandbox connection appears in what was sent
    from m3sh.sandbox.runner import SandboxEndpoints

    secrets = [c.get("password") for c in SandboxEndpoints().connections().values() if c.get("password")]
    state = sandbox.state("platform")
    blob = json.dumps([m["body"] for m in state["slack"]] + state["emails"])
    assert not [s for s in secrets if s and s in blob]

    # the same failure again: no second alert
    assert _run().state == "failed"
    assert len(_slack(sandbox)) == 1

    # fixed upstream: the next success sends exactly one "resolved"
    s3.delete_object(Bucket="m3sh-usage", Key=BAD_KEY)
    assert _run().state == "success"
    messages = _slack(sandbox)
    assert len(messages) == 2
    assert "m3sh resolved: m3sh_usage_ingest.summarize" in messages[1]
    assert _run().state == "success"
    assert len(_slack(sandbox)) == 2
