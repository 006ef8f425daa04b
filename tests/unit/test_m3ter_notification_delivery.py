"""m3ter notifications as m3ter documents them, end to end without a sandbox.

The body is m3ter's own documented Event example (tests/fixtures/m3ter/event_response_example.json,
quoted from https://docs.m3ter.com/api/events/retrieve-eventresponse); the headers are the ones the
emulator sends (the signing scheme is not published where we could read it, see notify.py). The
receiver must accept that delivery and turn it into an asset event naming the event, its time,
the account and the entity from the documented fields; a wrongly signed or tampered one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from m3sh.sandbox.m3ter import notify
from m3sh.web.receiver import ASSET_URI, MemoryReplayGuard, ReceiverSettings, WebhookScheme, create_app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "m3ter" / "event_response_example.json"
SPEC = Path(__file__).resolve().parents[2] / ".." / "shared" / "specs" / "m3ter-openapi.json"
SECRET = "whsec-documented-example"
CREDENTIALS = {"type": "M3TER_SIGNED_REQUEST", "apiKey": "m3sh", "secret": SECRET}


class ListRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        self.events.append((uri, extra))


def _example() -> dict[str, Any]:
    event: dict[str, Any] = json.loads(FIXTURE.read_text())["event"]
    return event


def _receiver(settings: ReceiverSettings | None = None) -> tuple[TestClient, ListRecorder]:
    rec = ListRecorder()
    cfg = settings or ReceiverSettings(SECRET)
    app = create_app(settings=lambda: cfg, recorder=rec, replay=MemoryReplayGuard())
    return TestClient(app, raise_server_exceptions=False), rec


def test_the_fixture_quotes_m3ters_published_example_verbatim() -> None:
    if not SPEC.exists():
        pytest.skip(f"m3ter OpenAPI document not found at {SPEC}")
    spec = json.loads(SPEC.read_text())
    assert _example() == spec["components"]["schemas"]["EventResponse"]["example"]


def test_the_documented_event_signed_like_the_emulator_becomes_the_right_asset_event() -> None:
    event = _example()
    body = notify.event_body(event)
    headers = notify.delivery_headers(CREDENTIALS, body, event["id"])
    client, rec = _receiver()
    r = client.post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["event_id"] == "9cb46d85-7cb6-4637-80a1-d4ec38e4ab30"
    assert rec.events == [(ASSET_URI, {
        "event_id": "9cb46d85-7cb6-4637-80a1-d4ec38e4ab30",
        "event_name": "configuration.commitment.created",
        "event_time": "2022-10-28T13:54:49.557Z",
        "account_id": "1cf2a754-476c-498c-b05a-7d41abfc404d",
        "entity_id": "480d317e-2030-416b-b64b-c07577c418b4",
    })]
    # m3ter's retry of the same event (same documented id) is a replay, whatever the headers say
    again = notify.delivery_headers(CREDENTIALS, body, event["id"])
    assert client.post("/webhooks/m3ter", content=body, headers=again).status_code == 401
    assert len(rec.events) == 1


@pytest.mark.parametrize("case", ["wrong_secret", "tampered_body", "unsigned", "wrong_api_key", "stale"])
def test_the_documented_event_wrongly_signed_is_refused(case: str) -> None:
    event = _example()
    body = notify.event_body(event)
    creds = {**CREDENTIALS, "secret": "not-the-secret"} if case == "wrong_secret" else CREDENTIALS
    if case == "wrong_api_key":
        creds = {**CREDENTIALS, "apiKey": "someone-else"}
    headers = notify.delivery_headers(creds, body, event["id"], now=time.time() - 301 if case == "stale" else None)
    if case == "tampered_body":  # another account, same signature
        body = body.replace(b"1cf2a754-476c-498c-b05a-7d41abfc404d", b"00000000-476c-498c-b05a-7d41abfc404d")
    if case == "unsigned":
        headers.pop(notify.SIGNATURE_HEADER)
    client, rec = _receiver()
    r = client.post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code == 401, (case, r.text)
    assert rec.events == []
    assert SECRET not in r.text


def test_the_event_id_header_is_optional_but_must_match_the_body_when_sent() -> None:
    """The id header is not documented: the documented body ``id`` is the replay key."""
    event = _example()
    body = notify.event_body(event)
    headers = notify.delivery_headers(CREDENTIALS, body, event["id"])
    client, rec = _receiver()
    swapped = client.post("/webhooks/m3ter", content=body, headers={**headers, notify.EVENT_ID_HEADER: "other"})
    assert swapped.status_code == 401 and "does not match" in swapped.json()["detail"]
    without = {k: v for k, v in headers.items() if k != notify.EVENT_ID_HEADER}
    assert client.post("/webhooks/m3ter", content=body, headers=without).status_code == 202
    assert [e["event_id"] for _, e in rec.events] == [event["id"]]


def test_the_emulator_delivers_exactly_the_documented_event_fields() -> None:
    stored = {**_example(), "_type": "Notification", "_notificationCode": "m3sh_x", "_accountId": "a"}
    delivered = json.loads(notify.event_body(stored))
    assert delivered == _example()
    if SPEC.exists():
        schema = json.loads(SPEC.read_text())["components"]["schemas"]["EventResponse"]
        assert set(delivered) == set(schema["properties"]) and set(schema["required"]) <= set(delivered)


def test_a_notification_goes_only_to_webhooks_an_enabled_integration_configuration_links_it_to() -> None:
    webhooks = {"w1": {"id": "w1", "active": True}, "w2": {"id": "w2", "active": False},
                "w3": {"id": "w3", "active": True}}
    link = {"entityType": "Notification", "entityId": "n1", "destination": "WEBHOOK"}
    assert notify.linked_destinations("n1", [], webhooks) == []  # no link: m3ter sends nothing
    configs = [{**link, "destinationId": "w1"}, {**link, "destinationId": "w1"},  # duplicate link: one send
               {**link, "destinationId": "w2"},  # inactive destination
               {**link, "destinationId": "w3", "enabled": False},  # disabled link
               {**link, "entityId": "n2", "destinationId": "w3"},  # another notification
               {**link, "entityType": "Bill", "destinationId": "w3"},  # not a notification link
               {**link, "destinationId": "gone"}]
    assert [d["id"] for d in notify.linked_destinations("n1", configs, webhooks)] == ["w1"]


def test_another_signing_scheme_is_a_matter_of_connection_extras() -> None:
    """Should m3ter's published scheme differ, header names, signed string, algorithm, encoding,
    timestamp unit and tolerance are set on the ``m3ter_webhook`` connection, not in code."""
    scheme = WebhookScheme.from_extra({
        "signature_header": "X-Sig", "timestamp_header": "X-Ts", "api_key_header": "X-Key",
        "event_id_header": "X-Id", "signed_payload": "{api_key}|{timestamp}|{body}", "algorithm": "sha512",
        "encoding": "base64", "timestamp_unit": "ms", "tolerance_s": "60"})
    event = _example()
    body = json.dumps(event).encode()
    stamp = str(int(time.time() * 1000))
    digest = hmac.new(SECRET.encode(), b"key-7|" + stamp.encode() + b"|" + body, hashlib.sha512).digest()
    headers = {"X-Sig": base64.b64encode(digest).decode(), "X-Ts": stamp, "X-Key": "key-7"}
    client, rec = _receiver(ReceiverSettings(SECRET, scheme, api_key="key-7"))
    assert client.post("/webhooks/m3ter", content=body, headers=headers).status_code == 202
    assert rec.events[0][1]["account_id"] == "1cf2a754-476c-498c-b05a-7d41abfc404d"
    stale = str(int((time.time() - 61) * 1000))
    digest = hmac.new(SECRET.encode(), b"key-7|" + stale.encode() + b"|" + body, hashlib.sha512).digest()
    other = {**headers, "X-Ts": stale, "X-Sig": base64.b64encode(digest).decode()}
    assert client.post("/webhooks/m3ter", content=body, headers=other).status_code == 401


@pytest.mark.parametrize(("extra", "message"), [
    ({"signed_payload": "{timestamp}"}, "must contain"),  # would not cover the body
    ({"signed_payload": "{body}"}, "must contain"),  # would never go stale
    ({"signed_payload": "{timestamp}.{body}.{url}"}, "unknown placeholder"),
    ({"algorithm": "md5"}, "algorithm"),
    ({"encoding": "base32"}, "encoding"),
    ({"timestamp_unit": "us"}, "timestamp_unit"),
])
def test_a_scheme_that_would_weaken_or_not_work_is_refused(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WebhookScheme.from_extra(extra)


class FakeHook:
    """Just the calls ``link_notification`` makes, over an in-memory list of integration configs."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.configs = configs
        self.calls: list[tuple[str, Any]] = []

    def list_integration_configs(self, *, destination_id: str | None = None) -> Any:
        return iter([c for c in self.configs if c.get("destinationId") == destination_id])

    def create_integration_config(self, body: dict[str, Any], find_existing: Any) -> dict[str, Any]:
        self.calls.append(("create", body))
        made = {"id": f"ic-{len(self.configs) + 1}", "enabled": True, **body}
        self.configs.append(made)
        return made

    def enable_integration_config(self, config_id: str) -> Any:
        self.calls.append(("enable", config_id))
        return {}


def test_sync_links_each_notification_to_the_webhook_once_and_re_enables_a_disabled_link() -> None:
    from m3sh.automation.notifications import link_notification

    hook = FakeHook([])
    notification, webhook = {"id": "n1", "code": "m3sh_low"}, {"id": "w1"}
    assert link_notification(hook, notification, webhook, dry_run=True) == "created"
    assert hook.calls == []  # a dry run writes nothing
    assert link_notification(hook, notification, webhook) == "created"
    assert hook.calls == [("create", {
        "name": "m3sh: m3sh_low -> m3sh_receiver", "entityType": "Notification", "entityId": "n1",
        "destination": "WEBHOOK", "destinationId": "w1"})]
    assert link_notification(hook, notification, webhook) == "unchanged"
    hook.configs[0]["enabled"] = False  # e.g. switched off in m3ter's Console
    assert link_notification(hook, notification, webhook) == "enabled"
    assert hook.calls[-1] == ("enable", "ic-1")
    assert len([c for c in hook.calls if c[0] == "create"]) == 1
