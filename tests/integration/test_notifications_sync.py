"""``m3sh triggers sync-notifications`` (the CLI, as an operator runs it) against the m3ter emulator.

The rules in m3sh.yaml are the source of truth for m3ter's notification configurations: a dry run
reports and changes nothing; a real run creates the webhook destination and one notification per
balance rule (absolute thresholds notify on the crossing only, percent rules on any decrease);
a renamed rule's old notification and a disabled rule's notification are deactivated, never left
firing at the receiver. The webhook secret never appears in the output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.credentials import WEBHOOK_SECRET

pytestmark = pytest.mark.sandbox

URL = "https://airflow.example/m3sh/webhooks/m3ter"
RULES = """
triggers:
  - name: low_credit
    when: {balance_below: {amount: 100}}
    actions:
      - notify: ops_slack
  - name: half_spent
    when: {balance_below: {percent_of_original: 50}}
    actions:
      - notify: ops_slack
  - name: renewal
    when: {contract_ending_within_days: 30}
    actions:
      - notify: ops_slack
"""


def _sync(config: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "m3sh.cli", "triggers", "sync-notifications", "--config",
                           str(config), "--webhook-url", URL, *extra], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert WEBHOOK_SECRET not in proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _links(webhook_id: str) -> set[str]:
    """Ids of the notifications an enabled Notification Integration Configuration links to the webhook."""
    from m3sh.hooks.m3ter import M3terHook

    return {str(c["entityId"]) for c in M3terHook().list_integration_configs(destination_id=webhook_id)
            if c["entityType"] == "Notification" and c.get("enabled", True)}


def _m3ter_notifications() -> dict[str, dict[str, Any]]:
    from m3sh.hooks.m3ter import M3terHook

    return {n["code"]: n for n in M3terHook().list_notification_configurations()
            if str(n.get("code", "")).startswith("m3sh_")}


def test_cli_creates_updates_and_deactivates_notifications_from_the_rules(fresh_sandbox: Any, m3sh_config: Any
                                                                           ) -> None:
    from m3sh.hooks.m3ter import M3terHook

    config = m3sh_config(replace={"\ntriggers:\n": RULES})
    planned = _sync(config, "--dry-run")
    assert planned["dry_run"] is True and planned["webhook"]["action"] == "created"
    # the demo's prepaid_depleted follows this file's rules; contract rules are polled, never notified
    assert [(n["code"], n["action"]) for n in planned["notifications"]] == [
        ("m3sh_low_credit", "created"), ("m3sh_half_spent", "created"), ("m3sh_prepaid_depleted", "created")]
    assert {n["link"] for n in planned["notifications"]} == {"created"}
    assert _m3ter_notifications() == {}
    assert M3terHook().find_webhook_destination("m3sh_receiver") is None

    done = _sync(config)
    assert done["webhook"]["action"] == "created"
    made = _m3ter_notifications()
    assert {c: (n["calculation"], n["active"]) for c, n in made.items()} == {
        "m3sh_low_credit": ("new.amount < 100 AND old.amount >= 100", True),
        "m3sh_half_spent": ("new.amount < old.amount", True),
        "m3sh_prepaid_depleted": ("new.amount < 100 AND old.amount >= 100", True)}
    webhook = M3terHook().find_webhook_destination("m3sh_receiver")
    assert webhook is not None and webhook["url"] == URL
    assert {n["code"]: n["link"] for n in done["notifications"]} == dict.fromkeys(made, "created")
    # each notification is linked to the webhook (a Notification Integration Configuration): without
    # that link m3ter would never send it
    assert _links(webhook["id"]) == {n["id"] for n in made.values()}
    again = _sync(config)
    assert again["webhook"]["action"] == "unchanged"
    assert {n["action"] for n in again["notifications"]} == {"unchanged"}
    assert {n["link"] for n in again["notifications"]} == {"unchanged"}
    assert len(list(M3terHook().list_integration_configs(destination_id=webhook["id"]))) == len(made)

    # Rename one rule, disable the other: nothing managed by m3sh is left firing for a rule that is gone.
    edited = m3sh_config(replace={"\ntriggers:\n": RULES.replace("name: low_credit", "name: low_credit_v2").replace(
        "  - name: half_spent\n", "  - name: half_spent\n    enabled: false\n")})
    changes = {n["code"]: n["action"] for n in _sync(edited)["notifications"]}
    assert changes == {"m3sh_low_credit_v2": "created", "m3sh_half_spent": "updated",
                       "m3sh_prepaid_depleted": "unchanged", "m3sh_low_credit": "deactivated (no such rule)"}
    assert {c: n["active"] for c, n in _m3ter_notifications().items()} == {
        "m3sh_low_credit": False, "m3sh_half_spent": False, "m3sh_low_credit_v2": True,
        "m3sh_prepaid_depleted": True}
    assert _m3ter_notifications()["m3sh_low_credit_v2"]["id"] in _links(webhook["id"])
