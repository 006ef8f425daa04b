"""Extract HubSpot companies changed in a window, with their (closed-won) deal as the contract."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from m3sh.config import CrmSource
from m3sh.hooks.hubspot import HubSpotHook
from m3sh.mapping.crm import to_crm_account
from m3sh.models.records import CrmAccount

log = logging.getLogger(__name__)
DEAL_PROPS = ["dealname", "dealstage", "contract_start", "contract_end", "plan_code", "po_number", "closedate",
              "hs_lastmodifieddate"]


def _props(rec: dict[str, Any]) -> dict[str, Any]:
    return dict(rec.get("properties") or {})


def _date(v: Any) -> dt.date | None:
    return dt.date.fromisoformat(str(v)[:10]) if v else None


def extract_hubspot(source: CrmSource, start: dt.datetime, end: dt.datetime,
                    hook: HubSpotHook | None = None) -> list[CrmAccount]:
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    props = sorted({*source.account_fields.values(), *([source.write_back_field] if source.write_back_field else []),
                    "hs_lastmodifieddate"})
    companies = {str(c["id"]): c for c in hook.search_modified("companies", start, end, props)}
    changed_deals = {str(d["id"]): d for d in hook.search_modified("deals", start, end, DEAL_PROPS)}
    if changed_deals:
        linked = {cid for ids in hook.get_associations("deals", list(changed_deals), "companies").values()
                  for cid in ids}
        companies.update(hook.batch_read("companies", sorted(linked - set(companies)), props))
    deal_links = hook.get_associations("companies", list(companies), "deals") if companies else {}
    wanted = sorted({d for ids in deal_links.values() for d in ids} - set(changed_deals))
    all_deals = {**changed_deals, **hook.batch_read("deals", wanted, DEAL_PROPS)}
    out = []
    for cid, company in companies.items():
        deals = [_props(all_deals[d]) for d in deal_links.get(cid, []) if d in all_deals]
        won = sorted((d for d in deals if d.get("dealstage") == "closedwon"),
                     key=lambda d: str(d.get("contract_start") or ""), reverse=True)
        deal = won[0] if won else {}
        extra: dict[str, Any] = {
            "contract_id": str(deal_links.get(cid, [None])[0]) if deal else None,
            "contract_start": _date(deal.get("contract_start")),
            "contract_end": _date(deal.get("contract_end")),
            "plan_code": deal.get("plan_code"),
        }
        if deal.get("po_number") and "po_number" not in source.account_fields:
            extra["po_number"] = deal["po_number"]
        out.append(to_crm_account(_props(company), source, crm_id=cid, crm_object="companies", extra=extra))
    log.info("hubspot %s: %d compan(y/ies) changed in %s..%s (%d deal change(s))", source.name, len(out),
             start, end, len(changed_deals))
    return out


def write_back_hubspot(source: CrmSource, items: list[dict[str, str]], hook: HubSpotHook | None = None) -> int:
    if not source.write_back_field or not items:
        return 0
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    result = hook.batch_update("companies", [{"id": i["crm_id"], "properties": {source.write_back_field: i["m3ter_id"]}}
                                             for i in items])
    if result.failed:
        raise RuntimeError(f"hubspot write-back failed for {len(result.failed)} compan(y/ies): "
                           + "; ".join(f"{inp.get('id')}: {why}" for inp, why in result.failed[:10]))
    return len(items)
