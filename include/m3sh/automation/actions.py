"""Actions a firing runs, in the rule's order, each idempotent by checking current state first.

* ``switch_plan``: the account plan of the target plan's product that is active at the event time
  is ended there (PUT with ``version``) and the configured plan attached from that instant (keeping
  the old plan's end date and contract). Already on the plan, or the plan already attached from
  that instant: nothing to do. For contract rules the event time is the contract's end, so the
  new plan is the renewal that starts when the old term ends.
* ``reset_balance_to`` / ``top_up_balance``: one balance transaction whose description carries the
  firing key; an existing transaction with that description means it was already applied.
* ``open_next_balance``: a new balance for the firing balance's next period (same currency, products
  and settings), then one credit transaction on it. Its code is derived from the firing balance and
  the new start, so a retry or re-run finds it (also after a lost create response) instead of
  opening another; a balance of the same currency and products that already starts inside the
  firing balance's period (opened by hand, or by an earlier firing) means there is nothing to do.
  The credit is found again by its ``m3sh open_next_balance`` description.
* ``set_custom_fields``: written only when a value differs (account, or its current account plan).
* ``update_crm_fields``: the account's CRM records come from m3ter external mappings (the CRM source
  name / ``Account`` or ``companies``, written by ``m3sh_crm_sync``; type-keyed ones from before are
  attributed as :mod:`m3sh.crm.links` says), each written on its own source's connection. A key
  prefixed with a source name targets that source, with a type every source of that type,
  unprefixed every source. Fields are read first and only differing ones written. No mapping:
  skipped with the reason.
* ``notify``: one message through the configured notifier; exactly once through the ledger
  (recorded right after sending; a crash in between can repeat it once).

:func:`apply_firing` runs a firing under its ledger claim and records every action's outcome.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from m3sh.automation.evaluate import _total_credit
from m3sh.automation.rules import Firing, active_at, contract_end_instant, iso_instant, parse_instant
from m3sh.config import Action, CrmSource, M3shConfig, OpenNextBalance, TriggerRule

if TYPE_CHECKING:
    from m3sh.automation.ledger import Ledger
    from m3sh.hooks.m3ter import M3terHook

log = logging.getLogger(__name__)
CRM_TABLES = {"salesforce": "Account", "hubspot": "companies"}
TX_TYPE_CREDIT = "prepaid_credit"
TX_TYPE_TOP_UP = "top_up"
# Balance settings a next period inherits (m3ter's BalanceRequest minus identity, dates and contract).
NEXT_BALANCE_COPIED = ("currency", "description", "balanceDrawDownDescription", "overageSurchargePercent",
                       "overageDescription", "productIds", "lineItemTypes", "consumptionsAccountingProductId",
                       "feesAccountingProductId", "allowOverdraft", "customFields")
MAX_BALANCE_CODE = 80
_PERIOD_SUFFIX = re.compile(r"-\d{8}$")
_NAME_PERIOD_SUFFIX = re.compile(r" \(from \d{4}-\d{2}-\d{2}\)$")


@dataclass
class Outcome:
    status: str  # done | unchanged | skipped | failed | planned
    detail: str = ""


def describe(action: Action) -> str:
    """A one-line description for dry runs and logs (no secrets in config, so safe to print)."""
    kind = action.kind
    value = getattr(action, kind)
    if kind == "set_custom_fields":
        return f"set_custom_fields on {action.custom_fields_on}: {value}"
    if isinstance(value, OpenNextBalance):
        start = "at the balance's end" if value.start == "balance_end" else "at the event time"
        length = f"{value.months} month(s)" if value.months else "the balance's length"
        credit = f"{value.amount:g}" if value.amount is not None else "the balance's initial credit"
        return f"{kind}: {start}, for {length}, credit {credit}, code {value.code}"
    return f"{kind}: {value}"


def marker(firing: Firing, kind: str) -> str:
    return f"m3sh {kind} {firing.key}"


def _same_instant(a: str | None, b: dt.datetime) -> bool:
    return bool(a) and parse_instant(str(a)) == b


class ActionRunner:
    """Runs actions against m3ter, the CRMs and notifiers; caches plan/type lookups per instance."""

    def __init__(self, cfg: M3shConfig, hook: M3terHook) -> None:
        self.cfg = cfg
        self.hook = hook
        self._plans: dict[str, dict[str, Any] | None] = {}
        self._tx_types: dict[str, str | None] = {}

    # -- lookups ------------------------------------------------------------------------------
    def plan(self, code: str) -> dict[str, Any]:
        if code not in self._plans:
            self._plans[code] = self.hook.find_plan(code)
        plan = self._plans[code]
        if plan is None:
            raise ValueError(f"m3ter has no plan with code {code!r} (switch_plan)")
        return plan

    def tx_type(self, code: str) -> str | None:
        if code not in self._tx_types:
            found = self.hook.find_transaction_type(code)
            self._tx_types[code] = found["id"] if found else None
        return self._tx_types[code]

    def account_plans(self, account_id: str) -> list[dict[str, Any]]:
        return list(self.hook.list_account_plans(account_id=account_id, include_all=True))

    def target_balance(self, firing: Firing) -> dict[str, Any] | None:
        if firing.entity == "balance":
            return self.hook.get_balance(firing.entity_id)
        now = dt.datetime.now(dt.UTC)
        live = [b for b in self.hook.list_balances(account_id=firing.account_id) if active_at(b, now)]
        return live[0] if live else None

    # -- dispatch -----------------------------------------------------------------------------
    def run(self, firing: Firing, action: Action, rule: TriggerRule) -> Outcome:
        kind = action.kind
        if kind == "switch_plan":
            return self.switch_plan(firing, str(action.switch_plan))
        if kind == "reset_balance_to":
            return self.adjust_balance(firing, reset_to=action.reset_balance_to)
        if kind == "top_up_balance":
            return self.adjust_balance(firing, top_up=action.top_up_balance)
        if kind == "open_next_balance":
            assert action.open_next_balance is not None
            return self.open_next_balance(firing, action.open_next_balance)
        if kind == "set_custom_fields":
            return self.set_custom_fields(firing, dict(action.set_custom_fields or {}), action.custom_fields_on)
        if kind == "update_crm_fields":
            return self.update_crm_fields(firing, dict(action.update_crm_fields or {}))
        if kind == "notify":
            return self.notify(firing, str(action.notify), rule)
        raise ValueError(f"unknown action kind {kind!r}")  # pragma: no cover - the model forbids it

    # -- switch plan --------------------------------------------------------------------------
    def switch_plan(self, firing: Firing, plan_code: str) -> Outcome:
        return switch_account_plan(self.hook, firing.account_id, self.plan(plan_code), plan_code, firing.event_time)

    # -- balances -----------------------------------------------------------------------------
    def adjust_balance(self, firing: Firing, *, reset_to: float | None = None,
                       top_up: float | None = None) -> Outcome:
        kind = "reset" if reset_to is not None else "top_up"
        balance = self.target_balance(firing)
        if balance is None:
            return Outcome("skipped", f"account {firing.account_code or firing.account_id} has no active balance")
        return apply_balance_change(self.hook, balance, marker(firing, kind), reset_to=reset_to, top_up=top_up,
                                    tx_type=self.tx_type)

    def open_next_balance(self, firing: Firing, spec: OpenNextBalance) -> Outcome:
        """Open the firing balance's next period once, then credit it once (see the module doc)."""
        if firing.entity != "balance":  # config validation rejects this; a hand-made firing may not
            return Outcome("skipped", f"rule {firing.rule} has no firing balance (condition {firing.kind})")
        current = self.hook.get_balance(firing.entity_id)
        start, end = next_period(current, spec, parse_instant(firing.event_time))
        code = next_balance_code(spec, current, start, end)
        account = firing.account_code or firing.account_id
        siblings = list(self.hook.list_balances(account_id=firing.account_id))
        opened = next((b for b in siblings if b.get("code") == code), None)
        fresh = opened is None
        if opened is not None:
            note = f"balance {code} ({opened['id']}) already open"
        else:
            other = next((b for b in siblings if b["id"] != current["id"] and _next_of(current, b)), None)
            if other is not None:
                return Outcome("unchanged", f"account {account} already has balance {other.get('code')} "
                                            f"({other['id']}) from {other.get('startDate')} after balance "
                                            f"{current.get('code')}; not opening another")
            body = self._next_balance_body(current, code, start, end)

            def landed() -> dict[str, Any] | None:  # after a lost response: did m3ter create it?
                return next((b for b in self.hook.list_balances(account_id=firing.account_id)
                             if b.get("code") == code), None)

            opened = self.hook.create_balance(body, find_existing=landed)
            note = (f"opened balance {code} ({opened.get('id')}) {body['startDate']}..{body['endDate']}"
                    + (" without a contract (the old one ends before it)"
                       if current.get("contractId") and "contractId" not in body else ""))
        credited = next((t for t in self.hook.list_balance_transactions(opened["id"])
                         if str(t.get("description", "")).startswith("m3sh open_next_balance ")), None)
        if credited is not None:
            return Outcome("done" if fresh else "unchanged",
                           f"{note}; credit already applied (transaction {credited.get('id')})")
        amount = spec.amount if spec.amount is not None else self._initial_credit(current)
        if not amount:
            return Outcome("done" if fresh else "unchanged", f"{note}; no credit (amount 0)")
        body = {"amount": amount, "description": marker(firing, "open_next_balance")}
        type_id = self.tx_type(TX_TYPE_CREDIT)
        if type_id:
            body["transactionTypeId"] = type_id
        tx = self.hook.create_balance_transaction(opened["id"], body)
        return Outcome("done", f"{note}; credited {amount:g} (transaction {(tx or {}).get('id')})")

    def _initial_credit(self, balance: Mapping[str, Any]) -> float:
        """The credit the period was opened with; top-ups during it are not carried over."""
        summary = self.hook.balance_transaction_summary(str(balance["id"])) or {}
        initial = summary.get("initialCreditAmount")
        return float(initial) if initial else float(_total_credit(summary) or 0.0)

    def _next_balance_body(self, current: Mapping[str, Any], code: str, start: dt.datetime,
                           end: dt.datetime) -> dict[str, Any]:
        body: dict[str, Any] = {k: current[k] for k in NEXT_BALANCE_COPIED if current.get(k) is not None}
        name = _NAME_PERIOD_SUFFIX.sub("", str(current.get("name") or current.get("code")))
        body.update(accountId=current["accountId"], code=code, name=f"{name} (from {start:%Y-%m-%d})",
                    startDate=iso_instant(start), endDate=iso_instant(end))
        if current.get("rolloverEndDate"):  # the grace period keeps its length after the new end
            grace = parse_instant(str(current["rolloverEndDate"])) - parse_instant(str(current["endDate"]))
            body["rolloverEndDate"] = iso_instant(end + grace)
            if current.get("rolloverAmount") is not None:
                body["rolloverAmount"] = current["rolloverAmount"]
        if current.get("contractId"):
            contract = self.hook.get_contract(str(current["contractId"]))
            if contract.get("endDate") and contract_end_instant(contract) > start:
                body["contractId"] = contract["id"]
        return body

    # -- custom fields ------------------------------------------------------------------------
    def set_custom_fields(self, firing: Firing, fields: dict[str, Any], on: str) -> Outcome:
        if on == "accountplan":
            # Contract rules aim at the plan from the contract's end (a renewal a switch_plan before
            # attached); without one the plan running now is current (it ends with the contract).
            now = dt.datetime.now(dt.UTC)
            at = max(now, parse_instant(firing.event_time)) if firing.entity == "contract" else now
            account_plans = self.account_plans(firing.account_id)
            plans = ([ap for ap in account_plans if active_at(ap, at)]
                     or [ap for ap in account_plans if active_at(ap, now)])
            if not plans:
                return Outcome("skipped", f"account {firing.account_code} has no account plan active at {at:%Y-%m-%d}")
            target, path = plans[0], "accountplans"
            update: Callable[..., dict[str, Any]] = self.hook.update_account_plan
        else:
            target, path = self.hook.get_account(firing.account_id), "accounts"
            update = self.hook.update_account
        return write_custom_fields(target, fields, update, path)

    # -- CRM ----------------------------------------------------------------------------------
    def crm_records(self, account_id: str) -> list[tuple[CrmSource, str]]:
        """``(source, record id)`` for every CRM record mapped to the account, whatever the source's state."""
        from m3sh.crm.links import SourceLinks

        links = SourceLinks(self.cfg.crm.sources)
        return links.account_links(self.hook.list_external_mappings_of("Account", account_id), enabled_only=False)

    def update_crm_fields(self, firing: Firing, fields: dict[str, str]) -> Outcome:
        records = self.crm_records(firing.account_id)
        if not records:
            return Outcome("skipped", f"account {firing.account_code or firing.account_id} has no external mapping "
                                      "to a Salesforce Account or HubSpot company of a configured CRM source "
                                      "(run m3sh_crm_sync first)")
        notes, changed = [], False
        for source, record_id in records:
            # a prefix is a source name (that org only) or a CRM type (every source of it)
            wanted = {k.split(".", 1)[1] if "." in k else k: v for k, v in fields.items()
                      if "." not in k or k.split(".", 1)[0] in (source.name, source.type)}
            if not wanted:
                continue
            system = source.type
            if not source.enabled:
                notes.append(f"{source.name} {record_id}: CRM source {source.name!r} is disabled; skipped")
                continue
            diff = self._crm_write(system, source.conn_id, record_id, wanted)
            changed = changed or bool(diff)
            what = f"set {sorted(diff)}" if diff else "unchanged"
            notes.append(f"{source.name} {CRM_TABLES[system]} {record_id}: {what}")
        return Outcome("done" if changed else "unchanged", "; ".join(notes) or "no field targets these CRMs")

    def _crm_write(self, system: str, conn_id: str, record_id: str, wanted: dict[str, str]) -> dict[str, str]:
        if system == "salesforce":
            from m3sh.hooks.salesforce import SalesforceSync

            sf = SalesforceSync(conn_id=conn_id)
            current = sf.get_record("Account", record_id, fields=list(wanted))
            diff = {k: v for k, v in wanted.items() if current.get(k) != v}
            if diff:
                sf.update_record("Account", record_id, diff)
            return diff
        from m3sh.hooks.hubspot import HubSpotError, HubSpotHook

        hs = HubSpotHook(hubspot_conn_id=conn_id)
        current = (hs.get_object("companies", record_id, properties=list(wanted)).get("properties") or {})
        diff = {k: v for k, v in wanted.items() if current.get(k) != v}
        if diff:
            result = hs.batch_update("companies", [{"id": record_id, "properties": diff}])
            if not result.ok:
                raise HubSpotError(f"HubSpot company {record_id}: update refused: {result.failed[0][1]}",
                                   object_type="companies", object_id=record_id)
        return diff

    # -- notify -------------------------------------------------------------------------------
    def notify(self, firing: Firing, notifier: str, rule: TriggerRule) -> Outcome:
        from m3sh.notifiers.alerts import send

        channel = next((n.model_dump() for n in self.cfg.alerting.notifiers if n.name == notifier), None)
        if channel is None:
            raise ValueError(f"notifier {notifier!r} is not in alerting.notifiers")
        actions = [describe(a) for a in rule.actions if a.notify is None]
        alert: dict[str, Any] = {
                 "event": "trigger", "rule": firing.rule, "key": firing.key, "account": firing.account_code,
                 "account_id": firing.account_id, "condition": firing.kind, "detail": firing.detail,
                 "actions": actions,
                 "dag_id": "m3sh_plan_triggers", "task_id": "apply_firings", "cause": firing.kind, "records": [],
                 "run_id": None, "try_number": None, "map_index": -1, "log_url": None}
        detail = ", ".join(f"{k}={v}" for k, v in firing.detail.items())
        text = (f":zap: m3sh rule {firing.rule} fired for account {firing.account_code} ({firing.kind}: {detail})\n"
                f"actions: {'; '.join(actions) or 'none'}")
        send(channel, alert, text)
        return Outcome("done", f"sent to {notifier} ({channel['type']})")


