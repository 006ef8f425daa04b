"""No connection secret ever shows up in what m3sh produces: logs, task logs, XComs, rendered
template fields, alerts, reports or exception messages.

A representative set of hooks (including their connection tests and failed logins) and whole DAG
runs (usage ingest with bad rows and a bad file, invoice sync with an outage, plan triggers,
reconcile, a filtered CRM sync) run at DEBUG log level. Everything they leave behind is then
scanned for every secret of the sandbox connections, the derived HTTP Basic credentials, and the
m3ter bearer token obtained at runtime. Zero hits are required.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import USAGE_PREFIX, Chaos, UsageFile, make_usage_file
from tests.integration.dags.test_invoice_sync_dag import seed_bills

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]
_SECRET_EXTRA_KEYS = ("secret", "token", "password")
_NOT_SECRET_EXTRA_KEYS = {"token_id"}  # an identifier sent in clear in every OAuth header


def connection_secrets(connections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every secret value of the sandbox connections (label -> value), plus Basic-auth encodings."""
    out: dict[str, str] = {}
    for conn_id, conn in connections.items():
        if conn.get("password"):
            out[f"{conn_id}.password"] = str(conn["password"])
            if conn.get("login"):
                basic = base64.b64encode(f"{conn['login']}:{conn['password']}".encode()).decode()
                out[f"{conn_id}.basic_auth"] = basic
        for key, value in (conn.get("extra") or {}).items():
            if (isinstance(value, str) and value and key not in _NOT_SECRET_EXTRA_KEYS
                    and any(s in key.lower() for s in _SECRET_EXTRA_KEYS)):
                out[f"{conn_id}.extra.{key}"] = value
    return out


class _Everything(logging.Handler):
    """Keeps every record of every logger, formatted with its traceback, whatever the level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string must not hide the raw parts
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.texts.append(f"{record.name}: {text}")


@pytest.fixture
def debug_capture() -> Iterator[_Everything]:
    # `import airflow` configures logging and replaces the root handlers: done first, so the handler
    # below survives when this test is the first in its process to import Airflow.
    import airflow  # noqa: F401

    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # loggers that set their own level would otherwise hide their DEBUG records
    quiet = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
             if isinstance(lg, logging.Logger) and lg.level > logging.DEBUG}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


def _db_artifacts(run_ids: set[str]) -> list[str]:
    """XCom values and rendered template fields of the given runs, from the metadata DB."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: list[str] = []
    with create_session() as session:
        for x in session.scalars(select(XComModel).where(XComModel.run_id.in_(run_ids))):
            out.append(f"xcom {x.dag_id}.{x.task_id}.{x.key}: {json.dumps(x.value, default=str)}")
        rtif = RenderedTaskInstanceFields
        for r in session.scalars(select(rtif).where(rtif.run_id.in_(run_ids))):
            out.append(f"rendered {r.dag_id}.{r.task_id}: {json.dumps(r.rendered_fields, default=str)}"
                       f" {json.dumps(r.k8s_pod_yaml, default=str)}")
    return out


def _files(root: Path) -> Iterator[tuple[str, str]]:
    for p in root.rglob("*"):
        if p.is_file() and p.suffix not in (".db", ".db-journal", ".db-wal", ".db-shm"):
            data = p.read_bytes()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
            yield str(p), data.decode("utf-8", "replace")


def _s3_texts(storage: Any) -> Iterator[tuple[str, str]]:
    for obj in storage.list_keys(storage.prefix):
        body = storage.client.get_object(Bucket=storage.bucket, Key=obj["Key"])["Body"].read()
        yield obj["Key"], body.decode("utf-8", "replace")


