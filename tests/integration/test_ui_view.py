"""The m3sh page in the Airflow UI, served by the real Airflow API app with the real m3sh plugin.

State comes from really running ``m3sh_usage_ingest`` and ``m3sh_crm_sync`` (dry run) with
``dag.test()`` against the sandbox; the trigger audit trail is written through the real
:class:`~m3sh.automation.ledger.Ledger`, and invoice / reconciliation summaries in the shape their
DAGs write. Authentication is Airflow's own: a JWT from ``POST /auth/token`` (bearer or the UI's
``_token`` cookie); without one the page answers 401 (API) or redirects to the login (browser).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "ui-test-Pa55"


def _usage_csv(accounts: list[str]) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["event_id", "account", "meter", "ts", "quantity", "region"])
    for i in range(8):
        ts = (now - dt.timedelta(hours=1 + i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        w.writerow([f"ui-{i}", accounts[i % len(accounts)], "api_calls", ts, 10 + i, "us-east-1"])
    w.writerow(["ui-bad-1", accounts[0], "api_calls", now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lots", "us-east-1"])
    w.writerow(["ui-bad-2", "ghost-account", "api_calls", now.strftime("%Y-%m-%dT%H:%M:%SZ"), 3, "us-east-1"])
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def state(sandbox: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the DAGs once for the module; everything lands under a storage prefix of its own."""
    from m3sh.config import DEFAULT_CONFIG_PATH, get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.sandbox.aws_seed import s3_client

    sandbox.reset("demo")
    mp = pytest.MonkeyPatch()
    tag = uuid.uuid4().hex[:8]
    usage_prefix = f"usage/uitest-{tag}/"
    cfg_text = (DEFAULT_CONFIG_PATH.read_text().replace("prefix: usage/\n", f"prefix: {usage_prefix}\n")
                .replace("prefix: m3sh/\n", f"prefix: m3sh-ui-{tag}/\n"))
    cfg_text += "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 1}\n"
    path = tmp_path_factory.mktemp("ui") / "m3sh.yaml"
    path.write_text(cfg_text)
    mp.setenv("M3SH_CONFIG", str(path))
    try:
        accounts = sorted(a["code"] for a in M3terHook().list_accounts())[:4]
        s3_client(sandbox.url("moto")).put_object(Bucket="m3sh-usage", Key=usage_prefix + "day1.csv",
                                                  Body=_usage_csv(accounts))
        from m3sh.dagkit.crm_sync import build_crm_sync_dag
        from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

        usage_run = build_usage_ingest_dag().test(run_conf={"feeds": ["platform_files"], "scan_all": True})
        crm_run = build_crm_sync_dag().test(run_conf={"dry_run": True, "full_resync": True})
        assert usage_run.state == "success" and crm_run.state == "success"
        yield {"config": get_config(), "crm_run_id": crm_run.run_id, "usage_run_id": usage_run.run_id,
               "accounts": accounts, "tag": tag}
    finally:
        mp.undo()


