"""``m3sh preflight`` without any system: what it derives from a config, and that its output never
carries a secret, even when every system is unreachable or an error message quotes a credential."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest

from m3sh.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from m3sh.preflight import (
    INVOICE_FIELD_KINDS,
    CheckResult,
    needed_buckets,
    needed_hubspot,
    needed_meters,
    needed_plans,
    needed_salesforce,
)
from m3sh.sandbox import credentials as cred
from m3sh.sandbox.runner import SandboxEndpoints

DEMO = DEFAULT_CONFIG_PATH.read_text()
SECRETS = [cred.M3TER_API_SECRET, cred.HUBSPOT_TOKEN, cred.SALESFORCE_PASSWORD, cred.SALESFORCE_SECURITY_TOKEN,
           cred.AWS_SECRET_KEY, cred.WEBHOOK_SECRET, *(c.consumer_secret for c in cred.NETSUITE.values()),
           *(c.token_secret for c in cred.NETSUITE.values())]


def test_checks_follow_the_demo_config() -> None:
    cfg = load_config()
    hubspot = needed_hubspot(cfg)["hubspot_default"]
    assert set(hubspot.scopes.items) == {"crm.objects.companies.read", "crm.objects.deals.read",
                                         "crm.objects.line_items.read", "crm.objects.companies.write"}
    assert hubspot.scopes.why("crm.objects.line_items.read") == "crm.sources[hubspot]"
    assert "description" in hubspot.company_properties.items  # a rule's update_crm_fields hubspot.description
    sf = needed_salesforce(cfg)["salesforce_default"]
    assert set(sf) == {"Account", "Contract", "Opportunity", "OpportunityLineItem", "Invoice__c"}
    assert [n.kind for n in sf["Account"]["M3ter_Last_Invoice_Date__c"]] == ["date"]
    assert [n.kind for n in sf["Account"]["M3ter_Account_Id__c"]] == ["text"]  # write-back
    assert sf["Invoice__c"]["M3ter_Bill_Id__c"][0].external_id
    assert set(needed_plans(cfg).items) == set(cfg.crm.plan_map.values())
    assert {code: sorted(m.measures | m.dimensions) for code, m in needed_meters(cfg).items()} == {
        "api_calls": ["quantity", "region"], "storage_gb": ["quantity", "region"]}
    assert {(b.conn_id, b.bucket) for b in needed_buckets(cfg)} == {("aws_default", "m3sh-archive"),
                                                                     ("aws_default", "m3sh-usage")}


def test_a_hubspot_destination_needs_deal_scopes_and_disabled_parts_need_nothing() -> None:
    text = DEMO.replace("    - name: archive\n      type: s3\n",
                        "    - name: hs\n      type: hubspot\n    - name: archive\n      type: s3\n")
    text = text.replace("      conn_id: hubspot_default\n      priority: 20\n",
                        "      conn_id: hubspot_default\n      enabled: false\n      priority: 20\n")
    text = text.replace("  - name: renewal_due\n", "  - name: renewal_due\n    enabled: false\n")
    need = needed_hubspot(parse_config(text))["hubspot_default"]
    assert set(need.scopes.items) == {"crm.objects.deals.read", "crm.objects.deals.write"}
    assert set(need.deal_properties.items) == {"m3ter_last_invoice"}
    assert not need.company_properties


def test_fields_the_m3ter_to_crm_step_updates_must_be_updateable() -> None:
    """describe's ``updateable`` decides: a field m3ter owns (or fills) on the Account, and for an
    m3ter-owned contract end date Contract.ContractTerm (Salesforce computes EndDate from it)."""
    from m3sh.preflight import _salesforce_field_problems

    text = DEMO.replace("      po_number: m3ter_wins\n",
                        "      po_number: m3ter_wins\n      name: m3ter_wins\n"
                        "    contract_fields:\n      end_date: m3ter_wins\n")
    cfg = parse_config(text)
    sf = needed_salesforce(cfg)["salesforce_default"]
    assert [n.update for n in sf["Account"]["Name"]] == [False, True]
    assert [(n.kind, n.update) for n in sf["Contract"]["ContractTerm"]] == [("number", True)]
    assert "EndDate" not in {n for n, needs in sf["Contract"].items() if any(x.writes for x in needs)}
    hubspot = needed_hubspot(cfg)["hubspot_default"]
    assert set(hubspot.deal_dates.items) == {"contract_end"}
    assert "crm.objects.deals.write" in hubspot.scopes.items

    def described(**updateable: bool) -> dict[str, Any]:
        return {"fields": [{"name": n, "type": t, "createable": True, "updateable": updateable.get(n, True)}
                           for n, t in (("Name", "string"), ("ContractTerm", "int"), ("StartDate", "date"),
                                        ("EndDate", "date"), ("Id", "id"), ("AccountId", "reference"),
                                        ("Status", "picklist"), ("Billing_Email__c", "email"),
                                        ("Website", "url"), ("CurrencyIsoCode", "picklist"),
                                        ("BillingCountry", "string"), ("Owner_Name__c", "string"),
                                        ("M3ter_Account_Id__c", "string"), ("M3ter_Plan__c", "string"))]}

    assert _salesforce_field_problems(described(EndDate=False), sf["Contract"]) == []
    [problem] = _salesforce_field_problems(described(ContractTerm=False), sf["Contract"])
    assert problem.startswith("ContractTerm is not updateable for the integration user")
    assert "crm.sources[salesforce].contract_fields.end_date: m3ter_wins" in problem
    [problem] = _salesforce_field_problems(described(Name=False), {"Name": sf["Account"]["Name"]})
    assert "crm.sources[salesforce].account_fields.name: m3ter_wins, so m3ter -> CRM updates Account.Name" in problem


def test_invoice_field_table_matches_what_the_salesforce_destination_writes() -> None:
    from m3sh.invoicing.models import BillLine, CrmInfo, EnrichedBill
    from m3sh.invoicing.salesforce import invoice_fields

    bill = EnrichedBill(bill_id="b1", account_id="a1", account_code="acme", account_name="Acme", currency="USD",
                        bill_date="2026-06-30", due_date="2026-07-30", total=10.0, subsidiary="us",
                        lines=[BillLine(line_type="USAGE", amount=10.0)],
                        crm=CrmInfo(source="salesforce", account_id="001x", opportunity_id="006x"))
    assert set(invoice_fields(bill)) == set(INVOICE_FIELD_KINDS)


def report_lines(out: str) -> list[str]:
    """The report's lines. (In a test process Airflow's logger may still write to the captured
    stdout it found first; the real command sends it to stderr, see the CLI test.)"""
    return [line for line in out.splitlines()
            if line[:2] in ("✅ ", "❌ ") or re.fullmatch(r"\d+ passed, \d+ failed.*", line)]


def _offline_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's connections (with their secrets) on ports nobody serves, retries off."""
    conns = SandboxEndpoints(port_base=1).connections()
    conns["m3ter_default"]["extra"]["max_retries"] = 0
    for conn_id in ("netsuite_default", "netsuite_eu"):
        conns[conn_id]["extra"]["max_attempts"] = 1
    conns["aws_default"]["extra"]["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1}
    for conn_id, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection attempt fails (and is recorded), as on a machine without network."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise ConnectionRefusedError(111, "Connection refused (no network in this test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_without_network_every_system_check_fails_with_a_fix_and_no_secret(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from m3sh.cli import main
    from m3sh.hooks.m3ter import TOKEN_CACHE

    _offline_connections(monkeypatch)
    attempts = _no_network(monkeypatch)
    TOKEN_CACHE.clear()
    rc = main(["preflight", "--config", str(DEFAULT_CONFIG_PATH)])
    captured = capsys.readouterr()
    lines = report_lines(captured.out)
    assert rc == 1 and attempts, "preflight must have tried (and failed) to reach the systems"
    checks, summary = lines[:-1], lines[-1]
    ok = [line for line in checks if line.startswith("✅")]
    # only the look-ups of connections need no network
    assert all(line.startswith("✅ connection ") for line in ok), ok
    failed = [line for line in checks if line.startswith("❌")]
    assert len(ok) + len(failed) == len(checks) and summary == f"{len(ok)} passed, {len(failed)} failed"
    assert all(" -> fix: " in line for line in failed)
    firsts = {"m3ter credentials (m3ter_default)", "HubSpot token (hubspot_default)",
              "Salesforce login (salesforce_default)", "NetSuite netsuite_us (netsuite_default) login",
              "NetSuite netsuite_eu (netsuite_eu) login", "AWS credentials (aws_default)"}
    named = {line[2:].split(":", 1)[0] for line in failed}
    assert firsts <= named
    for line in failed:  # everything behind a failed login says which check to fix first
        name = line[2:].split(":", 1)[0]
        assert name in firsts or ": not checked: needs '" in line, line
    everything = captured.out + captured.err + caplog.text
    for secret in SECRETS:
        assert secret not in everything


def test_a_secret_quoted_by_an_error_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks keep credentials out of their messages; should one ever slip in, the report still hides it."""
    import m3sh.preflight as pf
    from m3sh.exceptions import M3terApiError

    _offline_connections(monkeypatch)
    _no_network(monkeypatch)

    def leaky_login(hook: Any) -> str:
        raise M3terApiError(f"auth failed for secret {cred.M3TER_API_SECRET} and {cred.HUBSPOT_TOKEN}", status=403)

    monkeypatch.setattr(pf, "_m3ter_login", leaky_login)
    cfg = load_config()
    preflight = pf.Preflight(cfg)
    preflight.connection("hubspot_default")  # its token is known to the redactor once read
    results = preflight.run()
    line = next(r.line() for r in results if r.name == "m3ter credentials (m3ter_default)")
    assert line.startswith("❌ m3ter credentials (m3ter_default): the API key was refused: m3ter: auth failed for "
                           "secret *** and *** (HTTP 403) -> fix: ")
    rendered = pf.render_text(results) + pf.render_json(results)
    assert cred.M3TER_API_SECRET not in rendered and cred.HUBSPOT_TOKEN not in rendered


def test_a_missing_connection_is_a_failed_check_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import m3sh.preflight as pf

    _offline_connections(monkeypatch)
    _no_network(monkeypatch)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT")
    results = {r.name: r for r in pf.Preflight(load_config()).run()}
    smtp = results["connection smtp_default"]
    assert not smtp.ok and "AIRFLOW_CONN_SMTP_DEFAULT" in smtp.fix


def test_result_line_and_json_shape() -> None:
    from m3sh.preflight import render_json, render_text

    results = [CheckResult("a", True, "fine"), CheckResult("b", False, "broken", "mend it")]
    assert render_text(results).splitlines() == ["✅ a: fine", "❌ b: broken -> fix: mend it", "1 passed, 1 failed"]
    assert json.loads(render_json(results)) == {
        "ok": False, "passed": 1, "failed": 1,
        "checks": [{"name": "a", "ok": True, "detail": "fine", "fix": ""},
                   {"name": "b", "ok": False, "detail": "broken", "fix": "mend it"}]}
