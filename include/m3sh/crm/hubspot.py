"""Extract HubSpot companies changed in a window, with their (closed-won) deal as the contract.

The m3ter plan comes from the deal's line items, as it does from opportunity line items in
Salesforce: each line item's ``hs_sku`` (then ``hs_product_id``, then ``name``) is looked up in
``crm.plan_map``; the deal's ``plan_code`` property is only a fallback for deals without a mapped
line item (precedence in :func:`m3sh.mapping.crm.deal_product`). The contract's dates and PO number
are deal properties named by the source's ``contract_fields`` (default ``contract_start``,
``contract_end``, ``po_number``: custom properties each portal names its own way).

Incremental on ``hs_lastmodifieddate`` of companies, deals *and* line items: editing a line item
need not touch its deal's timestamp, so a swapped SKU would otherwise never re-sync the company.
Every read is a search or a batch call (associations 1,000 and records 100 per request), never one
request per deal.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from m3sh.config import CrmSource
from m3sh.hooks.hubspot import HubSpotHook
from m3sh.mapping.crm import (
    LINE_ITEM_PRODUCT_KEYS,
    contract_values,
    deal_product,
    mapped_line_item_products,
    to_crm_account,
)
from m3sh.models.records import CrmAccount

log = logging.getLogger(__name__)
# Deal properties read besides the source's contract_fields.
DEAL_PROPS = ["dealname", "dealstage", "plan_code", "closedate", "hs_lastmodifieddate"]
LINE_ITEM_PROPS = [*LINE_ITEM_PRODUCT_KEYS, "hs_lastmodifieddate"]


def _props(rec: dict[str, Any]) -> dict[str, Any]:
    return dict(rec.get("properties") or {})


def _id_order(record_id: str) -> tuple[int, str]:
    """HubSpot ids are numeric strings: numeric order, so "the first line item" is stable."""
    return len(record_id), record_id


def extract_hubspot(source: CrmSource, start: dt.datetime, end: dt.datetime,
                    hook: HubSpotHook | None = None, plan_map: Mapping[str, str] | None = None) -> list[CrmAccount]:
    """Companies changed in ``[start, end)`` themselves or through a deal or a deal's line item.

    ``plan_map`` is ``crm.plan_map``: it decides which line item names the subscribed product.
    Without it no line item maps and the deal's ``plan_code`` property (or the first SKU) is used.
    """
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    plan_map = plan_map or {}
    contract_fields = source.contract_field_map()
    deal_props = sorted({*DEAL_PROPS, *contract_fields.values()})
    props = sorted({*source.account_fields.values(), *([source.write_back_field] if source.write_back_field else []),
                    "hs_lastmodifieddate"})
    companies = {str(c["id"]): c for c in hook.search_modified("companies", start, end, props)}
    changed_deals = {str(d["id"]): d for d in hook.search_modified("deals", start, end, deal_props)}
    changed_items = {str(li["id"]): li for li in hook.search_modified("line_items", start, end, LINE_ITEM_PROPS)}
    if changed_items:
        via_items = {d for ids in hook.get_associations("line_items", list(changed_items), "deals").values()
                     for d in ids}
        changed_deals.update(hook.batch_read("deals", sorted(via_items - set(changed_deals)), deal_props))
    if changed_deals:
        linked = {cid for ids in hook.get_associations("deals", list(changed_deals), "companies").values()
                  for cid in ids}
        companies.update(hook.batch_read("companies", sorted(linked - set(companies)), props))
    deal_links = hook.get_associations("companies", list(companies), "deals") if companies else {}
    wanted = sorted({d for ids in deal_links.values() for d in ids} - set(changed_deals))
    all_deals = {**changed_deals, **hook.batch_read("deals", wanted, deal_props)}
    won_deal: dict[str, str] = {}  # company id -> its latest closed-won deal id
    for cid in companies:
        won = sorted((d for d in deal_links.get(cid, []) if d in all_deals
                      and _props(all_deals[d]).get("dealstage") == "closedwon"),
                     key=lambda d: str(_props(all_deals[d]).get(contract_fields["start_date"]) or ""), reverse=True)
        if won:
            won_deal[cid] = won[0]
    item_links = hook.get_associations("deals", sorted(set(won_deal.values())), "line_items") if won_deal else {}
    wanted_items = sorted({i for ids in item_links.values() for i in ids} - set(changed_items))
    all_items = {**changed_items, **hook.batch_read("line_items", wanted_items, LINE_ITEM_PROPS)}
    out = []
    for cid, company in companies.items():
        deal_id = won_deal.get(cid)
        deal = _props(all_deals[deal_id]) if deal_id else {}
        item_ids = sorted((i for i in item_links.get(deal_id or "", []) if i in all_items), key=_id_order)
        items = [_props(all_items[i]) for i in item_ids]
        plans = {plan_map[p] for p in mapped_line_item_products(items, plan_map)}
        if len(plans) > 1:
            log.warning("hubspot %s deal %s (company %s): line items %s map to several plans %s; using the "
                        "first line item's", source.name, deal_id, cid, item_ids, sorted(plans))
        extra: dict[str, Any] = {
            "contract_id": deal_id,
            **contract_values(deal, source, where=f"hubspot {source.name} deal {deal_id}"),
            "plan_code": deal_product(deal, items, plan_map) if deal_id else None,
        }
        out.append(to_crm_account(_props(company), source, crm_id=cid, crm_object="companies", extra=extra))
    log.info("hubspot %s: %d compan(y/ies) changed in %s..%s (%d deal change(s), %d line item change(s))",
             source.name, len(out), start, end, len(changed_deals), len(changed_items))
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


def read_account_links(source: CrmSource, hook: HubSpotHook | None = None) -> dict[str, dict[str, Any]]:
    """Reconciliation's read-back of the portal: every company id -> ``{"m3ter_id", "currency"}`` (the
    source's write-back property and ``currency`` account field; None where the source maps none)."""
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    cur_field = source.account_fields.get("currency")
    out: dict[str, dict[str, Any]] = {}
    for rec in hook.iter_objects("companies", [p for p in (source.write_back_field, cur_field) if p]):
        props = _props(rec)
        out[str(rec["id"])] = {"m3ter_id": props.get(source.write_back_field) if source.write_back_field else None,
                               "currency": props.get(cur_field) if cur_field else None}
    return out