# ------------------------------------------------------------------ plan actions without a rule
# The idempotent writes behind switch_plan, reset/top-up and set_custom_fields, taking plain
# arguments so the rule engine (above) and the m3sh.operators share them.
def switch_account_plan(hook: M3terHook, account_id: str, plan: Mapping[str, Any], plan_code: str,
                        event_time: str) -> Outcome:
    """Attach ``plan`` to the account from ``event_time`` (ISO instant), ending the plan of the same
    product that is active then; no write when the account is already on it (see the module doc)."""
    at = parse_instant(event_time)

    def account_plans() -> list[dict[str, Any]]:
        return list(hook.list_account_plans(account_id=account_id, include_all=True))

    same_product = [ap for ap in account_plans() if ap.get("productId") in (None, plan.get("productId"))]
    current = next((ap for ap in same_product if active_at(ap, at)), None)
    if current is not None and current.get("planId") == plan["id"]:
        return Outcome("unchanged", f"already on {plan_code} at {event_time} (account plan {current['id']})")
    later = [ap for ap in same_product if ap is not current and ap.get("startDate")
             and parse_instant(ap["startDate"]) >= at]
    if any(ap.get("planId") == plan["id"] for ap in later):
        return Outcome("unchanged", f"{plan_code} already attached from {event_time}")
    if later:
        ap = min(later, key=lambda a: parse_instant(a["startDate"]))
        return Outcome("skipped", f"account already has account plan {ap['id']} (plan {ap.get('planId')}) "
                                  f"starting {ap['startDate']}; not overlapping it")
    body: dict[str, Any] = {"accountId": account_id, "planId": plan["id"], "startDate": event_time}
    ended = ""
    if current is not None:
        old_end = current.get("endDate")
        if old_end and parse_instant(old_end) > at:
            body["endDate"] = old_end
        if current.get("contractId"):
            body["contractId"] = current["contractId"]
        hook.update_account_plan(current["id"], {"endDate": event_time}, current=current)
        ended = f"ended account plan {current['id']} (plan {current.get('planId')}) at {event_time}; "

    def landed() -> dict[str, Any] | None:  # after a lost response: did m3ter attach it?
        return next((ap for ap in account_plans() if ap.get("planId") == plan["id"] and ap.get("startDate")
                     and parse_instant(ap["startDate"]) == at), None)

    created = hook.create_account_plan(body, find_existing=landed)
    return Outcome("done", f"{ended}attached {plan_code} as account plan {created.get('id')}")


