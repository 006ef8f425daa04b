"""m3sh.yaml validation: the shipped demo config is valid, and every kind of mistake is reported
with the YAML path and line a person needs to fix it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
            "'hubspt'; a prefix names a CRM type: ['hubspot', 'salesforce']") in msg
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
