"""Balances and their transactions, bills, line items and bill jobs (a simple rating engine).

Rating is deliberately simple but consistent with the seed: per active account plan in the
billing period, one ``STANDING_CHARGE`` line (plan standing charge, else the template's) and one
``USAGE`` line = quantity x unit price, where the plan's ``customFields`` carry ``unit_price`` and
``usage_meter`` (the demo plans do). Prepaid balances are drawn down at billing as a
``BALANCE_CONSUMED`` line plus a debit transaction (``entityType=BILL``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from m3sh.sandbox.m3ter.http import ORG, as_bool, ok, read_json
from m3sh.sandbox.m3ter.schemas import ApiError, validate_body
from m3sh.sandbox.m3ter.store import SERVICE_USER, Entity, multi, new_id, paginate, public
from m3sh.sandbox.m3ter.timeutil import day_start, iso, now, now_iso, parse_date, parse_datetime

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator

DEFAULT_USAGE_METER = "api_calls"


# -- balances -----------------------------------------------------------------------------------
def apply_transaction(
    emu: M3terEmulator, balance: Entity, fields: Entity, entity_type: str, entity_id: str
) -> Entity:
    """Store a transaction, move the live ``amount`` and fire balance events (lock held)."""
    old = dict(balance)
    tx = emu.store.insert("transactions", {**fields, "entityType": entity_type, "entityId": entity_id})
    tx["_balanceId"] = balance["id"]
    tx.setdefault("transactionDate", tx["dtCreated"])
    tx.setdefault("appliedDate", tx["dtCreated"])
    balance["amount"] = round(balance.get("amount", 0.0) + float(fields["amount"]), 10)
    emu.store.touch(balance)
    emu.emit("billing.balanceamount.updated", balance, old, event_type="Billing")
    emu.emit("billing.balance.updated", balance, old, event_type="Billing")
    return tx


def _summary(emu: M3terEmulator, balance_id: str) -> dict[str, float]:
    txs = sorted(
        (t for t in emu.store.coll("transactions").values() if t["_balanceId"] == balance_id),
        key=lambda t: t["_seq"],
    )
    credits = sum(t["amount"] for t in txs if t["amount"] > 0)
    debits = -sum(t["amount"] for t in txs if t["amount"] < 0)
    initial = next((t["amount"] for t in txs if t["amount"] > 0), 0.0)
    return {
        "totalCreditAmount": credits,
        "totalDebitAmount": debits,
        "initialCreditAmount": initial,
        "expiredBalanceAmount": 0.0,
        "rolloverConsumed": 0.0,
        "balanceConsumed": debits,
    }


def active_balance(emu: M3terEmulator, account_id: str, at: dt.datetime) -> Entity | None:
    for bal in sorted(emu.store.coll("balances").values(), key=lambda b: b["startDate"]):
        if bal["accountId"] == account_id and parse_datetime(bal["startDate"]) <= at < parse_datetime(
            bal["endDate"]
        ):
            return bal
    return None


# -- rating -------------------------------------------------------------------------------------
def _period(last_day: dt.date, frequency: str) -> tuple[dt.date, dt.date]:
    end = last_day + dt.timedelta(days=1)
    if frequency == "DAILY":
        return last_day, end
    if frequency == "WEEKLY":
        return end - dt.timedelta(days=7), end
    if frequency == "ANNUALLY":
        return last_day.replace(month=1, day=1), end
    return last_day.replace(day=1), end


def _usage_terms(emu: M3terEmulator, plan: Entity) -> tuple[str, str, float]:
    """(meter code, measure field, unit price) a plan charges usage with."""
    custom = plan.get("customFields") or {}
    meter_code = str(custom.get("usage_meter", DEFAULT_USAGE_METER))
    price = float(custom.get("unit_price", 0.0) or 0.0)
    fld = "quantity"
    meter = emu.store.find("meters", "code", meter_code)
    if meter is not None:
        agg = emu.store.find("aggregations", "meterId", meter["id"])
        if agg is not None:
            fld = agg["targetField"]
    return meter_code, fld, price


def _line(  # noqa: PLR0917 - mirrors the line item fields
    bill_id: str,
    kind: str,
    description: str,
    quantity: float,
    price: float,
    currency: str,
    start: dt.datetime,
    end: dt.datetime,
    n: int,
    **extra: Any,
) -> Entity:
    subtotal = round(quantity * price, 6)
    stamp = now_iso()
    extra = {k: v for k, v in extra.items() if v is not None}  # the spec has no nullable fields
    return {
        "id": new_id(),
        "billId": bill_id,
        "lineItemType": kind,
        "description": description,
        "quantity": quantity,
        "units": quantity,
        "unit": extra.pop("unit", "units"),
        "averageUnitPrice": price,
        "subtotal": subtotal,
        "currency": currency,
        "conversionRate": 1.0,
        "convertedSubtotal": subtotal,
        "servicePeriodStartDate": iso(start),
        "servicePeriodEndDate": iso(end),
        "sequenceNumber": n,
        "version": 1,
        "dtCreated": stamp,
        "dtLastModified": stamp,
        "createdBy": SERVICE_USER,
        "lastModifiedBy": SERVICE_USER,
        **extra,
    }


def _rate(emu: M3terEmulator, bill: Entity, account: Entity, start_d: dt.date, end_d: dt.date) -> None:
    """(Re)compute a pending bill's line items and balance draw-down in place."""
    start, end = day_start(start_d), day_start(end_d)
    _reverse_consumption(emu, bill)
    lines: list[Entity] = []
    currency = account.get("currency") or "USD"
    usage_value_drawn = 0.0
    for ap in emu.store.select("accountplans", "accountId", [account["id"]]):  # indexed: not every account's plans
        ap_start = parse_datetime(ap["startDate"])
        ap_end = parse_datetime(ap["endDate"]) if ap.get("endDate") else None
        if ap_start >= end or (ap_end is not None and ap_end <= start):
            continue
        plan = emu.store.coll("plans").get(ap.get("planId", ""))
        if plan is None:
            continue
        template = emu.store.coll("plantemplates").get(plan["planTemplateId"], {})
        product = emu.store.coll("products").get(plan.get("productId", ""), {})
        currency = str(template.get("currency", currency))
        common = {
            "planId": plan["id"],
            "productId": product.get("id"),
            "productName": product.get("name"),
            "productCode": product.get("code"),
        }
        standing = plan.get("standingCharge", template.get("standingCharge", 0.0)) or 0.0
        lines.append(
            _line(
                bill["id"],
                "STANDING_CHARGE",
                f"Standing charge: {plan['name']}",
                1.0,
                float(standing),
                currency,
                start,
                end,
                len(lines) + 1,
                unit="month",
                **common,
            )
        )
        meter_code, fld, price = _usage_terms(emu, plan)
        quantity, _ = emu.usage.totals(account["code"], meter_code, fld, start.timestamp(), end.timestamp())
        meter = emu.store.find("meters", "code", meter_code) or {}
        lines.append(
            _line(
                bill["id"],
                "USAGE",
                f"Usage: {meter.get('name', meter_code)}",
                quantity,
                price,
                currency,
                start,
                end,
                len(lines) + 1,
                unit=meter_code,
                meterId=meter.get("id"),
                **common,
            )
        )
        usage_value_drawn += min(emu.drawn.get((account["code"], meter_code), 0.0), quantity) * price
    total = sum(li["subtotal"] for li in lines)
    balance = active_balance(emu, account["id"], start) or active_balance(
        emu, account["id"], end - dt.timedelta(seconds=1)
    )
    if balance is not None and total > 0:
        new_consumed = min(max(total - usage_value_drawn, 0.0), max(balance.get("amount", 0.0), 0.0))
        consumed = round(new_consumed + usage_value_drawn, 6)
        if consumed > 0:
            lines.append(
                _line(
                    bill["id"],
                    "BALANCE_CONSUMED",
                    balance.get("balanceDrawDownDescription") or f"Balance consumed: {balance['name']}",
                    1.0,
                    -consumed,
                    currency,
                    start,
                    end,
                    len(lines) + 1,
                    balanceId=balance["id"],
                )
            )
        if new_consumed > 0:
            tx = apply_transaction(
                emu,
                balance,
                {"amount": -round(new_consumed, 6), "description": f"Draw-down for bill {bill['id']}"},
                "BILL",
                bill["id"],
            )
            bill["_consumption"] = (balance["id"], tx["id"], new_consumed)
    bill["lineItems"] = lines
    bill["billTotal"] = round(sum(li["subtotal"] for li in lines), 6)
    bill["currency"] = currency
    bill["lastCalculatedDate"] = now_iso()


