"""The SNS and signed-webhook alert channels, delivered through the real hooks to moto and the
platform emulator's verifying webhook sink (Slack and email are covered by the DAG alerting test)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from m3sh.notifiers.alerts import M3shAlertNotifier
from m3sh.sandbox import credentials as cred

pytestmark = pytest.mark.sandbox


class _TI:
    dag_id, task_id, map_index, run_id, try_number = "m3sh_invoice_sync", "deliver_netsuite_eu", -1, "manual__1", 2
    log_url = "http://localhost:8080/dags/m3sh_invoice_sync/runs/manual__1/tasks/deliver_netsuite_eu"


class _Failure(RuntimeError):
    records = ["bill-1", "bill-2"]


def test_sns_and_signed_webhook_channels_receive_the_alert(fresh_sandbox: Any) -> None:
    kw = {"endpoint_url": fresh_sandbox.url("moto"), "aws_access_key_id": cred.AWS_ACCESS_KEY,
          "aws_secret_access_key": cred.AWS_SECRET_KEY, "region_name": "us-east-1"}
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name="m3sh-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alert-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    notifier = M3shAlertNotifier([
        {"name": "ops_sns", "type": "sns", "conn_id": "aws_default", "target": topic},
        {"name": "ops_hook", "type": "webhook", "conn_id": "m3sh_customer_webhook", "target": "/alerts"},
    ], event="retry")  # retry alerts are not de-duplicated: no bookkeeping needed here
    notifier.notify({"ti": _TI(), "exception": _Failure("NetSuite EU answered 503 for 2 bills")})

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    texts = [json.loads(m["Body"])["Message"] for m in messages]
    assert len(texts) == 1
    assert "m3sh_invoice_sync.deliver_netsuite_eu" in texts[0] and "records: bill-1, bill-2" in texts[0]
    hooks = [w for w in fresh_sandbox.state("platform")["webhooks"] if w["name"] == "alerts"]
    assert len(hooks) == 1 and hooks[0]["verified"]  # the sink checked the HMAC signature
    body = json.loads(hooks[0]["body"])
    assert body["task_id"] == "deliver_netsuite_eu" and body["records"] == ["bill-1", "bill-2"]
    assert body["cause"].startswith("_Failure: NetSuite EU answered 503")
    secrets = [cred.WEBHOOK_SECRET, cred.AWS_SECRET_KEY]
    assert not [s for s in secrets if s in texts[0] or s in hooks[0]["body"]]