def apply_balance_change(hook: M3terHook, balance: Mapping[str, Any], note: str, *, reset_to: float | None = None,
                         top_up: float | None = None, tx_type: Callable[[str], str | None] | None = None) -> Outcome:
    """One balance transaction described by ``note``: an existing transaction with that description
    means the change was already applied (a retry or re-run), so nothing is written twice."""
    kind = "reset" if reset_to is not None else "top_up"
    done = [t for t in hook.list_balance_transactions(str(balance["id"])) if t.get("description") == note]
    if done:
        return Outcome("unchanged", f"{kind} already applied to balance {balance['id']} "
                                    f"(transaction {done[0].get('id')})")
    amount = float(balance.get("amount") or 0.0)
    delta = round((reset_to - amount) if reset_to is not None else float(top_up or 0.0), 6)
    if abs(delta) < 1e-9:
        return Outcome("unchanged", f"balance {balance['id']} is already {amount:g}")
    body: dict[str, Any] = {"amount": delta, "description": note}
    type_code = TX_TYPE_TOP_UP if kind == "top_up" else TX_TYPE_CREDIT
    type_id = tx_type(type_code) if delta > 0 and tx_type is not None else None
    if type_id:
        body["transactionTypeId"] = type_id
    tx = hook.create_balance_transaction(str(balance["id"]), body)
    return Outcome("done", f"balance {balance['id']}: {amount:g} -> {amount + delta:g} (transaction "
                           f"{(tx or {}).get('id')})")