def _seed_other_sections(cfg: Any) -> None:
    """Trigger ledger through the real Ledger; invoice + reconcile summaries as their DAGs write them."""
    from m3sh.automation.ledger import Ledger
    from m3sh.automation.rules import Firing
    from m3sh.storage import Storage

    storage = Storage.from_config(cfg.storage)
    ledger = Ledger(storage)
    firing = Firing(rule="prepaid_depleted", kind="balance_below", account_id="acc-77", entity="balance",
                    entity_id="bal-77", crossing="100", event_time="2026-11-01T10:00:00Z", account_code="acme.example")
    claim = ledger.claim(firing, "scheduled__2026-11-01T10:00:00+00:00")
    claim.entry["actions"] = [{"index": 0, "kind": "switch_plan", "status": "done", "detail": "growth_usd"},
                              {"index": 1, "kind": "notify", "status": "done", "detail": None}]
    ledger.update(claim)
    ledger.finish(claim, "done")
    summary = {"run_id": "scheduled__2026-11-01T00:00:00+00:00", "dry_run": False, "bills": 12,
               "by_destination": {"netsuite_us": {"delivered": 7, "action_needed": 1},
                                  "netsuite_eu": {"delivered": 3, "failed": 1}, "archive": {"delivered": 11}},
               "exported": 9, "accounts_stamped": 8,
               "action_needed": [{"bill_id": "bill-9", "account_code": "umbrella.example", "destination": "netsuite_us",
                                  "message": "Period is closed: reopen period Oct 2026 or post to the next one"}],
               "failed": [{"bill_id": "bill-4", "account_code": "initech.example", "destination": "netsuite_eu",
                           "error": "NetSuiteError 400: Invalid subsidiary reference key 7"}],
               "set_aside": []}
    storage.put_json(storage.key("reports", "m3sh_invoice_sync", "latest.json"), summary)
    storage.put_json(storage.key("reports", "reconcile", "latest.json"), {
        "run_id": "scheduled__2026-11-01T02:00:00+00:00", "generated_at": "2026-11-01T02:01:00+00:00",
        "period": "2026-10-01 to 2026-11-01", "clean": False, "findings": 1, "by_check": {"missing": 1},
        "checked": {"m3ter bills in scope": 12}, "html_key": "x/report.html", "csv_key": "x/report.csv",
        "drift": [{"check": "missing", "destination": "netsuite_eu", "record": "bill-4", "expected": "1200.00",
                   "actual": None, "detail": "no invoice with external id m3ter-bill-4"}]})


