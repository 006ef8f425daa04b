"""m3sh.yaml validation: the shipped demo config is valid, and every kind of mistake is reported
with the YAML path and line a person needs to fix it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m3sh.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from m3sh.config_reference import render_reference
from m3sh.exceptions import ConfigError

DEMO = DEFAULT_CONFIG_PATH.read_text()


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source="m3sh.yaml")
    return str(exc.value)


def test_demo_config_is_valid() -> None:
    cfg = load_config()
    assert {s.name for s in cfg.crm.sources} == {"salesforce", "hubspot"}
    assert [d.name for d in cfg.invoicing.destinations] == ["netsuite_us", "netsuite_eu", "salesforce", "archive"]
    assert cfg.crm.ownership.owner_of("email") == "fill_missing"
    assert cfg.crm.ownership.owner_of("name") == "crm_wins"


def test_unknown_key_names_path_and_line() -> None:
    lines = DEMO.splitlines()
    idx = next(i for i, line in enumerate(lines) if "conn_id: netsuite_eu" in line)
    text = DEMO.replace("conn_id: netsuite_eu", "conn_idd: netsuite_eu")
    msg = _error(text)
    assert f"m3sh.yaml:{idx + 1} invoicing.destinations[1].conn_idd: unknown key" in msg
    assert "invoicing.destinations[1].conn_id: Field required" in msg


def test_wrong_type_and_bad_literal() -> None:
    msg = _error(DEMO.replace("account_code_from: domain_name", "account_code_from: guess"))
    assert "m3ter.account_code_from" in msg and "domain_name" in msg
    msg = _error(DEMO.replace("files_per_task: 10", "files_per_task: lots"))
    assert "usage.files_per_task" in msg and "valid integer" in msg


def test_cross_references_are_checked_with_lines() -> None:
    text = DEMO.replace("to: [netsuite_eu, archive]", "to: [netsuite_xx, archive]")
    msg = _error(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "netsuite_xx" in ln)
    assert f"m3sh.yaml:{line} invoicing.routes[1].to[0]: unknown destination 'netsuite_xx'" in msg
    msg = _error(DEMO.replace("- notify: ops_slack", "- notify: pager"))
    assert "triggers[0].actions[3].notify: unknown notifier 'pager'" in msg
    msg = _error(DEMO.replace("- switch_plan: growth_usd\n      - reset", "- switch_plan: platinum\n      - reset"))
    assert "triggers[0].actions[0].switch_plan: plan 'platinum'" in msg


def test_trigger_actions_name_only_declared_plans_custom_fields_and_crms() -> None:
    """A typo in a rule's plan, custom field or CRM prefix fails validation, at its line."""
    text = DEMO.replace("{lifecycle: converted_from_prepaid}", "{lifecyle: converted_from_prepaid}")
    msg = _error(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "lifecyle" in ln)
    assert (f"m3sh.yaml:{line} triggers[0].actions[2].set_custom_fields.lifecyle: custom field 'lifecyle' on the "
            "account is not declared in m3ter.custom_fields.account") in msg
    # declared for accounts only: the same field on the account plan is a different declaration
    on_plan = DEMO.replace("accountplan: [lifecycle, renewal_status]", "accountplan: []").replace(
        "- set_custom_fields: {renewal_status: due}",
        "- set_custom_fields: {renewal_status: due}\n        custom_fields_on: accountplan")
    assert "custom field 'renewal_status' on the accountplan is not declared" in _error(on_plan)
    msg = _error(DEMO.replace("hubspot.description:", "hubspt.description:"))
    assert ("triggers[1].actions[1].update_crm_fields.hubspt.description: 'hubspt.description' targets CRM "
            "'hubspt'; a prefix names a CRM source ['hubspot', 'salesforce'] or a CRM type (every source of it) "
            "['hubspot', 'salesforce']") in msg
    # without a HubSpot source the rule stays valid (consolidating CRMs must not break the rules)
    head, rest = DEMO.split("    - name: hubspot\n", 1)
    parse_config(head + rest[rest.index("\nusage:"):])
    # a plan only the rules use (say a downgrade no CRM product maps to) is declared in m3ter.plans
    downgrade = DEMO.replace("- switch_plan: growth_usd\n      - reset", "- switch_plan: lite_usd\n      - reset")
    assert "plan 'lite_usd' is not declared; declare it in m3ter.plans" in _error(downgrade)
    parse_config(downgrade.replace("  account_code_from: domain_name\n",
                                   "  account_code_from: domain_name\n  plans: [lite_usd]\n", 1))


