"""Hostile deliveries to the m3ter webhook receiver get a 4xx, never a 5xx, and record nothing.

Bodies: huge, binary, non-JSON, odd JSON; headers: missing, forged, garbage timestamps and ids.
Only a delivery signed with the secret may be accepted (202); nothing else ever reaches the
asset recorder.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3sh.web.receiver import MemoryReplayGuard, ReceiverSettings, WebhookScheme, create_app

pytestmark = [pytest.mark.property]

SECRET = "whsec-property-7f3e"
SCHEME = WebhookScheme()
_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class ListRecorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        self.events.append(extra)


def _client() -> tuple[TestClient, ListRecorder]:
    rec = ListRecorder()
    settings_ = ReceiverSettings(SECRET, SCHEME)
    app = create_app(settings=lambda: settings_, recorder=rec, replay=MemoryReplayGuard())
    return TestClient(app, raise_server_exceptions=False), rec


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                               st.text(max_size=20)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.sampled_from(["m3terEvent", "eventData", "newDto",
                                                                              "oldDto", "notification", "code",
                                                                              "eventName", "id", "accountId"]),
                                                             inner, max_size=4)),
                     max_leaves=12)
bodies = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=2000).map(str.encode),
    _json.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3).map(lambda mb: b"{" + b'"x": "' + b"A" * (mb * 1024 * 1024) + b'"}'),  # huge
)
_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
timestamps = st.one_of(st.just("now"), st.sampled_from(["", "nan", "inf", "-inf", "1e400", "0", "-1", "now-400",
                                                        "now+400", "9" * 400]), _header_text)


def _stamp(ts: str) -> str:
    now = int(time.time())
    return {"now": str(now), "now-400": str(now - 400), "now+400": str(now + 400)}.get(ts, ts)


@_SETTINGS
@given(body=bodies, ts=timestamps, event_id=_header_text, signature=st.one_of(_header_text, st.none()),
       forge_with=st.sampled_from(["", "wrong-secret", SECRET[:-1]]))
def test_unsigned_or_forged_deliveries_get_401_whatever_the_body(body: bytes, ts: str, event_id: str,
                                                                  signature: str | None, forge_with: str) -> None:
    client, rec = _client()
    stamp = _stamp(ts)
    headers = {SCHEME.timestamp_header: stamp, SCHEME.event_id_header: event_id, "Content-Type": "application/json"}
    if signature is None:  # a signature made with a wrong key over the right bytes
        headers[SCHEME.signature_header] = SCHEME.sign(forge_with or "x", stamp, body)
    else:
        headers[SCHEME.signature_header] = signature
    r = client.post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert rec.events == []
    assert SECRET not in r.text


@_SETTINGS
@given(body=bodies)
def test_signed_delivery_of_any_body_is_never_a_5xx(body: bytes) -> None:
    """m3ter may change its payload shape: a correctly signed delivery must not crash the receiver."""
    client, rec = _client()
    stamp = str(int(time.time()))
    headers = {SCHEME.timestamp_header: stamp, SCHEME.event_id_header: "ev-1",
               SCHEME.signature_header: SCHEME.sign(SECRET, stamp, body)}
    r = client.post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, body[:200])
    assert (r.status_code == 202) == (len(rec.events) == 1)


@pytest.mark.parametrize("body", [b'{"m3terEvent": "x"}', b'{"m3terEvent": {"eventData": [1]}}',
                                  b'{"m3terEvent": {"notification": 5}}'])
def test_signed_delivery_with_unexpected_shapes_is_not_a_500(body: bytes) -> None:
    client, _ = _client()
    stamp = str(int(time.time()))
    r = client.post("/webhooks/m3ter", content=body, headers={
        SCHEME.timestamp_header: stamp, SCHEME.event_id_header: "ev-shape",
        SCHEME.signature_header: SCHEME.sign(SECRET, stamp, body)})
    assert r.status_code < 500


def test_a_signed_delivery_stamped_nan_is_rejected_as_stale() -> None:
    client, rec = _client()
    body = b"{}"
    r = client.post("/webhooks/m3ter", content=body, headers={
        SCHEME.timestamp_header: "nan", SCHEME.event_id_header: "ev-nan",
        SCHEME.signature_header: SCHEME.sign(SECRET, "nan", body)})
    assert r.status_code == 401 and rec.events == []
