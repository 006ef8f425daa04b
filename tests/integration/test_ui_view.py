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
from collections import Counter
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
    """Airflow's API app built the way the api-server builds it: plugins from ``<repo>/plugins`` (empty) and
    the installed packages' ``airflow.plugins`` entry points, which bring m3sh's."""
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
    headers = {"Authorization": f"Bearer {_token(client)}"}
    r = client.get("/api/v2/plugins", headers=headers)
    assert r.status_code == 200, r.text
    (plugin,) = [p for p in r.json()["plugins"] if p["name"] == "m3sh"]
    assert "m3sh.plugin:M3shPlugin" in plugin["source"], plugin["source"]  # loaded through the entry point
    # registered once: a second "m3sh" (a copy in plugins/) would be skipped and listed as an import error
    errors = client.get("/api/v2/plugins/importErrors", headers=headers)
    assert errors.status_code == 200 and errors.json()["total_entries"] == 0, errors.text
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


# ------------------------------------------------------------------------------ the audit trail at 2,500 firings
# 2,500 firings, one every 29 minutes (~50 days): whatever the date, the trail spans at least two
# months and one of them holds over 1,000 (so a month takes several listings); the benchmark
# (benchmarks.audit_trail) measures 5,000 and 100,000.
N_FIRINGS = 2_500
AUDIT_RULES = ("prepaid_depleted", "usage_cap", "renewal_due", "heavy_starter")
# Writing thousands of firings into the emulated S3 takes minutes on a loaded 2-core machine; whichever of
# these tests runs first pays for it (pytest-timeout counts fixture set-up in the test's time).
AUDIT_TIMEOUT = pytest.mark.timeout(1800)
WEBHOOK_ERROR = ("notify: HTTPError: 500 for url https://hooks.slack.com/services/T0/B0/SECRETPATH?token=abc, "
                 'detail "quoted", two\nlines')


