"""SuiteQL views of an account's records (``transaction``, ``transactionline``, ``customer``, ...).

Column names and codes follow NetSuite's analytics tables, so reconciliation queries written
against the emulator run unchanged on a real account. Credit memos carry a negative
``foreigntotal`` there, as in NetSuite, so ``SUM(foreigntotal)`` over both types is the net.

Payment columns: ``foreignamountpaid`` / ``foreignamountunpaid`` ("Amount Paid / Unpaid
(Transaction Currency)") are the names NetSuite's Records Catalog gives the analytics
``transaction`` record (SuiteScript Records Browser 2021.1, analytics/record/transaction.html);
``foreignamountremaining``, which some third-party queries use, is not listed there, so the
emulator refuses it like any unknown column. Customer payments are ``CustPymt`` rows whose
``foreigntotal`` is the amount received (positive) [INF: sign not checked against an account].
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.sandbox.netsuite.state import ITEM_TYPES, PAYMENT_TYPES, TRANSACTION_TYPES, AccountState
from m3sh.sandbox.netsuite.suiteql import Table


def _dt(value: str | None) -> dt.datetime | None:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ") if value else None


def _int(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build_tables(acct: AccountState) -> dict[str, Table]:
    tables: dict[str, Table] = {}

    tx = Table(["id", "tranid", "externalid", "entity", "type", "trandate", "duedate", "foreigntotal",
                "foreignamountpaid", "foreignamountunpaid", "currency", "exchangerate", "subsidiary", "status",
                "memo", "otherrefnum", "createddate", "lastmodifieddate", "recordtype"], [])
    lines = Table(["id", "transaction", "linesequencenumber", "item", "quantity", "rate", "foreignamount",
                   "memo", "mainline"], [])
    for record_type, code in TRANSACTION_TYPES.items():
        sign = -1.0 if record_type == "creditMemo" else 1.0
        for rec in acct.records[record_type].values():
            row: dict[str, Any] = {
                "id": int(rec["id"]), "tranid": rec["tranId"], "externalid": rec.get("externalId"),
                "entity": _int(rec["entity"]["id"]), "type": code,
                "trandate": dt.date.fromisoformat(rec["tranDate"]),
                "duedate": dt.date.fromisoformat(rec["dueDate"]) if rec.get("dueDate") else None,
                "foreigntotal": sign * float(rec["total"]), "currency": _int(rec["currency"]["id"]),
                "exchangerate": float(rec.get("exchangeRate", 1.0)),
                "subsidiary": _int(rec["subsidiary"]["id"]), "status": rec["status"]["id"],
                "memo": rec.get("memo"), "otherrefnum": rec.get("otherRefNum"),
                "createddate": _dt(rec.get("createdDate")),
                "lastmodifieddate": _dt(rec.get("lastModifiedDate")),
                "recordtype": record_type.lower(),
            }
            if record_type == "invoice":
                row["foreignamountpaid"] = float(rec.get("amountPaid") or 0.0)
                row["foreignamountunpaid"] = float(rec.get("amountRemaining", rec["total"]))
            tx.rows.append(row)
            label = "Invoice" if record_type == "invoice" else "Credit Memo"
            tx.display[id(row)] = {
                "entity": rec["entity"]["refName"], "currency": rec["currency"]["refName"],
                "subsidiary": rec["subsidiary"]["refName"], "type": label,
                "status": f"{label} : {rec['status']['refName']}",
            }
            for line in rec.get("item", []):
                lrow = {
                    "id": line["line"], "transaction": int(rec["id"]), "linesequencenumber": line["line"],
                    "item": _int(line["item"]["id"]), "quantity": line["quantity"], "rate": line.get("rate"),
                    "foreignamount": sign * line["amount"], "memo": line.get("description"), "mainline": "F",
                }
                lines.rows.append(lrow)
                lines.display[id(lrow)] = {"item": line["item"]["refName"]}
    for record_type, code in PAYMENT_TYPES.items():
        for rec in acct.records[record_type].values():
            row = {
                "id": int(rec["id"]), "tranid": rec["tranId"], "externalid": rec.get("externalId"),
                "entity": _int(rec["customer"]["id"]), "type": code,
                "trandate": dt.date.fromisoformat(rec["tranDate"]), "duedate": None,
                "foreigntotal": float(rec["total"]), "currency": _int(rec["currency"]["id"]),
                "exchangerate": 1.0, "subsidiary": _int(rec["subsidiary"]["id"]), "status": rec["status"]["id"],
                "memo": rec.get("memo"), "otherrefnum": None, "createddate": _dt(rec.get("createdDate")),
                "lastmodifieddate": _dt(rec.get("lastModifiedDate")), "recordtype": record_type.lower(),
            }
            tx.rows.append(row)
            tx.display[id(row)] = {
                "entity": rec["customer"]["refName"], "currency": rec["currency"]["refName"],
                "subsidiary": rec["subsidiary"]["refName"], "type": "Payment",
                "status": f"Payment : {rec['status']['refName']}",
            }
    tables["transaction"] = tx
    tables["transactionline"] = lines

    cust = Table(["id", "entityid", "externalid", "companyname", "email", "phone", "subsidiary", "currency",
                  "isinactive", "isperson", "datecreated", "lastmodifieddate"], [])
    for rec in acct.records["customer"].values():
        row = {
            "id": int(rec["id"]), "entityid": rec.get("entityId"), "externalid": rec.get("externalId"),
            "companyname": rec.get("companyName"), "email": rec.get("email"), "phone": rec.get("phone"),
            "subsidiary": _int(rec["subsidiary"]["id"]), "currency": _int(rec["currency"]["id"]),
            "isinactive": bool(rec.get("isInactive")), "isperson": bool(rec.get("isPerson")),
            "datecreated": _dt(rec.get("dateCreated")), "lastmodifieddate": _dt(rec.get("lastModifiedDate")),
        }
        cust.rows.append(row)
        cust.display[id(row)] = {"subsidiary": rec["subsidiary"]["refName"],
                                 "currency": rec["currency"]["refName"]}
    tables["customer"] = cust

    sub = Table(["id", "name", "fullname", "currency", "country", "isinactive"], [])
    for rec in acct.records["subsidiary"].values():
        row = {"id": int(rec["id"]), "name": rec["name"], "fullname": rec["name"],
               "currency": _int(rec["currency"]["id"]), "country": rec["country"], "isinactive": False}
        sub.rows.append(row)
        sub.display[id(row)] = {"currency": rec["currency"]["refName"]}
    tables["subsidiary"] = sub

    cur = Table(["id", "name", "symbol", "isbasecurrency"], [])
    for rec in acct.records["currency"].values():
        cur.rows.append({"id": int(rec["id"]), "name": rec["name"], "symbol": rec["symbol"],
                         "isbasecurrency": bool(rec.get("isBaseCurrency"))})
    tables["currency"] = cur

    item = Table(["id", "itemid", "displayname", "externalid", "itemtype", "isinactive"], [])
    for record_type, code in ITEM_TYPES.items():
        for rec in acct.records[record_type].values():
            item.rows.append({"id": _int(rec["id"]), "itemid": rec.get("itemId"),
                              "displayname": rec.get("displayName"), "externalid": rec.get("externalId"),
                              "itemtype": code, "isinactive": bool(rec.get("isInactive"))})
    tables["item"] = item
    for t in tables.values():
        t.rows.sort(key=lambda r: (str(type(r["id"])), r["id"]))
    return tables
