"""Several CRM sources of one type (issue #18 item 2): who owns an external mapping, what the config
accepts, and the migration of mappings written by CRM type to the source's name.

The DAG-level proof (two sandbox orgs through m3sh_crm_sync, invoice sync and reconcile) is
tests/integration/dags/test_crm_several_orgs.py; these pin the rules without a sandbox.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from m3sh.config import ConfigError, config_warnings, parse_config
from m3sh.crm.links import SourceLinks
from m3sh.crm.sync import CrmToM3ter, M3terIndex
from m3sh.mapping.crm import dedupe
from m3sh.models.records import CrmAccount

ONE_ORG = """
crm:
  match_keys: [domain]
  sources:
    - {name: sf_main, type: salesforce, conn_id: sf_main_conn}
    - {name: hubspot, type: hubspot, conn_id: hs}
"""
TWO_ORGS = ONE_ORG + "    - {name: sf_acme, type: salesforce, conn_id: sf_acme_conn}\n"


def _mapping(system: str, ext_id: str, m3ter_id: str = "acc-1", table: str = "Account") -> dict[str, Any]:
    return {"id": f"map-{system}-{ext_id}", "version": 1, "externalSystem": system, "externalTable": table,
            "externalId": ext_id, "m3terEntity": "Account", "m3terId": m3ter_id}


def test_type_keyed_mappings_belong_to_the_one_source_of_that_type() -> None:
    links = SourceLinks(parse_config(ONE_ORG).crm.sources)
    owner = links.source_of(_mapping("salesforce", "001A"))
    assert owner is not None and owner.name == "sf_main"
    assert links.source_of(_mapping("sf_main", "001A")).name == "sf_main"  # type: ignore[union-attr]
    assert links.source_of(_mapping("netsuite_us", "7")) is None
    assert links.source_of(_mapping("sf_retired", "001B")) is None  # a removed source's links are history


def test_several_sources_of_a_type_make_type_keyed_mappings_ambiguous_unless_one_claims_them(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="m3sh.crm.links"):
        links = SourceLinks(parse_config(TWO_ORGS).crm.sources)
        assert links.source_of(_mapping("salesforce", "001A")) is None
        assert links.source_of(_mapping("salesforce", "001B")) is None
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "ambiguous between the salesforce sources ['sf_acme', 'sf_main']" in warned[0]
    claimed = TWO_ORGS.replace("conn_id: sf_main_conn}", "conn_id: sf_main_conn, legacy_mappings: true}")
    owner = SourceLinks(parse_config(claimed).crm.sources).source_of(_mapping("salesforce", "001A"))
    assert owner is not None and owner.name == "sf_main"
    # a source named after its type owns them by name; the survivor of its retirement opts out
    named = TWO_ORGS.replace("name: sf_main", "name: salesforce")
    assert SourceLinks(parse_config(named).crm.sources).source_of(
        _mapping("salesforce", "001A")).name == "salesforce"  # type: ignore[union-attr]
    survivor = ONE_ORG.replace("conn_id: sf_main_conn}", "conn_id: sf_main_conn, legacy_mappings: false}")
    assert SourceLinks(parse_config(survivor).crm.sources).source_of(_mapping("salesforce", "001A")) is None


def test_config_names_bad_prefixes_claims_and_destinations_with_their_lines() -> None:
    rule = """
triggers:
  - name: r
    when: {balance_below: {amount: 1}}
    actions:
      - update_crm_fields: {sf_acme.Status__c: low, salesforce.Tier__c: x, hubspot.tier: y, Plain__c: z}
      - update_crm_fields: {sf_acmee.Status__c: low}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(TWO_ORGS + rule)
    msg = str(err.value)
    line = next(i for i, ln in enumerate((TWO_ORGS + rule).splitlines(), 1) if "sf_acmee" in ln)
    assert (f"m3sh.yaml:{line} triggers[0].actions[1].update_crm_fields.sf_acmee.Status__c: 'sf_acmee.Status__c' "
            "targets CRM 'sf_acmee'; a prefix names a CRM source ['hubspot', 'sf_acme', 'sf_main'] or a CRM type "
            "(every source of it) ['hubspot', 'salesforce']") in msg
    assert "actions[0]" not in msg  # source names, types and unprefixed keys are all fine
    both = TWO_ORGS.replace("sf_main_conn}", "sf_main_conn, legacy_mappings: true}").replace(
        "sf_acme_conn}", "sf_acme_conn, legacy_mappings: true}")
    assert "only one salesforce source may own the mappings keyed 'salesforce'" in _error(both)
    assert "is a hubspot source named after another CRM type" in _error(
        ONE_ORG.replace("name: hubspot, type: hubspot", "name: salesforce, type: hubspot"))
    dest = "invoicing:\n  destinations:\n    - {name: sf, type: salesforce}\n"
    msg = _error(TWO_ORGS + dest)
    assert "invoicing.destinations[0].crm_source: several salesforce sources are configured" in msg
    assert "unknown salesforce source 'hubspot'" in _error(TWO_ORGS + dest.replace("}", ", crm_source: hubspot}"))
    parse_config(TWO_ORGS + dest.replace("}", ", crm_source: sf_acme}"))
    parse_config(ONE_ORG + dest)  # one org: the destination writes to it, as before
    # several sources of a type and nobody owns the type-keyed mappings: validate says so, at the line
    warned = config_warnings(parse_config(TWO_ORGS), TWO_ORGS)
    line = next(i for i, ln in enumerate(TWO_ORGS.splitlines(), 1) if "sf_main" in ln)
    assert [w for w in warned if "legacy_mappings" in w] == [
        f"m3sh.yaml:{line} crm.sources[0].legacy_mappings: several salesforce sources and none owns the m3ter "
        "mappings keyed 'salesforce' (written by m3sh before mappings named the source): set legacy_mappings: true "
        "on the source that wrote them, or false on each if there are none"]
    assert not [w for w in config_warnings(parse_config(ONE_ORG), ONE_ORG) if "legacy_mappings" in w]


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return str(err.value)