def _audit_spec(n: int, now: dt.datetime) -> dict[str, Any]:
    """Firing ``n`` (0 = newest): one every 29 minutes, newest first.

    ``via`` says how it is written: ``legacy`` - an entry as m3sh wrote it before the index existed,
    indexed by the backfill; ``retried`` - a legacy ``failed`` entry that the real ledger then
    retries to ``done`` (its outcome changes after it was indexed); ``api`` - written only through
    the real ledger (claim, action update, finish)."""
    at = now - dt.timedelta(minutes=29 * n + 3, microseconds=n)
    outcome = ("done",) * 12 + ("failed",) * 3 + ("claimed",) * 2 + ("abandoned",) * 2 + ("done",)
    via = "retried" if n % 20 == 19 else "api" if n % 50 == 7 else "legacy"
    final = outcome[n % 20] if via != "api" else ("done" if n % 100 == 7 else "failed")
    code, rule = f"acct-{n % 37:02d}.example", AUDIT_RULES[(n // 20) % 4]  # every rule gets every outcome
    key = f"{rule}|id-{code}|balance:bal-{n}|credits={1000 + n}"
    return {"n": n, "at": at, "rule": rule, "code": code, "account_id": f"id-{code}", "key": key,
            "final": final, "via": via}


def _legacy_entry(spec: dict[str, Any]) -> dict[str, Any]:
    """An entry exactly as the ledger wrote it before the audit index (no ``rev``, no index key)."""
    at = spec["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    status = "failed" if spec["via"] == "retried" else spec["final"]
    failed = status in ("failed", "abandoned")
    history = [{"at": at, "status": "failed" if failed else status, "run": "scheduled__old",
                **({"error": WEBHOOK_ERROR} if failed else {})}]
    if status == "abandoned":
        history.append({"at": at, "status": "abandoned"})
    return {"key": spec["key"], "rule": spec["rule"], "kind": "balance_below", "account_id": spec["account_id"],
            "account_code": spec["code"], "entity": "balance", "entity_id": f"bal-{spec['n']}",
            "event_time": at, "detail": {}, "status": status, "claimed_by": "scheduled__old", "claimed_at": at,
            "first_seen": at, "attempts": 3 if status == "abandoned" else 1,
            "actions": [{"index": 0, "kind": "notify", "status": "failed" if failed else "done",
                         "detail": WEBHOOK_ERROR if failed else "sent to ops_slack (slack_webhook)"}],
            "history": history, **({} if status == "claimed" else {"finished_at": at})}


@pytest.fixture(scope="module")
def big_ledger(state: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``N_FIRINGS`` firings under a storage prefix of their own, in the sandbox's S3, written in bulk (not
    through thousands of DAG runs): older entries indexed by ``m3sh triggers backfill-index`` (the upgrade
    path), then retries and new firings through the real :class:`Ledger`."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from m3sh.automation.ledger import Ledger, ledger_object_key
    from m3sh.automation.rules import Firing
    from m3sh.storage import Storage

    cfg = state["config"]
    prefix = f"m3sh-audit-{state['tag']}/"
    storage = Storage(cfg.storage.conn_id, cfg.storage.bucket, prefix)
    now = dt.datetime.now(dt.UTC)
    specs = [_audit_spec(n, now) for n in range(N_FIRINGS)]

    def put_legacy(spec: dict[str, Any]) -> None:
        storage.put_json(ledger_object_key(prefix, spec["key"]), _legacy_entry(spec))

    def through_ledger(spec: dict[str, Any]) -> None:
        ledger = Ledger(storage, clock=lambda: spec["at"])
        firing = Firing(spec["rule"], "balance_below", spec["account_id"], "balance", f"bal-{spec['n']}",
                        f"credits={1000 + spec['n']}", spec["at"].isoformat(), spec["code"])
        claim = ledger.claim(firing, "scheduled__new")
        assert claim.acquired, claim.reason
        failed = spec["final"] == "failed"
        claim.entry["actions"] = [{"index": 0, "kind": "notify", "status": "failed" if failed else "done",
                                   "detail": WEBHOOK_ERROR if failed else "sent"}]
        ledger.update(claim)
        ledger.finish(claim, spec["final"], WEBHOOK_ERROR if failed else None)

    with ThreadPoolExecutor(10) as pool:  # botocore's default connection pool holds 10
        list(pool.map(put_legacy, [s for s in specs if s["via"] != "api"]))
    cfg_path = tmp_path_factory.mktemp("audit") / "m3sh.yaml"
    cfg_path.write_text(Path(os.environ["M3SH_CONFIG"]).read_text().replace(
        f"prefix: m3sh-ui-{state['tag']}/", f"prefix: {prefix}"))
    done = subprocess.run([str(Path(sys.executable).parent / "m3sh"), "triggers", "backfill-index", "--config",
                           str(cfg_path)], capture_output=True, text=True, env=os.environ.copy(), timeout=1800,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    legacy = sum(s["via"] != "api" for s in specs)
    assert json.loads(done.stdout) == {"ledger_entries": legacy, "indexed": legacy, "repaired": 0, "unreadable": 0,
                                       "superseded_removed": 0, "remaining": 0}
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(through_ledger, [s for s in specs if s["via"] != "legacy"]))
    return {"specs": specs, "prefix": prefix, "cfg_path": cfg_path}


@pytest.fixture(scope="module")
def audit(client: TestClient, big_ledger: dict[str, Any], state: dict[str, Any]) -> Any:
    """GET on the view (mounted like the plugin mounts it) reading the big ledger, as admin."""
    from m3sh.config import load_config
    from m3sh.web import ui

    big_cfg = load_config(big_ledger["cfg_path"])
    app = ui.create_app(config=lambda: big_cfg)
    root = TestClient(app, root_path="/m3sh/ui")
    headers = {"Authorization": f"Bearer {_token(client)}"}

    def get(path: str, **params: Any) -> Any:
        return root.get(path, params=params, headers=headers)

    return get


def _expected(specs: list[dict[str, Any]], **flt: str) -> list[dict[str, Any]]:
    def keep(s: dict[str, Any]) -> bool:
        day = s["at"].date().isoformat()
        return ((not flt.get("rule") or s["rule"] == flt["rule"])
                and (not flt.get("account") or flt["account"].lower() in (s["code"], s["account_id"]))
                and (not flt.get("outcome") or s["final"] == flt["outcome"])
                and (not flt.get("from") or day >= flt["from"]) and (not flt.get("to") or day <= flt["to"]))
    return [s for s in specs if keep(s)]  # specs are newest first


@AUDIT_TIMEOUT
def test_audit_page_one_is_the_50_newest_of_all_with_exact_totals(audit: Any, big_ledger: dict[str, Any]) -> None:
    specs = big_ledger["specs"]
    r = audit("/api/audit")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["total"] == N_FIRINGS and doc["pages"] == N_FIRINGS // 50 and doc["page_size"] == 50
    assert doc["by_status"] == dict(Counter(s["final"] for s in specs))
    assert [e["key"] for e in doc["entries"]] == [s["key"] for s in specs[:50]]
    assert [e["status"] for e in doc["entries"]] == [s["final"] for s in specs[:50]]
    assert set(doc["rules"]) == set(AUDIT_RULES)
    # bounded cost: the months, one listing per 1,000 keys in each month, one read per row shown
    per_month = Counter(s["at"].strftime("%Y-%m") for s in specs)
    months = len(per_month)
    assert months >= 2 and max(per_month.values()) > 1000  # the premise: several months, a month of >1 listing
    bound = 1 + (N_FIRINGS // 1000 + months) + 50
    assert doc["s3_requests"] <= bound, (doc["s3_requests"], bound)
    print(f"\naudit page view at {N_FIRINGS} firings over {months} months: {doc['s3_requests']} S3 requests")
    # a retried firing shows its latest outcome and what the retry did
    retried = next(e for e in doc["entries"] if e["key"] in {s["key"] for s in specs if s["via"] == "retried"})
    assert retried["status"] == "done" and retried["attempts"] == 2 and retried["actions"] == ["notify: done (sent)"]


@AUDIT_TIMEOUT
def test_audit_filters_each_select_exactly_their_firings(audit: Any, big_ledger: dict[str, Any]) -> None:
    specs = big_ledger["specs"]
    mid = specs[N_FIRINGS // 2]["at"].date()
    cases = [{"rule": "usage_cap"}, {"account": "ACCT-05.example"}, {"outcome": "failed"},
             {"from": (mid - dt.timedelta(days=6)).isoformat(), "to": mid.isoformat()},
             {"rule": "renewal_due", "account": "id-acct-11.example", "outcome": "done", "to": mid.isoformat()}]
    for flt in cases:
        want = _expected(specs, **flt)
        facets = Counter(s["final"] for s in _expected(specs, **{k: v for k, v in flt.items() if k != "outcome"}))
        doc = audit("/api/audit", **flt).json()
        assert doc["total"] == len(want) > 0, flt
        assert doc["by_status"] == dict(facets), flt
        assert [e["key"] for e in doc["entries"]] == [s["key"] for s in want[:50]], flt
        assert doc["filter"] == flt


@AUDIT_TIMEOUT
def test_audit_paging_reaches_the_oldest_firing(audit: Any, big_ledger: dict[str, Any]) -> None:
    specs = big_ledger["specs"]
    last = audit("/api/audit", page=N_FIRINGS // 50).json()
    assert [e["key"] for e in last["entries"]] == [s["key"] for s in specs[-50:]]
    assert last["first"] == N_FIRINGS - 49 and last["last"] == N_FIRINGS
    past = audit("/api/audit", page=N_FIRINGS // 50 + 1).json()
    assert past["entries"] == [] and past["total"] == N_FIRINGS and "past the last page" in past["notes"][0]
    # walking a filtered set page by page covers it exactly: no gap, no repeat
    flt = {"rule": "heavy_starter", "outcome": "failed", "from": specs[N_FIRINGS * 4 // 5]["at"].date().isoformat()}
    want = [s["key"] for s in _expected(specs, **flt)]
    assert 50 < len(want) <= 150  # several pages, and the date bound cuts some off
    seen: list[str] = []
    page = 1
    while True:
        doc = audit("/api/audit", page=page, **flt).json()
        seen += [e["key"] for e in doc["entries"]]
        if page >= doc["pages"]:
            break
        page += 1
    assert seen == want


@AUDIT_TIMEOUT
def test_audit_page_html_shows_totals_rows_and_shareable_links(audit: Any, big_ledger: dict[str, Any]) -> None:
    import re
    from html import unescape

    specs = big_ledger["specs"]
    r = audit("/audit", rule="usage_cap", outcome="done", page=2)
    assert r.status_code == 200, r.text[:500]
    page = r.text
    want = _expected(specs, rule="usage_cap", outcome="done")
    assert f'<b id="audit-total">{len(want):,}</b>' in page and page.count('id="audit-total"') == 1
    assert page.count("<tr>") == 1 + 50  # header + one page
    assert want[50]["code"] in page and "SECRETPATH" not in page and "token=abc" not in page
    links = {m.group(1): unescape(m.group(2)) for m in re.finditer(r'<a rel="(prev|next)" href="([^"]+)"', page)}
    assert links == {"prev": "/m3sh/ui/audit?rule=usage_cap&outcome=done&page=1",
                     "next": "/m3sh/ui/audit?rule=usage_cap&outcome=done&page=3"}
    assert '<option value="usage_cap" selected>' in page and '<option value="done" selected>' in page
    assert 'href="/m3sh/ui/audit.csv?rule=usage_cap&amp;outcome=done"' in page


@AUDIT_TIMEOUT
def test_audit_csv_exports_every_firing_newest_first(audit: Any, big_ledger: dict[str, Any]) -> None:
    specs = big_ledger["specs"]
    r = audit("/audit.csv")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="m3sh-audit-trail-')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == N_FIRINGS and r.text.count("\r\n") == N_FIRINGS + 1
    assert [(x["firing_key"], x["outcome"], x["rule"], x["account_code"]) for x in rows] == [
        (s["key"], s["final"], s["rule"], s["code"]) for s in specs]
    # with details, for a filtered set: actions and errors, quoted, scrubbed
    flt = {"rule": "prepaid_depleted", "outcome": "failed"}
    r = audit("/audit.csv", details=1, **flt)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["firing_key"] for x in rows] == [s["key"] for s in _expected(specs, **flt)]
    assert "SECRETPATH" not in r.text and "token=abc" not in r.text
    assert all(x["error"].endswith('detail "quoted", two\nlines') and "hooks.slack.com/***" in x["error"]
               for x in rows)


@AUDIT_TIMEOUT
def test_audit_bad_parameters_are_400s_naming_the_parameter(audit: Any) -> None:
    r = audit("/api/audit", **{"from": "2026-13-01"})
    assert r.status_code == 400 and r.json()["param"] == "from" and "'2026-13-01'" in r.json()["detail"]
    r = audit("/audit", outcome="maybe")
    assert r.status_code == 400 and "outcome: expected one of claimed, done, failed, abandoned" in r.text
    assert audit("/audit.csv", page="0").status_code == 400


def test_audit_endpoints_need_an_airflow_login(client: TestClient) -> None:
    for path in ("/m3sh/ui/api/audit", "/m3sh/ui/audit.csv"):
        assert client.get(path).status_code == 401
    r = client.get("/m3sh/ui/audit", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].startswith("/auth/login?next=")