def _reverse_consumption(emu: M3terEmulator, bill: Entity) -> None:
    """Recalculating a bill first gives back the balance it drew, so nothing is drawn twice."""
    consumption = bill.pop("_consumption", None)
    if not consumption:
        return
    balance_id, tx_id, amount = consumption
    emu.store.coll("transactions").pop(tx_id, None)
    balance = emu.store.coll("balances").get(balance_id)
    if balance is not None:
        old = dict(balance)
        balance["amount"] = round(balance["amount"] + amount, 10)
        emu.store.touch(balance)
        emu.emit("billing.balanceamount.updated", balance, old, event_type="Billing")


def run_bill_job(emu: M3terEmulator, fields: Entity) -> Entity:
    """Create a COMPLETE bill job and its PENDING bills synchronously (lock held)."""
    frequency = fields.get("billingFrequency") or "MONTHLY"
    if fields.get("lastDateInBillingPeriod"):
        last_day = parse_date(fields["lastDateInBillingPeriod"], "lastDateInBillingPeriod")
    else:
        last_day = now().date().replace(day=1) - dt.timedelta(days=1)
    start_d, end_d = _period(last_day, frequency)
    bill_date = parse_date(fields["billDate"], "billDate") if fields.get("billDate") else end_d
    due = fields.get("dueDate") or (bill_date + dt.timedelta(days=30)).isoformat()
    job = emu.store.insert(
        "billjobs",
        {
            **fields,
            "billingFrequency": frequency,
            "status": "COMPLETE",
            "type": "CREATE",
            "billIds": [],
            "total": 0,
            "pending": 0,
            "lastDateInBillingPeriod": last_day.isoformat(),
        },
    )
    account_ids = fields.get("accountIds")
    for acc_id in account_ids or []:
        emu.store.get("accounts", acc_id, "Account")
    accounts = (
        [emu.store.coll("accounts")[i] for i in account_ids]
        if account_ids
        else [a for a in emu.store.coll("accounts").values() if _has_plan_in(emu, a["id"], start_d, end_d)]
    )
    for account in accounts:
        bill = next(
            (
                b
                for b in emu.store.coll("bills").values()
                if b["accountId"] == account["id"]
                and b["startDate"] == start_d.isoformat()
                and b["endDate"] == end_d.isoformat()
            ),
            None,
        )
        if bill is not None and (bill["locked"] or bill["status"] != "PENDING"):
            continue  # approved or locked bills are final; a re-run must not change them
        if bill is None:
            bill = emu.store.insert(
                "bills",
                {
                    "accountId": account["id"],
                    "accountCode": account["code"],
                    "billJobId": job["id"],
                    "startDate": start_d.isoformat(),
                    "endDate": end_d.isoformat(),
                    "startDateTimeUTC": iso(day_start(start_d)),
                    "endDateTimeUTC": iso(day_start(end_d)),
                    "billDate": bill_date.isoformat(),
                    "dueDate": due,
                    "billingFrequency": frequency,
                    "billFrequencyInterval": fields.get("billFrequencyInterval", 1),
                    "timezone": "UTC",
                    "currency": account.get("currency") or "USD",
                    "locked": False,
                    "status": "PENDING",
                    "createdDate": now_iso(),
                    "purchaseOrderNumber": account.get("purchaseOrderNumber"),
                    "externalInvoiceDate": fields.get("externalInvoiceDate") or bill_date.isoformat(),
                    "jsonStatementGenerated": False,
                    "csvStatementGenerated": False,
                    "statementStale": False,
                    "sequentialInvoiceNumber": f"INV-{len(emu.store.coll('bills')) + 1:06d}",
                    "lineItems": [],
                    "billTotal": 0.0,
                },
            )
            _rate(emu, bill, account, start_d, end_d)
            emu.emit("billing.bill.created", bill, event_type="Billing")
        else:
            old = dict(bill)
            bill["billJobId"] = job["id"]
            _rate(emu, bill, account, start_d, end_d)
            emu.store.touch(bill)
            emu.emit("billing.bill.updated", bill, old, event_type="Billing")
        job["billIds"].append(bill["id"])
    job["total"] = len(job["billIds"])
    job["accountIds"] = [a["id"] for a in accounts] if accounts else fields.get("accountIds")
    if not job["accountIds"]:
        job.pop("accountIds")
    emu.emit("billing.billjob.created", job, event_type="Billing")
    return job


