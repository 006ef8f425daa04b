"""The m3ter webhook receiver: signature, staleness and replay checks, the real asset-event
recorder, and the whole event path (m3ter emulator notification -> signed delivery -> receiver ->
asset event; then the plan-triggers pass acts once).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from m3sh.web.receiver import (
    ASSET_URI,
    MemoryReplayGuard,
    ReceiverSettings,
    WebhookScheme,
    create_app,
)

SECRET = "whsec-test-0123456789"


class ListRecorder:
    def __init__(self, fail: int = 0) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("metadata DB unavailable")
        self.events.append((uri, extra))


def _client(recorder: ListRecorder, scheme: WebhookScheme | None = None) -> TestClient:
    settings = ReceiverSettings(SECRET, scheme or WebhookScheme())
    return TestClient(create_app(settings=lambda: settings, recorder=recorder, replay=MemoryReplayGuard()))


def _delivery(event_id: str = "ev-1", secret: str = SECRET, age_s: float = 0, scheme: WebhookScheme | None = None,
              ) -> tuple[bytes, dict[str, str]]:
    from m3sh.sandbox.m3ter.notify import sign  # the emulator's (assumed) M3TER_SIGNED_REQUEST scheme

    s = scheme or WebhookScheme()
    body = json.dumps({"id": event_id, "eventName": "billing.balanceamount.updated",  # OpenAPI EventResponse
                       "eventTime": "2025-01-02T03:04:05Z",
                       "m3terEvent": {"eventData": {"newDto": {"id": "bal-1", "accountId": "acc-1"}}}}).encode()
    stamp = str(int(time.time() - age_s))
    return body, {s.timestamp_header: stamp, s.event_id_header: event_id, s.signature_header: sign(secret, stamp, body),
                  "Content-Type": "application/json"}


def test_event_id_header_must_match_the_signed_body() -> None:
    """The header is not signed: a captured delivery re-sent under a new event id is refused."""
    rec = ListRecorder()
    body, headers = _delivery("ev-7")
    client = _client(rec)
    assert client.post("/webhooks/m3ter", content=body, headers=headers).status_code == 202
    replay = {**headers, WebhookScheme().event_id_header: "ev-8"}
    r = client.post("/webhooks/m3ter", content=body, headers=replay)
    assert r.status_code == 401 and "does not match" in r.json()["detail"]
    assert len(rec.events) == 1


def test_signed_delivery_is_accepted_and_records_one_asset_event() -> None:
    rec = ListRecorder()
    body, headers = _delivery()
    r = _client(rec).post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["event_id"] == "ev-1"
    assert rec.events == [(ASSET_URI, {"event_id": "ev-1", "event_name": "billing.balanceamount.updated",
                                       "event_time": "2025-01-02T03:04:05Z", "account_id": "acc-1",
                                       "entity_id": "bal-1"})]


@pytest.mark.parametrize("case", ["forged", "stale", "tampered", "missing", "future"])
def test_forged_stale_tampered_or_unsigned_deliveries_get_401_and_record_nothing(case: str) -> None:
    rec = ListRecorder()
    body, headers = _delivery(secret="not-the-secret" if case == "forged" else SECRET,
                              age_s={"stale": 301, "future": -400}.get(case, 0))
    if case == "tampered":
        body = body.replace(b"acc-1", b"acc-2")
    if case == "missing":
        headers.pop("X-m3ter-Signature")
    r = _client(rec).post("/webhooks/m3ter", content=body, headers=headers)
    assert r.status_code == 401
    assert "secret" not in r.text.lower() or case == "forged"
    assert rec.events == []


def test_replayed_delivery_is_rejected_and_recorded_once() -> None:
    rec = ListRecorder()
    client = _client(rec)
    body, headers = _delivery("ev-replay")
    assert client.post("/webhooks/m3ter", content=body, headers=headers).status_code == 202
    again = client.post("/webhooks/m3ter", content=body, headers=headers)
    assert again.status_code == 401 and "replay" in again.json()["detail"]
    assert len(rec.events) == 1


def test_recorder_failure_answers_503_and_lets_m3ters_retry_through() -> None:
    rec = ListRecorder(fail=1)
    client = _client(rec)
    body, headers = _delivery("ev-retry")
    assert client.post("/webhooks/m3ter", content=body, headers=headers).status_code == 503
    assert client.post("/webhooks/m3ter", content=body, headers=headers).status_code == 202
    assert len(rec.events) == 1


def test_header_names_and_algorithm_are_configurable() -> None:
    import hashlib
    import hmac

    scheme = WebhookScheme.from_extra({"signature_header": "X-Sig", "timestamp_header": "X-Ts",
                                       "event_id_header": "X-Id", "algorithm": "sha512", "tolerance_s": 60})
    rec = ListRecorder()
    body, _ = _delivery("e9")
    stamp = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha512).hexdigest()
    r = _client(rec, scheme).post("/webhooks/m3ter", content=body, headers={"X-Sig": sig, "X-Ts": stamp, "X-Id": "e9"})
    assert r.status_code == 202 and len(rec.events) == 1
    with pytest.raises(ValueError, match="algorithm"):
        WebhookScheme.from_extra({"algorithm": "md5"})


@pytest.mark.sandbox
def test_replay_protection_survives_a_restart_through_s3(sandbox: Any) -> None:
    from m3sh.storage import Storage
    from m3sh.web.receiver import S3ReplayGuard

    storage = Storage("aws_default", "m3sh-archive", f"t-{uuid.uuid4().hex[:8]}/")
    settings = ReceiverSettings(SECRET)
    body, headers = _delivery("ev-durable")
    first, second = ListRecorder(), ListRecorder()
    app1 = TestClient(create_app(settings=lambda: settings, recorder=first, replay=S3ReplayGuard(storage)))
    assert app1.post("/webhooks/m3ter", content=body, headers=headers).status_code == 202
    # a new process (fresh memory) still refuses the same event
    app2 = TestClient(create_app(settings=lambda: settings, recorder=second, replay=S3ReplayGuard(storage)))
    assert app2.post("/webhooks/m3ter", content=body, headers=headers).status_code == 401
    assert len(first.events) == 1 and second.events == []


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.sandbox
@pytest.mark.dagrun
def test_m3ter_notification_reaches_the_receiver_records_a_real_asset_event_and_the_pass_acts_once(
        fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from m3sh.automation.ledger import Ledger
    from m3sh.automation.notifications import sync_notifications
    from m3sh.config import DEFAULT_CONFIG_PATH, load_config
    from m3sh.dagkit.plan_triggers import build_plan_triggers_dag
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.web.receiver import InProcessAssetRecorder

    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    cfg_path = tmp_path / "m3sh.yaml"
    cfg_path.write_text(DEFAULT_CONFIG_PATH.read_text().replace("  prefix: m3sh/\n", f"  prefix: {prefix}\n", 1)
                        + "\ndag_defaults: {retries: 0, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    monkeypatch.setenv("M3SH_CONFIG", str(cfg_path))
    monkeypatch.setenv("AIRFLOW_CONN_M3TER_WEBHOOK", json.dumps({"conn_type": "generic", "login": "m3sh",
                                                                  "password": SECRET}))
    # register the DAG and its asset in the metadata DB (a dry run changes nothing)
    assert build_plan_triggers_dag().test(run_conf={"dry_run": True}).state == "success"
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:  # new DAGs start paused; a paused DAG is not queued by asset events
        session.execute(update(DagModel).where(DagModel.dag_id == "m3sh_plan_triggers").values(is_paused=False))

    class Recorder(InProcessAssetRecorder):
        """The real recorder, also remembering what it recorded for the assertions."""

        seen: list[dict[str, Any]] = []

        def record(self, uri: str, extra: dict[str, Any]) -> None:
            super().record(uri, extra)
            self.seen.append(extra)

    port = _free_port(19750)
    server = uvicorn.Server(uvicorn.Config(create_app(recorder=Recorder()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/webhooks/m3ter"
        first = sync_notifications(str(cfg_path), webhook_url=url)
        assert first["webhook"]["action"] == "created"
        assert [(n["code"], n["action"]) for n in first["notifications"]] == [("m3sh_prepaid_depleted", "created")]
        again = sync_notifications(str(cfg_path), webhook_url=url)
        assert again["webhook"]["action"] == "unchanged"
        assert [n["action"] for n in again["notifications"]] == ["unchanged"]

        hook = M3terHook()
        horizon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60 * 86400))
        balance = sorted(hook.list_balances(end_date_start=horizon), key=lambda b: b["code"])[0]
        code = hook.get_account(balance["accountId"])["code"]
        fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=code, amount=balance["amount"] - 20)
        deadline = time.time() + 20
        while not Recorder.seen and time.time() < deadline:
            time.sleep(0.1)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert [e["account_id"] for e in Recorder.seen] == [balance["accountId"]]
    deliveries = fresh_sandbox.state("m3ter")["webhook_deliveries"]
    assert [d["status"] for d in deliveries] == [202]

    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from sqlalchemy import select

    with create_session() as session:
        asset_id = session.scalar(select(AssetModel.id).where(AssetModel.uri == ASSET_URI))
        events = session.scalars(select(AssetEvent).where(AssetEvent.asset_id == asset_id)).all()
        assert any(e.extra.get("event_id") == Recorder.seen[0]["event_id"] for e in events)
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)
                                 .where(AssetDagRunQueue.asset_id == asset_id)).all()
        assert "m3sh_plan_triggers" in queued  # the scheduler turns this into a DAG run

    run = build_plan_triggers_dag().test(run_conf={"rules": ["prepaid_depleted"]})
    assert run.state == "success"
    ledger = Ledger(Storage.from_config(load_config(cfg_path).storage))
    assert [(e["account_code"], e["status"]) for e in ledger.entries(rule="prepaid_depleted")] == [(code, "done")]
