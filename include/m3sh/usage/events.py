"""The S3 objects an event-started usage run names: keys out of the SQS messages its asset events carry.

``m3sh_usage_ingest`` watches each S3 feed's ``event_queue`` with an AssetWatcher on the Amazon
provider's ``SqsSensorTrigger``; Airflow records each trigger event as an asset event whose ``extra``
is ``{"from_trigger": True, "payload": {"status": "success", "message_batch": [<SQS message>, ...]}}``
(``airflow.models.trigger.Trigger.submit_event``). An event-started run ingests exactly the objects
those messages name instead of listing the whole prefix: the listing (and a manifest read per object)
grows with the bucket's history, an event does not. Anything the events do not name (a lost message,
a file put while the queue was being set up) is found by the hourly run's listing of its data interval.

Message bodies, per AWS: an S3 event notification ``{"Records": [{"eventName": "ObjectCreated:Put",
"s3": {"bucket": {"name"}, "object": {"key"}}}]}`` whose keys are URL-encoded (spaces as ``+``:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html, decoded
with ``unquote_plus`` in AWS's own examples); the same wrapped by SNS (``{"Type": "Notification",
"Message": "<that JSON as text>"}``) when the bucket notifies a topic the queue subscribes to; and
``s3:TestEvent``, which S3 sends once when the notification is configured and names no object. A
body that is none of these makes the feed fall back to listing, so nothing is missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

ASSET_PREFIX = "m3sh_usage_"


def feed_asset_name(feed_name: str) -> str:
    """The name of the asset whose events start a run for the S3 feed ``feed_name``."""
    return f"{ASSET_PREFIX}{feed_name}"


class UnknownMessage(ValueError):
    """An SQS message body that is not an S3 event notification (nor one wrapped by SNS)."""


def _records(body: Any) -> list[dict[str, Any]]:
    doc = json.loads(body) if isinstance(body, str | bytes) else body
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        doc = json.loads(doc["Message"])  # SNS fan-out: the S3 notification is the message text
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("Records"), list):
        raise UnknownMessage(f"not an S3 event notification: {str(body)[:200]!r}")
    return [r for r in doc["Records"] if isinstance(r, dict)]


def keys_from_messages(messages: Iterable[Mapping[str, Any]], bucket: str, prefix: str = "") -> list[str]:
    """Object keys of ``s3:ObjectCreated:*`` records for ``bucket`` under ``prefix``, decoded, sorted,
    once each. Raises :class:`UnknownMessage` for a body that is not an S3 notification."""
    keys: set[str] = set()
    for message in messages:
        try:
            records = _records(message.get("Body"))
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise UnknownMessage(f"SQS message {message.get('MessageId')!r}: {exc}") from None
        for record in records:
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            s3 = record.get("s3") or {}
            if (s3.get("bucket") or {}).get("name") != bucket:
                continue
            key = unquote_plus(str((s3.get("object") or {}).get("key", "")))
            if key and key.startswith(prefix) and not key.endswith("/"):
                keys.add(key)
    return sorted(keys)


def keys_from_asset_events(events: Iterable[tuple[str, Any]], feeds: Iterable[Any]) -> dict[str, list[str] | None]:
    """Per S3 feed whose asset (:func:`feed_asset_name`) has events among ``(asset name, extra)``
    pairs: the keys its messages name, or None when an event carries no readable SQS messages (the
    feed is then listed as before). Feeds without events are absent: the run has nothing for them."""
    by_asset: dict[str, list[Any]] = {}
    for name, extra in events:
        by_asset.setdefault(name, []).append(extra)
    out: dict[str, list[str] | None] = {}
    for feed in feeds:
        extras = by_asset.get(feed_asset_name(feed.name))
        if not extras or feed.type != "s3":
            continue
        out[feed.name] = _feed_keys(extras, feed.bucket or "", feed.prefix)
    return out


def _feed_keys(extras: list[Any], bucket: str, prefix: str) -> list[str] | None:
    keys: set[str] = set()
    for extra in extras:
        batch = (extra.get("payload") or {}).get("message_batch") if isinstance(extra, Mapping) else None
        if not isinstance(batch, list):
            return None
        try:
            keys.update(keys_from_messages(batch, bucket, prefix))
        except UnknownMessage:
            return None
    return sorted(keys)