def _has_plan_in(emu: M3terEmulator, account_id: str, start_d: dt.date, end_d: dt.date) -> bool:
    start, end = day_start(start_d), day_start(end_d)
    return any(
        parse_datetime(ap["startDate"]) < end and (not ap.get("endDate") or parse_datetime(ap["endDate"]) > start)
        for ap in emu.store.select("accountplans", "accountId", [account_id])
    )


def _render_bill(bill: Entity, exclude_lines: bool = False) -> Entity:
    out = public(bill)
    if exclude_lines:
        out.pop("lineItems", None)
    else:
        out["lineItems"] = [
            {
                k: v
                for k, v in li.items()
                if k
                not in ("version", "dtCreated", "dtLastModified", "createdBy", "lastModifiedBy", "billId")
            }
            for li in bill["lineItems"]
        ]
    return {k: v for k, v in out.items() if v is not None}


def _bill_filter(emu: M3terEmulator, query: Any) -> list[Entity]:
    items = list(emu.store.coll("bills").values())
    ids = multi(query, "ids")
    if ids:
        items = [b for b in items if b["id"] in ids]
    for param, fld in (
        ("accountId", "accountId"),
        ("status", "status"),
        ("billJobId", "billJobId"),
        ("billingFrequency", "billingFrequency"),
        ("billDate", "billDate"),
    ):
        if query.get(param):
            items = [b for b in items if b.get(fld) == query.get(param)]
    locked = as_bool(query.get("locked"), "locked")
    if locked is not None:
        items = [b for b in items if b["locked"] == locked]
    for param, fld, cmp in (
        ("billDateStart", "billDate", "ge"),
        ("billDateEnd", "billDate", "lt"),
        ("externalInvoiceDateStart", "externalInvoiceDate", "ge"),
        ("externalInvoiceDateEnd", "externalInvoiceDate", "lt"),
    ):
        if query.get(param):
            bound = parse_date(query.get(param), param).isoformat()
            items = [b for b in items if b.get(fld) and (b[fld] >= bound if cmp == "ge" else b[fld] < bound)]
    return items


