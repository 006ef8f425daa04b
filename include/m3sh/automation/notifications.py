"""``m3sh triggers sync-notifications``: m3ter notification configurations + webhook destination
from the trigger rules, so m3ter calls the m3sh receiver the moment a balance crosses a threshold.

The three objects m3ter's worked example sets up ("Example - Notification Setup for Commitment
Updated Event" in m3ter's docs): a notification rule (``notifications/configurations``), a webhook
destination (``integrationdestinations/webhooks``, ``M3TER_SIGNED_REQUEST`` credentials) and a
Notification Integration Configuration (``integrationconfigs``: ``entityType: "Notification"``,
``entityId`` = the rule, ``destinationId`` = the webhook) linking the two; without the link m3ter
sends nothing. ``destination: "WEBHOOK"`` in the link is inferred from the OpenAPI
``DestinationType`` enum (the example's body is cut off before that field in every copy we have).

Idempotent: the destination is ``m3sh_receiver`` and each balance rule's notification is
``m3sh_<rule>`` (or the rule's ``notification_code``); existing ones are updated only where they
differ, a link is created only when the webhook has none for that notification, and notifications
of disabled rules are deactivated. Only balance rules get a notification: m3ter raises no event when
a usage total or a calendar date crosses a limit, so those rules are polled by the DAG's 5-minute
schedule.

Calculations (m3ter's expression language over the event's ``new``/``old`` DTOs):

* absolute threshold ``T``: ``new.amount < T AND old.amount >= T`` (the crossing only);
* percent of original: ``new.amount < old.amount`` (any decrease; the original is not in the
  event, so the DAG decides).

The webhook secret is the password of the ``m3ter_webhook`` connection (the one the receiver
verifies with); its login (default ``m3sh``) is the destination's API key.
"""

from __future__ import annotations

from typing import Any

from m3sh.config import TriggerRule, load_config

WEBHOOK_CODE = "m3sh_receiver"
BALANCE_EVENT = "billing.balanceamount.updated"
LINK_ENTITY_TYPE = "Notification"
LINK_DESTINATION = "WEBHOOK"  # OpenAPI DestinationType; see the module docstring


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


def _is_link(cfg: dict[str, Any], notification_id: str, webhook_id: str) -> bool:
    return (str(cfg.get("entityType", "")).lower() == LINK_ENTITY_TYPE.lower()
            and cfg.get("entityId") == notification_id and cfg.get("destinationId") == webhook_id)


def link_notification(hook: Any, notification: dict[str, Any], webhook: dict[str, Any],
                      links: list[dict[str, Any]] | None = None, dry_run: bool = False) -> str:
    """Make sure an enabled Notification Integration Configuration links ``notification`` to
    ``webhook``; returns what was done. ``links``: the webhook's configurations, if already listed."""
    if not notification.get("id") or not webhook.get("id"):
        return "created"  # dry run: nothing exists yet, so nothing is linked yet
    notification_id, webhook_id = str(notification["id"]), str(webhook["id"])
    if links is None:
        links = list(hook.list_integration_configs(destination_id=webhook_id))
    current = next((c for c in links if _is_link(c, notification_id, webhook_id)), None)
    if current is None:
        if dry_run:
            return "created"

        def find_existing() -> dict[str, Any] | None:  # a create whose response was lost
            return next((c for c in hook.list_integration_configs(destination_id=webhook_id)
                         if _is_link(c, notification_id, webhook_id)), None)

        current = hook.create_integration_config({
            "name": f"m3sh: {notification.get('code', notification_id)} -> {WEBHOOK_CODE}",
            "entityType": LINK_ENTITY_TYPE, "entityId": notification_id,
            "destination": LINK_DESTINATION, "destinationId": webhook_id}, find_existing)
        action = "created"
    else:
        action = "unchanged"
    if current.get("enabled") is False:  # a link disabled in m3ter's Console delivers nothing
        if not dry_run:
            hook.enable_integration_config(str(current["id"]))
        action = "enabled"
    return action


def sync_notifications(config_path: str | None, webhook_url: str, dry_run: bool = False) -> dict[str, Any]:
    """Create or update the destination, notifications and their links; returns what changed (no secrets)."""
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.web.receiver import load_settings

    if not webhook_url.startswith(("http://", "https://")):
        raise ValueError(f"--webhook-url must be an http(s) URL, got {webhook_url!r}")
    cfg = load_config(config_path)
    hook = M3terHook(cfg.m3ter.conn_id)
    settings = load_settings()
    webhook = hook.upsert_webhook_destination(WEBHOOK_CODE, {
        "name": "m3sh webhook receiver",
        "description": "Airflow m3sh plugin: m3ter notifications -> m3sh_plan_triggers (managed by m3sh)",
        "url": webhook_url,
        "active": True,
        "credentials": {"type": "M3TER_SIGNED_REQUEST", "apiKey": settings.api_key, "secret": settings.secret},
    }, dry_run=dry_run)
    links = (list(hook.list_integration_configs(destination_id=webhook.entity["id"]))
             if webhook.entity.get("id") else [])
    results = []
    for code, desired in desired_notifications(cfg.triggers).items():
        current = hook.find_notification_configuration(code)
        if current is None and not desired["active"]:
            results.append({"code": code, "action": "absent (rule disabled)"})
            continue
        res = hook.upsert_notification_configuration(code, desired, existing=current, dry_run=dry_run)
        out = {"code": code, "action": res.action, "calculation": desired["calculation"]}
        if desired["active"]:
            out["link"] = link_notification(hook, res.entity, webhook.entity, links, dry_run=dry_run)
        results.append(out)
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
