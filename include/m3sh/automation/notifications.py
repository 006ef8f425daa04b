"""``m3sh triggers sync-notifications``: m3ter notification configurations + webhook destination
from the trigger rules, so m3ter calls the m3sh receiver the moment a balance crosses a threshold.

Idempotent by code: the destination is ``m3sh_receiver`` and each balance rule's notification is
``m3sh_<rule>`` (or the rule's ``notification_code``); existing ones are updated only where they
differ, and notifications of disabled rules are deactivated. Only balance rules get a notification:
m3ter raises no event when a usage total or a calendar date crosses a limit, so those rules are
polled by the DAG's 5-minute schedule.

Calculations (m3ter's expression language over the event's ``new``/``old`` DTOs):

* absolute threshold ``T``: ``new.amount < T AND old.amount >= T`` (the crossing only);
* percent of original: ``new.amount < old.amount`` (any decrease; the original is not in the
  event, so the DAG decides).

The webhook secret is the password of the ``m3ter_webhook`` connection (the one the receiver
verifies with); its login, if set, is sent as the destination's API key.
"""

from __future__ import annotations

from typing import Any

from m3sh.config import TriggerRule, load_config

WEBHOOK_CODE = "m3sh_receiver"
BALANCE_EVENT = "billing.balanceamount.updated"


def notification_code(rule: TriggerRule) -> str:
    return rule.notification_code or f"m3sh_{rule.name}"


def calculation(rule: TriggerRule) -> str:
    cond = rule.when.balance_below
    assert cond is not None
    if cond.amount is not None:
        return f"new.amount < {cond.amount:g} AND old.amount >= {cond.amount:g}"
    return "new.amount < old.amount"


def desired_notifications(rules: list[TriggerRule]) -> dict[str, dict[str, Any]]:
    out = {}
    for rule in rules:
        if rule.when.kind != "balance_below":
            continue
        out[notification_code(rule)] = {
            "name": f"m3sh: {rule.name}",
            "description": f"m3sh trigger rule {rule.name!r}: balance below threshold (managed by m3sh; "
                           f"edit m3sh.yaml, not here)",
            "eventName": BALANCE_EVENT,
            "calculation": calculation(rule),
            "alwaysFireEvent": False,
            "active": rule.enabled,
        }
    return out


def sync_notifications(config_path: str | None, webhook_url: str, dry_run: bool = False) -> dict[str, Any]:
    """Create or update the destination and notifications; returns what changed (no secrets)."""
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.web.receiver import WEBHOOK_CONN_ID, _get_connection, load_settings

    if not webhook_url.startswith(("http://", "https://")):
        raise ValueError(f"--webhook-url must be an http(s) URL, got {webhook_url!r}")
    cfg = load_config(config_path)
    hook = M3terHook(cfg.m3ter.conn_id)
    settings = load_settings()
    conn = _get_connection(WEBHOOK_CONN_ID)
    api_key = str(getattr(conn, "login", None) or "m3sh")
    webhook = hook.upsert_webhook_destination(WEBHOOK_CODE, {
        "name": "m3sh webhook receiver",
        "description": "Airflow m3sh plugin: m3ter notifications -> m3sh_plan_triggers (managed by m3sh)",
        "url": webhook_url,
        "active": True,
        "credentials": {"type": "M3TER_SIGNED_REQUEST", "apiKey": api_key, "secret": settings.secret},
    }, dry_run=dry_run)
    results = []
    for code, desired in desired_notifications(cfg.triggers).items():
        current = hook.find_notification_configuration(code)
        if current is None and not desired["active"]:
            results.append({"code": code, "action": "absent (rule disabled)"})
            continue
        res = hook.upsert_notification_configuration(code, desired, existing=current, dry_run=dry_run)
        results.append({"code": code, "action": res.action, "calculation": desired["calculation"]})
    managed = set(desired_notifications(cfg.triggers))
    for n in hook.list_notification_configurations():
        code = str(n.get("code", ""))
        if code.startswith("m3sh_") and code not in managed and n.get("active", True):
            res = hook.upsert_notification_configuration(code, {"active": False}, existing=n,
                                      dry_run=dry_run)
            results.append({"code": code, "action": "deactivated (no such rule)" if res.action != "unchanged"
                            else "unchanged"})
    return {"dry_run": dry_run, "webhook": {"code": WEBHOOK_CODE, "url": webhook_url, "action": webhook.action},
            "notifications": results}