def _set_status(emu: M3terEmulator, bill: Entity, status: str) -> None:
    if status not in ("PENDING", "APPROVED"):
        raise ApiError(400, "status: must be PENDING or APPROVED")
    if bill["locked"]:
        raise ApiError(400, f"Bill {bill['id']} is locked and cannot change status")
    if bill["status"] != status:
        old = dict(bill)
        bill["status"] = status
        if status == "APPROVED":
            bill["dtApproved"], bill["approvedBy"] = now_iso(), SERVICE_USER
        else:
            bill.pop("dtApproved", None)
            bill.pop("approvedBy", None)
        emu.store.touch(bill)
        emu.emit("billing.bill.updated", bill, old, event_type="Billing")


# -- admin actions ------------------------------------------------------------------------------
def admin_run_billing(emu: M3terEmulator, body: dict[str, Any]) -> dict[str, Any]:
    """A bill job as m3ter's scheduler would run it; ``"approve": true`` also approves its pending
    bills, as a billing admin would before the ERP export (the demo's bill run does both)."""
    body = dict(body)
    approve = bool(body.pop("approve", False))
    try:
        fields = validate_body("billjobs", body)
        job = run_bill_job(emu, fields)
        if approve:
            for bill_id in job["billIds"]:
                bill = emu.store.get("bills", bill_id, "Bill")
                if bill["status"] == "PENDING" and not bill["locked"]:
                    _set_status(emu, bill, "APPROVED")
        return public(job)
    except ApiError as exc:
        raise ValueError(exc.message) from None


def admin_drawdown(emu: M3terEmulator, body: dict[str, Any]) -> dict[str, Any]:
    """Draw prepaid balances down now (m3ter does it at billing) so depletion can be driven in tests.

    ``{"accountCode": "x", "amount": 12.5}`` debits a fixed amount; without ``amount`` the usage
    ingested since the last draw-down is rated with the account's active plan and debited.
    Without ``accountCode`` every account with an active balance is drawn down.
    """
    at = now()
    code = body.get("accountCode")
    accounts = [a for a in emu.store.coll("accounts").values() if code is None or a["code"] == code]
    if code is not None and not accounts:
        raise ValueError(f"no account with code {code!r}")
    results = []
    for account in accounts:
        balance = active_balance(emu, account["id"], at)
        if balance is None:
            if code is not None:
                raise ValueError(f"account {code!r} has no active balance")
            continue
        if body.get("amount") is not None:
            charge = float(body["amount"])
        else:
            charge = 0.0
            for ap in emu.store.select("accountplans", "accountId", [account["id"]]):
                plan = emu.store.coll("plans").get(ap.get("planId", ""))
                if plan is None:
                    continue
                meter_code, fld, price = _usage_terms(emu, plan)
                quantity, _ = emu.usage.totals(account["code"], meter_code, fld)
                undrawn = quantity - emu.drawn.get((account["code"], meter_code), 0.0)
                emu.drawn[(account["code"], meter_code)] = quantity
                charge += max(undrawn, 0.0) * price
        if not balance.get("allowOverdraft"):
            charge = min(charge, max(balance.get("amount", 0.0), 0.0))
        if charge <= 0:
            continue
        apply_transaction(
            emu,
            balance,
            {"amount": -round(charge, 6), "description": "Usage draw-down"},
            "SCHEDULER",
            SERVICE_USER,
        )
        results.append(
            {
                "accountCode": account["code"],
                "balanceId": balance["id"],
                "debited": round(charge, 6),
                "amount": balance["amount"],
            }
        )
    return {"drawdowns": results}


