"""Event-driven usage ingest: a new S3 object -> SQS notification -> the DAG's AssetWatcher trigger.

The watcher is the Amazon provider's own ``SqsSensorTrigger``; here it runs against moto through
aiobotocore exactly as it would in the triggerer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote

import pytest

from m3sh.sandbox.aws_seed import s3_client

pytestmark = pytest.mark.sandbox


def _watcher_trigger() -> Any:
    from m3sh.config import get_config
    from m3sh.dagkit.usage_ingest import usage_schedule

    schedule = usage_schedule(get_config())
    assets = list(schedule.asset_condition.objects)
    watchers = [w for a in assets for w in (a.watchers or [])]
    assert len(watchers) == 1
    return watchers[0].trigger


def test_dag_schedule_is_hourly_or_s3_event() -> None:
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    dag = build_usage_ingest_dag()
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    trigger = _watcher_trigger()
    assert isinstance(trigger, SqsSensorTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath.endswith("SqsSensorTrigger") and kwargs["sqs_queue"].endswith("/m3sh-usage-events")


def test_new_object_fires_the_watcher_trigger(fresh_sandbox: Any) -> None:
    s3 = s3_client(fresh_sandbox.url("moto"))
    key = "usage/dt=2099-01-01/late-arrival.csv"
    s3.put_object(Bucket="m3sh-usage", Key=key, Body=b"event_id,account,meter,ts,quantity,region\n")
    trigger = _watcher_trigger()

    async def first_event() -> Any:
        return await asyncio.wait_for(trigger.run().__anext__(), timeout=60)

    event = asyncio.run(first_event())
    assert event.payload["status"] == "success"
    keys = [unquote(r["s3"]["object"]["key"]) for m in event.payload["message_batch"]
            for r in json.loads(m["Body"]).get("Records", [])]
    assert keys == [key]
