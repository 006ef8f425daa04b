"""m3sh.usage.events without I/O: the S3 keys an event-started usage run takes from its asset events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from m3sh.config import UsageFeed
from m3sh.usage.events import UnknownMessage, feed_asset_name, keys_from_asset_events, keys_from_messages
from m3sh.usage.run import plan_chunks

METERS = [{"code": "api_calls", "measures": {"quantity": "quantity"}}]


def _s3_feed(name: str = "files", prefix: str = "usage/") -> UsageFeed:
    return UsageFeed.model_validate({"name": name, "type": "s3", "conn_id": "aws", "bucket": "b", "prefix": prefix,
                                     "meters": METERS})


def _message(*keys: str, bucket: str = "b", event: str = "ObjectCreated:Put") -> dict[str, Any]:
    # The shape AWS documents (and moto sends): keys URL-encoded, spaces as '+'.
    records = [{"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": k, "size": 1}}}
               for k in keys]
    return {"MessageId": "m1", "Body": json.dumps({"Records": records})}


def test_keys_are_decoded_filtered_and_unique() -> None:
    messages = [_message("usage/dt%3D2026-12-01/a+b.csv", "usage/x.csv"), _message("usage/x.csv"),
                _message("other/y.csv"), _message("usage/z.csv", bucket="elsewhere"),
                _message("usage/gone.csv", event="ObjectRemoved:Delete"), _message("usage/folder/")]
    assert keys_from_messages(messages, "b", "usage/") == ["usage/dt=2026-12-01/a b.csv", "usage/x.csv"]


def test_sns_wrapped_and_test_events() -> None:
    inner = _message("usage/a.csv")["Body"]
    sns = {"MessageId": "m2", "Body": json.dumps({"Type": "Notification", "Message": inner})}
    test_event = {"MessageId": "m3", "Body": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})}
    assert keys_from_messages([sns, test_event], "b") == ["usage/a.csv"]
    with pytest.raises(UnknownMessage, match="m4"):
        keys_from_messages([{"MessageId": "m4", "Body": "not json"}], "b")


def test_asset_events_per_feed_and_fallback_to_listing() -> None:
    feeds = [_s3_feed("files"), _s3_feed("other")]
    ok = {"from_trigger": True, "payload": {"status": "success", "message_batch": [_message("usage/a.csv")]}}
    more = {"from_trigger": True, "payload": {"status": "success", "message_batch": [_message("usage/b.csv")]}}
    assert keys_from_asset_events([(feed_asset_name("files"), ok), (feed_asset_name("files"), more)], feeds) == {
        "files": ["usage/a.csv", "usage/b.csv"]}
    # an event without SQS messages (e.g. recorded through the REST API): that feed is listed instead
    assert keys_from_asset_events([(feed_asset_name("files"), ok), (feed_asset_name("files"), {})], feeds) == {
        "files": None}
    assert keys_from_asset_events([("someone_elses_asset", ok)], feeds) == {}


def test_plan_of_an_event_run_takes_only_the_named_keys() -> None:
    http = UsageFeed.model_validate({"name": "api", "type": "http", "conn_id": "p", "endpoint": "/u",
                                     "meters": METERS})
    feeds = [_s3_feed("files"), _s3_feed("other"), http]
    keys = [f"usage/{i}.csv" for i in range(3)]
    # the HTTP feed and the S3 feed without events are not part of this run; no listing happens
    assert plan_chunks(feeds, event_keys={"files": keys}, files_per_task=2) == [
        {"feed": "files", "keys": keys[:2]}, {"feed": "files", "keys": keys[2:]}]
    assert plan_chunks(feeds, event_keys={"files": []}) == []


def test_the_plan_operator_reads_the_run_context_s_asset_events_as_airflow_builds_them() -> None:
    """The accessor and event classes the task runner puts in the context (Airflow 3.3), with the
    ``extra`` the triggerer records for an AssetWatcher event (``Trigger.submit_event``)."""
    import datetime as dt

    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from m3sh.operators.usage_feeds import _event_keys

    def event(name: str, *keys: str) -> AssetEventDagRunReferenceResult:
        asset = AssetReferenceAssetEventDagRun(name=name, uri=f"s3://b/{name}", extra={})
        extra = {"from_trigger": True, "payload": {"status": "success", "message_batch": [_message(*keys)]}}
        return AssetEventDagRunReferenceResult(
            asset=asset, extra=extra, source_task_id=None, source_dag_id=None, source_run_id=None,
            source_map_index=None, source_aliases=[], timestamp=dt.datetime.now(dt.UTC))

    feeds = [_s3_feed("files")]
    events = TriggeringAssetEventsAccessor.build([event(feed_asset_name("files"), "usage/b.csv"),
                                                  event(feed_asset_name("files"), "usage/a.csv")])
    assert _event_keys({"triggering_asset_events": events}, feeds) == {"files": ["usage/a.csv", "usage/b.csv"]}
    # a user's own asset started the run: every feed is planned as before
    mine = TriggeringAssetEventsAccessor.build([event("my_asset", "usage/a.csv")])
    assert _event_keys({"triggering_asset_events": mine}, feeds) is None


def test_an_asset_triggered_run_is_recognised_by_the_task_sdk_s_run_type() -> None:
    from types import SimpleNamespace

    from airflow.sdk.api.datamodels._generated import DagRunType

    from m3sh.operators.usage_feeds import is_event_run

    # str() of the Task SDK's enum is "DagRunType.ASSET_TRIGGERED": a string match on it never matched
    assert is_event_run({"dag_run": SimpleNamespace(run_type=DagRunType.ASSET_TRIGGERED)})
    assert is_event_run({"dag_run": SimpleNamespace(run_type="asset_triggered")})
    assert not is_event_run({"dag_run": SimpleNamespace(run_type=DagRunType.SCHEDULED)})
    assert not is_event_run({})


def test_a_second_bucket_on_the_same_connection_shares_the_s3_client() -> None:
    from m3sh.storage import Storage

    state = Storage("aws", "archive", "m3sh/")
    state.__dict__["client"] = client = object()  # no boto3 here: the cached client is what is shared
    assert state.for_bucket("aws", "usage").client is client
    assert state.for_bucket("aws", "usage").bucket == "usage"
    assert "client" not in state.for_bucket("other_conn", "usage").__dict__