@pytest.fixture(scope="module")
def airflow_app(state: dict[str, Any]) -> Iterator[Any]:
    """Airflow's API app built the way the api-server builds it, loading ``<repo>/plugins``."""
    from airflow import plugins_manager, settings

    from m3sh.web import ui

    _seed_other_sections(state["config"])
    mp = pytest.MonkeyPatch()
    passwords = Path(settings.AIRFLOW_HOME) / "ui-test-passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD, "viewer": PASSWORD}))
    mp.setenv("AIRFLOW__CORE__AUTH_MANAGER",
              "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "ui-test-jwt-secret-0123456789abcdef")
    mp.setattr(settings, "PLUGINS_FOLDER", str(REPO / "plugins"))
    caches = [plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins, plugins_manager._get_ui_plugins]
    for c in caches:
        c.cache_clear()
    try:
        from airflow.api_fastapi.app import create_app

        app = create_app(apps="core")
        # The view reads runs through the public REST API over HTTP; here that is this same app.
        mp.setattr(ui, "_default_client", lambda: TestClient(app))
        yield app
    finally:
        for c in caches:
            c.cache_clear()
        mp.undo()


@pytest.fixture(scope="module")
def client(airflow_app: Any) -> TestClient:
    return TestClient(airflow_app)


def _token(client: TestClient, user: str = "admin") -> str:
    r = client.post("/auth/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return str(r.json()["access_token"])


def test_plugin_mounts_the_view_before_the_receiver_and_adds_a_nav_entry(client: TestClient) -> None:
    r = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {_token(client)}"})
    assert r.status_code == 200, r.text
    plugin = next(p for p in r.json()["plugins"] if p["name"] == "m3sh")
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/m3sh/ui", "/m3sh"]
    (view,) = plugin["external_views"]
    assert view["url_route"] == "m3sh" and view["href"] == "/m3sh/ui/" and view["destination"] == "nav"
    # the receiver mounted at /m3sh still answers next to the view
    assert client.get("/m3sh/webhooks/health").json()["status"] == "ok"


def test_without_a_login_the_api_answers_401_and_a_browser_is_sent_to_the_login_page(client: TestClient) -> None:
    assert client.get("/m3sh/ui/api/status").status_code == 401
    assert client.get("/m3sh/ui/", headers={"Accept": "application/json"}).status_code == 401
    r = client.get("/m3sh/ui/", headers={"Accept": "text/html,application/xhtml+xml"}, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"].startswith("/auth/login?next=") and "m3sh%2Fui" in r.headers["location"]
    forged = client.get("/m3sh/ui/api/status", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code in (401, 403)
    assert "finance" not in forged.text and "salesforce" not in forged.text


def test_status_reflects_what_the_dags_really_did(client: TestClient, state: dict[str, Any]) -> None:
    r = client.get("/m3sh/ui/api/status", headers={"Authorization": f"Bearer {_token(client)}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    for name in ("crm", "usage", "invoices", "triggers", "reconcile", "runs"):
        assert doc[name]["error"] is None, (name, doc[name]["error"])

    crm = doc["crm"]["data"]
    per_source = {s["source"]: s for s in crm["per_source"]}
    assert set(per_source) == {"salesforce", "hubspot"}
    for s in per_source.values():
        assert s["last_run"] == state["crm_run_id"] and s["last_dry_run"] is True and s["last_records"] > 0
        assert s["last_live_at"] is None  # only a dry run happened
    (run,) = crm["runs"]
    assert run["records"] == sum(s["last_records"] for s in per_source.values()) and run["m3ter_writes"] == 0

    usage = doc["usage"]["data"]
    feed = next(f for f in usage["feeds"] if f["feed"] == "platform_files")
    assert (feed["files"], feed["rows_read"], feed["accepted"], feed["rejected"]) == (1, 10, 8, 2)
    assert usage["dead_letter_files"] == 1
    (dead,) = usage["recent_dead_letters"]
    assert dead["rows"] == 2 and dead["file"].endswith("day1.csv")

    dests = {d["destination"]: d for d in doc["invoices"]["data"]["destinations"]}
    assert dests["netsuite_eu"]["last_run"] == {"delivered": 3, "failed": 1}
    assert doc["invoices"]["data"]["latest"]["action_needed"][0]["bill_id"] == "bill-9"

    (entry,) = doc["triggers"]["data"]["entries"]
    assert entry["rule"] == "prepaid_depleted" and entry["status"] == "done"
    assert entry["actions"] == ["switch_plan: done (growth_usd)", "notify: done"]
    assert doc["reconcile"]["data"]["findings"] == 1

    runs = {(r["dag_id"], r["dag_run_id"]): r for r in doc["runs"]["data"]}
    assert runs[("m3sh_crm_sync", state["crm_run_id"])]["state"] == "success"
    assert runs[("m3sh_crm_sync", state["crm_run_id"])]["conf"]["dry_run"] is True
    assert runs[("m3sh_usage_ingest", state["usage_run_id"])]["state"] == "success"


def test_page_renders_every_section_for_a_viewer_logged_in_with_the_ui_cookie(
        client: TestClient, state: dict[str, Any]) -> None:
    fresh = TestClient(client.app)
    fresh.cookies.set("_token", _token(client, "viewer"))
    r = fresh.get("/m3sh/ui/", headers={"Accept": "text/html"})
    assert r.status_code == 200, r.text[:500]
    page = r.text
    assert "signed in as viewer" in page
    for text in ("Recent runs", "CRM sync", "Usage ingest", "Invoices", "Plan &amp; contract automation",
                 "Reconciliation", state["crm_run_id"], "dry run", "platform_files", "day1.csv",
                 "Action needed", "Period is closed", "NetSuiteError 400", "prepaid_depleted", "acme.example",
                 "1 difference(s)", "netsuite_eu"):
        assert text in page, text
    assert "Could not read" not in page
    # links into the Airflow UI leave the iframe
    from urllib.parse import quote

    assert f'target="_top" href="/dags/m3sh_crm_sync/runs/{quote(state["crm_run_id"], safe="")}"' in page


def test_an_unreadable_source_shows_its_error_and_the_rest_of_the_page(client: TestClient,
                                                                      state: dict[str, Any]) -> None:
    from m3sh.storage import Storage
    from m3sh.web import ui

    app = ui.create_app(storage=lambda cfg: Storage(cfg.storage.conn_id, "no-such-bucket", cfg.storage.prefix),
                        airflow_client=lambda: TestClient(client.app))
    r = TestClient(app).get("/", headers={"Authorization": f"Bearer {_token(client)}", "Accept": "text/html"})
    assert r.status_code == 200
    assert r.text.count("Could not read this section") == 5  # every S3 section, each in its own box
    assert "NoSuchBucket" in r.text
    assert state["crm_run_id"] in r.text  # the runs still come from Airflow