class FakeM3ter:
    """The m3ter calls CrmToM3ter makes for accounts that exist and links, recorded."""

    def __init__(self, mappings: list[dict[str, Any]]) -> None:
        self.accounts = [{"id": "acc-1", "code": "acme", "version": 1, "name": "Acme", "emailAddress": "ap@acme.com",
                          "currency": "USD", "customFields": {"crm_domain": "acme.com", "crm_source": "sf_main"}}]
        self.mappings = {m["id"]: m for m in mappings}
        self.writes: list[tuple[str, Any]] = []

    def list_accounts(self) -> list[dict[str, Any]]:
        return self.accounts

    def list_plans(self) -> list[dict[str, Any]]:
        return []

    def list_contracts(self) -> list[dict[str, Any]]:
        return []

    def list_account_plans(self, include_all: bool = False) -> list[dict[str, Any]]:
        return []

    def list_external_mappings(self) -> list[dict[str, Any]]:
        return list(self.mappings.values())

    def upsert_account(self, code: str, desired: dict[str, Any], existing: dict[str, Any] | None = None,
                       **kw: Any) -> Any:
        from m3sh.hooks.m3ter import UpsertResult

        return UpsertResult(existing or {}, "unchanged")

    def create_external_mapping(self, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", body))
        created = {**body, "id": f"map-{len(self.mappings)}", "version": 1}
        self.mappings[created["id"]] = created
        return created

    def update_external_mapping(self, mapping_id: str, changes: dict[str, Any],
                                current: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("update", {"id": mapping_id, **changes}))
        self.mappings[mapping_id] = {**current, **changes, "version": current["version"] + 1}
        return self.mappings[mapping_id]


def _record(source: str, crm_id: str, domain: str = "acme.com") -> CrmAccount:
    return CrmAccount(source=source, source_type="salesforce", crm_id=crm_id, crm_object="Account",
                      name="Acme", domain=domain)


def _sync(text: str, m3ter: FakeM3ter, records: list[CrmAccount]) -> Any:
    cfg = parse_config(text)
    index = M3terIndex(m3ter, now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), sources=cfg.crm.sources)  # type: ignore[arg-type]
    customers = dedupe(records, list(cfg.crm.match_keys), cfg.m3ter.account_code_from,
                       existing_codes=index.match_codes())
    return CrmToM3ter(m3ter, cfg, index, threads=1).apply(customers)  # type: ignore[arg-type]


def test_a_type_keyed_mapping_is_rewritten_under_the_source_name_once() -> None:
    m3ter = FakeM3ter([_mapping("salesforce", "001A")])
    report = _sync(ONE_ORG, m3ter, [_record("sf_main", "001A")])
    assert m3ter.writes == [("update", {"id": "map-salesforce-001A", "externalSystem": "sf_main"})]
    change = next(c for c in report.changes if c.entity == "external_mapping")
    assert change.action == "update" and "migrated from the mapping keyed by CRM type" in (change.detail or "")
    assert [m["externalSystem"] for m in m3ter.mappings.values()] == ["sf_main"]
    m3ter.writes.clear()
    _sync(ONE_ORG, m3ter, [_record("sf_main", "001A")])
    assert m3ter.writes == []  # idempotent: the next sync finds it under the name


def test_with_two_orgs_an_unclaimed_type_keyed_mapping_is_left_and_the_record_linked_by_name() -> None:
    """Ambiguous: the old mapping is not attributed (nor rewritten); each org's record is linked under
    its source name, and the two orgs' records of one customer (same domain) share one account."""
    m3ter = FakeM3ter([_mapping("salesforce", "001A")])
    report = _sync(TWO_ORGS, m3ter, [_record("sf_main", "001A"), _record("sf_acme", "001Z")])
    assert sorted((w[0], w[1]["externalSystem"], w[1]["externalId"], w[1]["m3terId"]) for w in m3ter.writes) == [
        ("create", "sf_acme", "001Z", "acc-1"), ("create", "sf_main", "001A", "acc-1")]
    assert report.customers == 1
    # claimed by config: rewritten instead, and the other org's record gets a new mapping
    m3ter = FakeM3ter([_mapping("salesforce", "001A")])
    claimed = TWO_ORGS.replace("sf_main_conn}", "sf_main_conn, legacy_mappings: true}")
    _sync(claimed, m3ter, [_record("sf_main", "001A"), _record("sf_acme", "001Z")])
    assert sorted((w[0], w[1].get("externalSystem")) for w in m3ter.writes) == [
        ("create", "sf_acme"), ("update", "sf_main")]