def test_a_config_without_declarations_still_loads_and_validate_warns(tmp_path: Path) -> None:
    """Configs written before m3ter.custom_fields / m3ter.plans existed keep loading (a config error
    fails every DAG's import); `m3sh config validate` names what it could not check."""
    block = DEMO[DEMO.index("  # Custom fields m3sh may write"):DEMO.index("\nstorage:")]
    legacy = DEMO.replace(block, "").replace("  default_plan: starter_usd\n", "")
    head, rest = legacy.split("  plan_map:\n", 1)
    legacy = head + rest[rest.index("  sources:"):]
    parse_config(legacy)
    path = tmp_path / "m3sh.yaml"
    path.write_text(legacy)
    out = subprocess.run([sys.executable, "-m", "m3sh.cli", "config", "validate", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("OK "), out.stderr
    line = next(i for i, ln in enumerate(legacy.splitlines(), 1) if "{lifecycle: converted_from_prepaid}" in ln)
    warnings = out.stderr.splitlines()
    assert (f"warning: {path}:{line} triggers[0].actions[2].set_custom_fields: custom field(s) ['lifecycle'] are "
            "unchecked: declare the fields m3sh writes in m3ter.custom_fields.account") in warnings
    assert sum("switch_plan: plan 'growth_usd' is unchecked: declare" in w for w in warnings) == 2
    assert len(warnings) == 4  # the two plan switches and the two custom-field actions of the demo rules
    clean = subprocess.run([sys.executable, "-m", "m3sh.cli", "config", "validate", str(DEFAULT_CONFIG_PATH)],
                           capture_output=True, text=True, check=False)
    assert clean.returncode == 0 and "warning" not in clean.stderr


def test_condition_needs_exactly_one_kind() -> None:
    msg = _error(DEMO.replace("when: {contract_ending_within_days: 30}",
                              "when: {contract_ending_within_days: 30, contract_ended: true}"))
    assert "triggers[1].when" in msg and "exactly one kind" in msg


def test_not_yaml_and_not_a_mapping() -> None:
    assert "not valid YAML" in _error("a: [1, 2")
    assert "top level must be a mapping" in _error("- 1\n- 2\n")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read m3sh config"):
        load_config(tmp_path / "nope.yaml")


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "m3sh.cli", "config", "validate", str(DEFAULT_CONFIG_PATH)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK ")
    broken = tmp_path / "m3sh.yaml"
    broken.write_text(DEMO.replace("bucket: m3sh-usage", "bucket: m3sh-usage\n      colour: blue"))
    bad = subprocess.run([sys.executable, "-m", "m3sh.cli", "config", "validate", str(broken)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert f"{broken}:" in bad.stderr and "usage.feeds[0].colour: unknown key" in bad.stderr


def test_reference_documents_every_section() -> None:
    ref = render_reference()
    for key in ("`crm.sources[]`", "`invoicing.routes[]`", "`triggers[].actions[]`", "`alerting.notifiers[]`",
                "| `write_back_field` |", "| `cutover_from` |"):
        assert key in ref


def test_committed_reference_matches_the_models() -> None:
    """docs/config-reference.md is generated; regenerate with `m3sh config reference > docs/config-reference.md`."""
    committed = (Path(__file__).resolve().parents[2] / "docs" / "config-reference.md").read_text()
    assert committed.strip() == render_reference().strip()


# ------------------------------------------------------------------- closed sets of field names
_ACCOUNT = "['country', 'currency', 'domain', 'email', 'name', 'owner', 'po_number']"
_CONTRACT = "['end_date', 'po_number', 'start_date']"
_INVOICE = "['amount', 'bill_id', 'currency', 'date', 'invoice', 'status']"
# (demo text, typo'd text, expected "location: message" of the problem); each typo'd key is unique
TYPOS = [
    ("      email: fill_missing", "      emial: fill_missing",
     f"crm.ownership.fields.emial: unknown canonical field 'emial'; known: {_ACCOUNT} (did you mean 'email'?)"),
    ("        email: Billing_Email__c", "        e_mail: Billing_Email__c",
     f"crm.sources[0].account_fields.e_mail: unknown canonical field 'e_mail'; known: {_ACCOUNT} "
     "(did you mean 'email'?)"),
    ("        end_date: contract_end", "        end: contract_end",
     f"crm.sources[1].contract_fields.end: unknown canonical contract field 'end'; known: {_CONTRACT}"),
    ("      type: salesforce\n      conn_id: salesforce_default\n    - name: archive",
     "      type: salesforce\n      conn_id: salesforce_default\n      opportunity_fields: {stauts: S__c, date: D__c}"
     "\n    - name: archive",
     f"invoicing.destinations[2].opportunity_fields.stauts: unknown latest-invoice value 'stauts'; known: {_INVOICE} "
     "(did you mean 'status'?)"),
]


def _typo_line(text: str, problem: str) -> int:
    """The 1-based line of the one key the problem names."""
    key = problem.split(":", maxsplit=1)[0].rsplit(".", 1)[1]
    lines = [i for i, ln in enumerate(text.splitlines(), 1) if f" {key}:" in ln or f"{{{key}:" in ln]
    assert len(lines) == 1, (key, lines)
    return lines[0]


@pytest.mark.parametrize(("good", "typo", "problem"), TYPOS, ids=["ownership", "account", "contract", "invoice"])
def test_an_unknown_canonical_field_names_its_line_the_known_ones_and_the_closest(
        good: str, typo: str, problem: str) -> None:
    """Keys of the field maps are closed sets: a typo fails at its line instead of mapping nothing."""
    assert good in DEMO
    text = DEMO.replace(good, typo, 1)
    assert f"m3sh.yaml:{_typo_line(text, problem)} {problem}" in _error(text).splitlines()[1].strip()


def test_config_validate_reports_every_unknown_field_name_with_file_and_line(tmp_path: Path) -> None:
    """All four maps broken at once: `m3sh config validate` exits 1 and lists each, path:line first."""
    text = DEMO
    for good, typo, _ in TYPOS:
        text = text.replace(good, typo, 1)
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "m3sh.cli", "config", "validate", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and not out.stdout
    problems = [ln.strip() for ln in out.stderr.splitlines()[1:]]
    assert out.stderr.startswith("invalid m3sh config (4 problem(s)):")
    assert sorted(problems) == sorted(f"{path}:{_typo_line(text, problem)} {problem}" for _, typo, problem in TYPOS)


def test_config_validate_rejects_legacy_and_unreadable_crm_field_names(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    """Ownership was keyed by m3ter custom field names for domain/owner (crm_domain, crm_owner) and a
    Salesforce relationship path read as empty: both now fail validation, with the fix in the message."""
    from m3sh.cli import main

    path = tmp_path / "m3sh.yaml"
    path.write_text(DEMO.replace("      po_number: m3ter_wins", "      crm_domain: m3ter_wins", 1))
    assert main(["config", "validate", str(path)]) == 1
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "crm_domain: m3ter_wins" in ln)
    assert (f"{path}:{line} crm.ownership.fields.crm_domain: unknown canonical field 'crm_domain'; known: {_ACCOUNT} "
            "(did you mean 'domain'?)") in capsys.readouterr().err
    path.write_text(DEMO.replace("owner: Owner_Name__c", "owner: Owner.Name", 1))
    assert main(["config", "validate", str(path)]) == 1
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "Owner.Name" in ln)
    assert (f"{path}:{line} crm.sources[0].account_fields.owner: 'Owner.Name' is not a Salesforce field API name"
            in capsys.readouterr().err)
    # the same check covers contract_fields and write_back_field of Salesforce sources, not HubSpot's
    sf = DEMO.replace("      write_back_field: M3ter_Account_Id__c",
                      "      contract_fields: {end_date: End Date}\n      write_back_field: M3ter Account Id", 1)
    msg = _error(sf)
    assert "crm.sources[0].contract_fields.end_date: 'End Date' is not a Salesforce field API name" in msg
    assert "crm.sources[0].write_back_field: 'M3ter Account Id' is not a Salesforce field API name" in msg
    parse_config(DEMO.replace("end_date: contract_end", "end_date: Contract.End"))


def test_a_duplicated_key_is_an_error_not_a_silent_override() -> None:
    """YAML keeps the last of two equal keys; the first one's setting would vanish without a word."""
    text = DEMO.replace("      email: fill_missing", "      email: fill_missing\n      email: crm_wins", 1)
    first = next(i for i, ln in enumerate(text.splitlines(), 1) if "email: fill_missing" in ln)
    assert _error(text) == (f"m3sh.yaml:{first + 1} duplicate key 'email' (first at line {first}); "
                            "YAML keeps only the last one")


def test_contract_fields_default_per_crm_and_are_overridden_per_key() -> None:
    cfg = parse_config(DEMO.replace("        end_date: contract_end", "        end_date: renewal_date", 1))
    sf, hs = cfg.crm.sources
    assert sf.contract_field_map() == {"start_date": "StartDate", "end_date": "EndDate", "po_number": "PO_Number__c"}
    assert hs.contract_field_map() == {"start_date": "contract_start", "end_date": "renewal_date",
                                       "po_number": "po_number"}


def test_field_maps_are_keyed_by_the_canonical_sets_declared_once() -> None:
    """config and mapping read one declaration (models/records.py); the reference shows the sets."""
    import typing

    from m3sh.config import CrmSource, FieldOwnership
    from m3sh.models.records import CANONICAL_ACCOUNT_FIELDS, CANONICAL_CONTRACT_FIELDS, CrmAccount

    def keys(annotation: Any) -> tuple[str, ...]:
        key_type = typing.get_args(annotation)[0]
        return typing.get_args(typing.get_args(key_type)[0])

    assert keys(CrmSource.model_fields["account_fields"].annotation) == CANONICAL_ACCOUNT_FIELDS
    assert keys(FieldOwnership.model_fields["fields"].annotation) == CANONICAL_ACCOUNT_FIELDS
    assert keys(CrmSource.model_fields["contract_fields"].annotation) == CANONICAL_CONTRACT_FIELDS
    assert set(CANONICAL_ACCOUNT_FIELDS) <= set(CrmAccount.model_fields)
    ref = render_reference()
    assert "| `account_fields` | dict['name' \\| 'domain' \\| 'email'" in ref
    assert "| `contract_fields` | dict['start_date' \\| 'end_date' \\| 'po_number', str]" in ref


def test_a_key_of_control_characters_keeps_its_problem_on_one_line() -> None:
    """Found by the property test: a key such as ``"\\x1e"`` (a line break to ``str.splitlines``) split
    the problem line, so the second half had no file:line."""
    import yaml

    from m3sh.config import DEFAULT_CONFIG_PATH, parse_config
    from m3sh.exceptions import ConfigError

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["usage"]["feeds"][0] = {"\x1e": 0, **data["usage"]["feeds"][0]}
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_dump(data, sort_keys=False), source="x.yaml")
    problems = str(exc.value).splitlines()[1:]
    assert problems and all(p.strip().startswith("x.yaml:") for p in problems), problems
    assert any("usage.feeds[0]['\\x1e']: unknown key" in p for p in problems), problems