# -- routes -------------------------------------------------------------------------------------
def register(api: FastAPI, emu: M3terEmulator) -> None:
    @api.get(ORG + "/balances/{balance_id}/transactions/summary")
    async def tx_summary(balance_id: str) -> Response:
        with emu.lock:
            emu.store.get("balances", balance_id, "Balance")
            return ok(_summary(emu, balance_id))

    @api.get(ORG + "/balances/{balance_id}/transactions")
    async def tx_list(request: Request, balance_id: str) -> Response:
        q = request.query_params
        with emu.lock:
            emu.store.get("balances", balance_id, "Balance")
            items = [t for t in emu.store.coll("transactions").values() if t["_balanceId"] == balance_id]
            for param in ("transactionTypeId", "entityType", "entityId"):
                if q.get(param):
                    items = [t for t in items if t.get(param) == q.get(param)]
            return ok(paginate(items, q, 200))

    @api.post(ORG + "/balances/{balance_id}/transactions")
    async def tx_create(request: Request, balance_id: str) -> Response:
        fields = validate_body("transactions", await read_json(request))
        with emu.lock:
            balance = emu.store.get("balances", balance_id, "Balance")
            if fields.get("transactionTypeId"):
                emu.store.get("transactiontypes", fields["transactionTypeId"], "TransactionType")
            if (
                fields["amount"] < 0
                and not balance.get("allowOverdraft")
                and balance.get("amount", 0.0) + fields["amount"] < 0
            ):
                raise ApiError(
                    400, "amount: the debit exceeds the remaining balance and allowOverdraft is false"
                )
            return ok(public(apply_transaction(emu, balance, fields, "SERVICE_USER", SERVICE_USER)))

    @api.post(ORG + "/billjobs/recalculate")
    async def billjob_recalculate(request: Request) -> Response:
        body = await read_json(request)
        ids = body.get("billIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise ApiError(400, "billIds: must contain 1 to 100 bill ids")
        with emu.lock:
            bills = [emu.store.get("bills", i, "Bill") for i in ids]
            for bill in bills:
                if bill["locked"] or bill["status"] != "PENDING":
                    raise ApiError(400, f"Bill {bill['id']} is not pending and cannot be recalculated")
            job = emu.store.insert(
                "billjobs",
                {
                    "status": "COMPLETE",
                    "type": "RECALCULATE",
                    "billIds": ids,
                    "total": len(ids),
                    "pending": 0,
                },
            )
            for bill in bills:
                account = emu.store.get("accounts", bill["accountId"], "Account")
                _rate(emu, bill, account, parse_date(bill["startDate"]), parse_date(bill["endDate"]))
                emu.store.touch(bill)
            return ok(public(job))

    @api.post(ORG + "/billjobs")
    async def billjob_create(request: Request) -> Response:
        fields = validate_body("billjobs", await read_json(request, optional=True))
        with emu.lock:
            return ok(public(run_bill_job(emu, fields)))

    @api.get(ORG + "/billjobs")
    async def billjob_list(request: Request) -> Response:
        q = request.query_params
        with emu.lock:
            items = list(emu.store.coll("billjobs").values())
            active = as_bool(q.get("active"), "active")
            if active is not None:
                items = [j for j in items if (j["status"] not in ("COMPLETE", "CANCELLED")) == active]
            if q.get("status"):
                items = [j for j in items if j["status"] == q.get("status")]
            return ok(paginate(items, q, 100))

    @api.get(ORG + "/billjobs/{job_id}")
    async def billjob_get(job_id: str) -> Response:
        with emu.lock:
            return ok(public(emu.store.get("billjobs", job_id, "BillJob")))

    @api.post(ORG + "/billjobs/{job_id}/cancel")
    async def billjob_cancel(job_id: str) -> Response:
        with emu.lock:
            job = emu.store.get("billjobs", job_id, "BillJob")
            if job["status"] in ("COMPLETE", "CANCELLED"):
                raise ApiError(400, f"BillJob {job_id} is already {job['status']} and cannot be cancelled")
            job["status"] = "CANCELLED"
            emu.store.touch(job)
            return ok(public(job))

    @api.post(ORG + "/bills/approve")
    async def bills_approve(request: Request) -> Response:
        body = await read_json(request)
        ids = body.get("billIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "billIds: must contain at least one bill id")
        accounts = multi(request.query_params, "accountIds")
        with emu.lock:
            bills = [emu.store.get("bills", i, "Bill") for i in ids]
            bills = [b for b in bills if not accounts or b["accountId"] in accounts]
            for bill in bills:
                _set_status(emu, bill, "APPROVED")
            return ok({"message": f"{len(bills)} bill(s) approved"})

    @api.get(ORG + "/bills/latest/{account_id}")
    async def bill_latest(account_id: str) -> Response:
        with emu.lock:
            bills = [b for b in emu.store.coll("bills").values() if b["accountId"] == account_id]
            if not bills:
                raise ApiError(404, f"No bills for account {account_id}")
            return ok(_render_bill(max(bills, key=lambda b: (b["billDate"], b["_seq"]))))

    @api.get(ORG + "/bills")
    async def bill_list(request: Request) -> Response:
        q = request.query_params
        exclude = bool(as_bool(q.get("excludeLineItems"), "excludeLineItems"))
        with emu.lock:
            return ok(paginate(_bill_filter(emu, q), q, 100, lambda b: _render_bill(b, exclude)))

    @api.get(ORG + "/bills/{bill_id}")
    async def bill_get(bill_id: str) -> Response:
        with emu.lock:
            return ok(_render_bill(emu.store.get("bills", bill_id, "Bill")))

    @api.delete(ORG + "/bills/{bill_id}")
    async def bill_delete(bill_id: str) -> Response:
        with emu.lock:
            bill = emu.store.get("bills", bill_id, "Bill")
            if bill["locked"]:
                raise ApiError(400, f"Bill {bill_id} is locked and cannot be deleted")
            _reverse_consumption(emu, bill)
            emu.store.delete("bills", bill_id, "Bill")
            emu.emit("billing.bill.deleted", None, bill, event_type="Billing")
            return ok(_render_bill(bill))

    @api.put(ORG + "/bills/{bill_id}/status")
    async def bill_status(request: Request, bill_id: str) -> Response:
        body = await read_json(request)
        with emu.lock:
            bill = emu.store.get("bills", bill_id, "Bill")
            _set_status(emu, bill, body.get("status") if isinstance(body, dict) else None)  # type: ignore[arg-type]
            return ok(_render_bill(bill))

    @api.put(ORG + "/bills/{bill_id}/lock")
    async def bill_lock(bill_id: str) -> Response:
        with emu.lock:
            bill = emu.store.get("bills", bill_id, "Bill")
            if bill["status"] != "APPROVED":
                raise ApiError(400, f"Bill {bill_id} must be APPROVED before it can be locked")
            if not bill["locked"]:
                old = dict(bill)
                bill["locked"], bill["dtLocked"], bill["lockedBy"] = True, now_iso(), SERVICE_USER
                emu.store.touch(bill)
                emu.emit("billing.bill.updated", bill, old, event_type="Billing")
            return ok(_render_bill(bill))

    @api.get(ORG + "/bills/{bill_id}/lineitems")
    async def line_items(request: Request, bill_id: str) -> Response:
        with emu.lock:
            bill = emu.store.get("bills", bill_id, "Bill")
            items = [{**li, "_seq": -li["sequenceNumber"]} for li in bill["lineItems"]]
            return ok(paginate(items, request.query_params, 100))

    @api.get(ORG + "/bills/{bill_id}/lineitems/{line_id}")
    async def line_item(bill_id: str, line_id: str) -> Response:
        with emu.lock:
            bill = emu.store.get("bills", bill_id, "Bill")
            for li in bill["lineItems"]:
                if li["id"] == line_id:
                    return ok(li)
            raise ApiError(404, f"LineItem with id {line_id} not found on bill {bill_id}")