def test_a_linked_record_keeps_its_account_when_its_match_keys_change() -> None:
    """The mapping (by name, or type-keyed and attributed) is a match key: a record whose domain
    changed in the CRM still lands on the account it is linked to, not on a new one."""
    m3ter = FakeM3ter([_mapping("salesforce", "001A")])
    cfg = parse_config(ONE_ORG)
    index = M3terIndex(m3ter, sources=cfg.crm.sources)  # type: ignore[arg-type]
    customers = dedupe([_record("sf_main", "001A", domain="acme-renamed.com")], ["domain"], "domain_name",
                       existing_codes=index.match_codes())
    assert [c.code for c in customers] == ["acme"]


def test_update_crm_fields_targets_sources_by_name_or_type_each_on_its_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from m3sh.automation.actions import ActionRunner

    cfg = parse_config(TWO_ORGS.replace("sf_main_conn}", "sf_main_conn, legacy_mappings: true}"))
    maps = [_mapping("salesforce", "001MAIN"), _mapping("sf_acme", "001ACME"),
            _mapping("hubspot", "77", table="companies"), _mapping("sf_retired", "001GONE")]
    hook = SimpleNamespace(list_external_mappings_of=lambda entity, account_id: maps)
    runner = ActionRunner(cfg, hook)  # type: ignore[arg-type]
    writes: list[tuple[str, str, str, dict[str, str]]] = []

    def write(system: str, conn_id: str, record_id: str, wanted: dict[str, str]) -> dict[str, str]:
        writes.append((system, conn_id, record_id, wanted))
        return wanted

    monkeypatch.setattr(runner, "_crm_write", write)
    firing = SimpleNamespace(account_id="acc-1", account_code="acme")
    out = runner.update_crm_fields(firing, {"sf_acme.Status__c": "low", "salesforce.Tier__c": "x",  # type: ignore[arg-type]
                                            "hubspot.tier": "y"})
    assert out.status == "done"
    assert sorted(writes) == [
        ("hubspot", "hs", "77", {"tier": "y"}),
        ("salesforce", "sf_acme_conn", "001ACME", {"Status__c": "low", "Tier__c": "x"}),
        ("salesforce", "sf_main_conn", "001MAIN", {"Tier__c": "x"}),
    ]  # the retired source's record is not written


class ContractM3ter(FakeM3ter):
    """m3ter holding the contract synced from Salesforce Contract 800A, its end date since renewed in m3ter."""

    def __init__(self) -> None:
        super().__init__([_mapping("sf_main", "001A")])
        self.contract = {"id": "con-1", "code": "acme-c20260101", "version": 1, "accountId": "acc-1",
                         "name": "Acme 2026-01-01", "startDate": "2026-01-01", "endDate": "2027-12-31",
                         "customFields": {"crm_contract": "sf_main:800A"}}
        self.contract_writes: list[tuple[str, dict[str, Any]]] = []

    def list_contracts(self) -> list[dict[str, Any]]:
        return [self.contract]

    def upsert_contract(self, code: str, desired: dict[str, Any], existing: dict[str, Any] | None = None,
                        **kw: Any) -> Any:
        from m3sh.hooks.m3ter import UpsertResult

        self.contract_writes.append((code, {k: desired[k] for k in ("startDate", "endDate")}))
        return UpsertResult(existing or desired, "unchanged")


@pytest.mark.parametrize(("ownership", "crm_start", "want"), [
    ("", "2026-01-01", ("acme-c20260101", {"startDate": "2026-01-01", "endDate": "2026-12-31"})),
    ("  ownership: {contract_fields: {end_date: m3ter_wins}}\n", "2026-01-01",
     ("acme-c20260101", {"startDate": "2026-01-01", "endDate": "2027-12-31"})),
    # m3ter owns the start date too: a CRM start date moved is the same contract (found by its link)
    ("  ownership: {contract_fields: {start_date: m3ter_wins, end_date: m3ter_wins}}\n", "2026-02-01",
     ("acme-c20260101", {"startDate": "2026-01-01", "endDate": "2027-12-31"})),
])
def test_the_crm_to_m3ter_step_keeps_contract_dates_m3ter_owns(ownership: str, crm_start: str,
                                                               want: tuple[str, dict[str, str]]) -> None:
    m3ter = ContractM3ter()
    record = CrmAccount(source="sf_main", source_type="salesforce", crm_id="001A", crm_object="Account",
                        name="Acme", domain="acme.com", contract_id="800A",
                        contract_start=dt.date.fromisoformat(crm_start), contract_end=dt.date(2026, 12, 31))
    _sync(ONE_ORG.replace("  match_keys: [domain]\n", "  match_keys: [domain]\n" + ownership), m3ter, [record])
    assert m3ter.contract_writes == [want]