def read_companies_hubspot(source: CrmSource, ids: list[str], fields: list[str],
                           hook: HubSpotHook | None = None) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Companies by id -> ``(their properties, hs_lastmodifieddate)`` (batch reads of 100)."""
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    found = hook.batch_read("companies", ids, sorted({*fields, "hs_lastmodifieddate"}))
    return {cid: (_props(rec), _props(rec).get("hs_lastmodifieddate") or rec.get("updated_at"))
            for cid, rec in found.items()}


def update_companies_hubspot(source: CrmSource, updates: Mapping[str, Mapping[str, Any]],
                             hook: HubSpotHook | None = None) -> dict[str, str]:
    """Batch-update companies' properties; returns ``{company id: error}`` of those HubSpot refused.
    The plan property is created first when the portal lacks it (as the invoice deal property is)."""
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    if source.plan_field and any(source.plan_field in props for props in updates.values()):
        hook.ensure_property("companies", source.plan_field, "m3ter plan",
                             description="The account's current m3ter plan (written by m3sh)")
    result = hook.batch_update("companies", [{"id": cid, "properties": dict(props)} for cid, props in updates.items()])
    return {str(inp.get("id")): str(why) for inp, why in result.failed}


def read_deals_hubspot(source: CrmSource, ids: list[str], fields: list[str],
                       hook: HubSpotHook | None = None) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Deals by id -> ``(their properties, hs_lastmodifieddate)`` (batch reads of 100)."""
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    found = hook.batch_read("deals", ids, sorted({*fields, "hs_lastmodifieddate"}))
    return {did: (_props(rec), _props(rec).get("hs_lastmodifieddate") or rec.get("updated_at"))
            for did, rec in found.items()}


def update_deals_hubspot(source: CrmSource, updates: Mapping[str, Mapping[str, Any]],
                         hook: HubSpotHook | None = None) -> dict[str, str]:
    """Batch-update deals' date properties as ``YYYY-MM-DD`` (HubSpot's API FAQ, "How should I
    format timestamps": a value that represents a date is the complete ISO 8601 date, or a
    midnight-UTC millisecond timestamp); returns ``{deal id: error}`` of those HubSpot refused."""
    hook = hook or HubSpotHook(hubspot_conn_id=source.conn_id)
    result = hook.batch_update("deals", [{"id": did, "properties": {k: str(v)[:10] for k, v in props.items()}}
                                         for did, props in updates.items()])
    return {str(inp.get("id")): str(why) for inp, why in result.failed}