def _hooks_at_debug(chaos: Chaos, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hook once: a read, the connection test (the UI's Test button), and a failed login.

    Returns the texts of the exceptions the failed logins raised, so they are scanned too.
    """
    from m3sh.hooks.hubspot import HubSpotHook
    from m3sh.hooks.m3ter import TOKEN_CACHE, M3terHook
    from m3sh.hooks.netsuite import NetSuiteHook
    from m3sh.hooks.salesforce import SalesforceSync
    from m3sh.storage import Storage

    m3 = M3terHook()
    assert list(m3.list_accounts(page_size=5))
    assert m3.test_connection()[0]
    assert next(iter(HubSpotHook().iter_objects("companies", ["name"])), None) is not None
    assert HubSpotHook().test_connection()[0]
    assert list(NetSuiteHook("netsuite_default").suiteql("SELECT id FROM customer", max_rows=5)) is not None
    assert NetSuiteHook("netsuite_eu").test_connection()[0]
    assert list(SalesforceSync().query("SELECT Id, Name FROM Account LIMIT 3"))
    assert list(Storage("aws_default", "m3sh-usage").list_keys("")) is not None

    errors: list[str] = []
    conns = chaos.sb.endpoints.connections()

    def with_wrong_secret(conn_id: str, **changes: Any) -> None:
        conn = conns[conn_id]
        extra = {**conn.get("extra", {}), **changes.pop("extra", {})}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**conn, **changes, "extra": extra}))

    # A wrong secret is still a secret (a typo of the real one): the error must not echo it.
    with_wrong_secret("m3ter_default", password="wrong-m3ter-secret-XYZ1")
    TOKEN_CACHE.clear()
    ok, msg = M3terHook().test_connection()
    errors.append(msg)
    assert not ok
    with_wrong_secret("hubspot_default", password="wrong-hubspot-token-XYZ2")
    ok, msg = HubSpotHook().test_connection()
    errors.append(msg)
    with_wrong_secret("netsuite_default", extra={"token_secret": "wrong-ns-token-secret-XYZ3", "max_attempts": 1})
    ok, msg = NetSuiteHook("netsuite_default").test_connection()
    errors.append(msg)
    assert not ok
    with_wrong_secret("salesforce_default", password="wrong-sf-password-XYZ4")
    try:
        list(SalesforceSync().query("SELECT Id FROM Account LIMIT 1"))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    for conn_id in ("m3ter_default", "hubspot_default", "netsuite_default", "salesforce_default"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conns[conn_id]))
    TOKEN_CACHE.clear()
    return errors


def _dag_runs_at_debug(chaos: Chaos) -> list[Any]:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag
    from m3sh.dagkit.invoice_sync import build_invoice_sync_dag
    from m3sh.dagkit.plan_triggers import build_plan_triggers_dag
    from m3sh.dagkit.reconcile import build_reconcile_dag
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    runs = []
    accounts = sorted(a["code"] for a in chaos.m3ter().list_accounts())
    chaos.put_usage(make_usage_file(USAGE_PREFIX + "s.csv.gz", accounts[:5], 300, seed=9, bad_every=20))
    chaos.put_usage(UsageFile(USAGE_PREFIX + "bad.csv.gz", b"\x1f\x8b\x08junk", 0, {}))
    runs.append(build_usage_ingest_dag().test(run_conf={"scan_all": True}))  # fails on the bad file: an alert
    seed_bills(chaos.sb, n_usd=2, n_eur=1)
    chaos.sb.admin("netsuite", "account_fault", "POST", account="eu", status=503)
    runs.append(build_invoice_sync_dag().test(run_conf={"full_scan": True}))  # EU fails: alerts, error text
    chaos.sb.admin("netsuite", "account_fault", "POST", account="eu")
    runs.append(build_invoice_sync_dag().test(run_conf={"full_scan": True}))
    runs.append(build_reconcile_dag().test(run_conf={}))
    runs.append(build_plan_triggers_dag().test(run_conf={}))
    from m3sh.sandbox.seed import demo_company

    domains = [c.domain for c in demo_company().customers[:3]]
    runs.append(build_crm_sync_dag().test(run_conf={"full_resync": True, "accounts": domains}))
    assert [r.state for r in runs] == ["failed", "failed", "success", "success", "success", "success"]
    return runs


def test_no_connection_secret_in_logs_xcoms_rendered_fields_alerts_or_errors(
        chaos: Chaos, debug_capture: _Everything, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    from m3sh.hooks.m3ter import TOKEN_CACHE, M3terHook

    error_texts = _hooks_at_debug(chaos, monkeypatch)
    runs = _dag_runs_at_debug(chaos)

    hook = M3terHook()
    hook.get_conn()
    bearer = TOKEN_CACHE.get(hook.settings).access_token
    secrets = connection_secrets(chaos.sb.endpoints.connections())
    secrets["m3ter bearer token (runtime)"] = bearer
    wrong = ["wrong-m3ter-secret-XYZ1", "wrong-hubspot-token-XYZ2", "wrong-ns-token-secret-XYZ3",
             "wrong-sf-password-XYZ4"]
    secrets.update({f"wrong {i}": s for i, s in enumerate(wrong)})
    assert len(secrets) >= 15 and all(len(s) >= 8 for s in secrets.values())

    out, err = capfd.readouterr()
    corpus: list[tuple[str, str]] = [("stdout", out), ("stderr", err)]
    corpus += [(f"log record {i}", t) for i, t in enumerate(debug_capture.texts)]
    corpus += [(f"exception {i}", t) for i, t in enumerate(error_texts)]
    corpus += [("metadata db", t) for t in _db_artifacts({r.run_id for r in runs})]
    corpus += list(_files(airflow_db / "logs"))
    platform = chaos.sb.state("platform")
    # what the alert said (the sink also records the webhook path it was posted to, which *is* the
    # Slack credential and naturally known to Slack; that is not something m3sh produced)
    corpus += [("slack alert", json.dumps(m["body"])) for m in platform["slack"]]
    corpus += [("email alert", json.dumps(m, default=str)) for m in platform["emails"]]
    corpus += list(_s3_texts(chaos.storage()))  # reports, manifests, dead letters, ledgers, summaries
    assert len(debug_capture.texts) > 1000, "DEBUG logging was not captured"
    assert platform["slack"], "the failing runs should have alerted"

    hits = [(label, where, text[max(0, text.find(value) - 80): text.find(value) + 40])
            for where, text in corpus for label, value in secrets.items() if value in text]
    report = "\n".join(f"{label} in {where}: ...{ctx}..." for label, where, ctx in hits[:20])
    assert not hits, "secrets leaked:\n" + report


def test_the_scanner_finds_a_planted_secret(chaos: Chaos, debug_capture: _Everything) -> None:
    """The scan above can fail: a secret logged by mistake is found (guards against a blind capture)."""
    secrets = connection_secrets(chaos.sb.endpoints.connections())
    planted = secrets["netsuite_eu.extra.token_secret"]
    logging.getLogger(f"m3sh.test.{uuid.uuid4().hex[:4]}").debug("oops %s", planted)
    assert any(planted in t for t in debug_capture.texts)
    assert {"m3ter_default.password", "salesforce_default.extra.security_token", "netsuite_default.password",
            "netsuite_default.extra.token_secret", "hubspot_default.password", "aws_default.password",
            "m3ter_webhook.password", "m3sh_slack.password", "m3ter_default.basic_auth"} <= set(secrets)