def write_custom_fields(target: Mapping[str, Any], fields: Mapping[str, Any],
                        update: Callable[..., dict[str, Any]], what: str) -> Outcome:
    """Write only the custom fields whose value differs from ``target``'s (no write when none does)."""
    current = target.get("customFields") or {}
    diff = {k: v for k, v in fields.items() if current.get(k) != v}
    if not diff:
        return Outcome("unchanged", f"{what} {target['id']} custom fields already {dict(fields)}")
    update(target["id"], {"customFields": diff}, current=target)
    return Outcome("done", f"{what} {target['id']} custom fields set: {diff}")


# ------------------------------------------------------------------------------ next balance
def add_months(at: dt.datetime, months: int) -> dt.datetime:
    """``at`` plus whole calendar months; a day past the month's end becomes its last day."""
    index = at.year * 12 + at.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return at.replace(year=year, month=month, day=min(at.day, last))


def whole_months(start: dt.datetime, end: dt.datetime) -> int | None:
    """How many calendar months ``start..end`` spans, or None when it is not a whole number of them."""
    n = (end.year - start.year) * 12 + end.month - start.month
    return n if n >= 1 and add_months(start, n) == end else None


def next_period(current: Mapping[str, Any], spec: OpenNextBalance,
                event_time: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start and end of the period after ``current``: as long as it (in months when it spans whole
    months, so a monthly balance stays on the calendar) unless ``spec.months`` says otherwise."""
    old_start, old_end = parse_instant(str(current["startDate"])), parse_instant(str(current["endDate"]))
    start = old_end if spec.start == "balance_end" else min(event_time, old_end)
    months = spec.months or whole_months(old_start, old_end)
    return start, (add_months(start, months) if months else start + (old_end - old_start))


def next_balance_code(spec: OpenNextBalance, current: Mapping[str, Any], start: dt.datetime,
                      end: dt.datetime) -> str:
    code = str(current.get("code") or current["id"])
    out = spec.code.format(code=code, series=_PERIOD_SUFFIX.sub("", code), start=start, end=end)
    if not 0 < len(out) <= MAX_BALANCE_CODE or out != out.strip():
        raise ValueError(f"open_next_balance: code {out!r} for the balance after {code!r} is not a valid m3ter "
                         f"balance code (1..{MAX_BALANCE_CODE} characters, no surrounding spaces)")
    return out


def _next_of(current: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Is ``other`` a next period of ``current``: same currency and products, starting inside or right
    at the end of ``current``'s period."""
    if not other.get("startDate") or other.get("currency") != current.get("currency"):
        return False
    if sorted(other.get("productIds") or []) != sorted(current.get("productIds") or []):
        return False
    at = parse_instant(str(other["startDate"]))
    return parse_instant(str(current["startDate"])) < at <= parse_instant(str(current["endDate"]))


# ------------------------------------------------------------------------------------ engine
def plan_actions(firing: Firing, rule: TriggerRule, ledger_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a dry run reports for one firing: would it act, and which actions."""
    status = (ledger_entry or {}).get("status")
    would_act = status not in ("done", "abandoned")
    return {"key": firing.key, "rule": firing.rule, "account": firing.account_code,
            "status": "would_fire" if would_act else f"already_{status}",
            "actions": [describe(a) for a in rule.actions] if would_act else [], "detail": firing.detail}


def apply_firing(firing: Firing, rule: TriggerRule, runner: ActionRunner, ledger: Ledger,
                 run_id: str) -> dict[str, Any]:
    """Claim the key, run the rule's remaining actions in order, record each outcome.

    An action that fails stops the rule's later actions (they may depend on it, e.g. a reset after
    a plan switch); the entry is ``failed`` and the next pass resumes from that action.
    """
    claim = ledger.claim(firing, run_id)
    if not claim.acquired:
        log.info("%s: not acting: %s", firing.key, claim.reason)
        return {"key": firing.key, "rule": firing.rule, "account": firing.account_code, "status": "skipped",
                "reason": claim.reason}
    # Re-use the first claim's event time so a resumed plan switch lands on the same instant.
    event_time = claim.entry.get("event_time") or firing.event_time
    if event_time != firing.event_time:
        firing = Firing.from_dict({**firing.to_dict(), "event_time": event_time})
    finished = {a["index"]: a for a in claim.entry.get("actions", [])
                if a["status"] in ("done", "unchanged", "skipped")}
    results: list[dict[str, Any]] = []
    error: str | None = None
    for index, action in enumerate(rule.actions):
        if index in finished:
            results.append(finished[index])
            continue
        try:
            out = runner.run(firing, action, rule)
        except Exception as exc:  # recorded per firing; one bad account never blocks the others
            error = f"{action.kind}: {type(exc).__name__}: {str(exc)[:500]}"
            out = Outcome("failed", error)
            log.warning("%s: action %d (%s) failed: %s", firing.key, index, action.kind, error)
        log.info("%s: action %d %s -> %s %s", firing.key, index, describe(action), out.status, out.detail)
        record = {"index": index, "kind": action.kind, "status": out.status, "detail": out.detail,
                  "at": dt.datetime.now(dt.UTC).isoformat()}
        results.append(record)
        claim.entry["actions"] = [*(a for a in claim.entry.get("actions", []) if a["index"] != index), record]
        ledger.update(claim)
        if out.status == "failed":
            break
    ledger.finish(claim, "failed" if error else "done", error)
    return {"key": firing.key, "rule": firing.rule, "account": firing.account_code,
            "status": "failed" if error else "fired", "error": error,
            "actions": [f"{r['kind']}:{r['status']}" for r in results]}


def summarize(outcomes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    outs = list(outcomes)
    by_status: dict[str, int] = {}
    for o in outs:
        by_status[str(o.get("status"))] = by_status.get(str(o.get("status")), 0) + 1
    return {"firings": len(outs), **by_status,
            "failed_keys": [o["key"] for o in outs if o.get("status") == "failed"]}
