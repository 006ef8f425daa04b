"""The invoice operators without m3sh.yaml: template fields, parse-time errors naming task and
argument, and collect -> NetSuite -> summary on an in-memory m3ter, S3 and NetSuite: one customer
and one invoice per bill by external id, a bill missing its subsidiary set aside by name, NetSuite's
refusal quoted as action needed, and a re-run that writes nothing.

Every test runs with the config loader made to raise (as tests/unit/test_operators.py does).
The sandbox run of the same operators in a user's DAG is tests/integration/test_invoice_operators_in_user_dag.py.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

from m3sh.dagkit.errors import RunFailed
from m3sh.hooks.netsuite import NetSuiteError
from m3sh.operators import (
    M3terBillsCollectOperator,
    M3terBillsDeliverOperator,
    M3terBillsToNetSuiteOperator,
    M3terInvoiceRunSummaryOperator,
)
from m3sh.storage import Storage

pytestmark = pytest.mark.usefixtures("no_m3sh_yaml")  # operators must work without it

NS = {"subsidiary_id": "1", "default_item_id": "503", "item_map": {"STANDING_CHARGE": "502"}}




# ------------------------------------------------------------------------------------ in-memory systems
class MemoryStorage(Storage):
    """Storage's JSON/JSONL interface over a dict instead of S3."""

    def __init__(self) -> None:
        super().__init__("aws_default", "bucket", "m3sh/")
        self.objects: dict[str, Any] = {}

    def get_json(self, key: str) -> Any | None:
        return self.objects.get(key)

    def iter_jsonl(self, key: str) -> Iterator[dict[str, Any]]:
        yield from self.objects.get(key, [])

    def list_keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        yield from ({"Key": k} for k in sorted(self.objects) if k.startswith(prefix))

    def put_json(self, key: str, value: Any) -> str:
        self.objects[key] = value
        return self.uri(key)

    def put_jsonl(self, key: str, rows: Iterable[dict[str, Any]]) -> int:
        self.objects[key] = list(rows)
        return len(self.objects[key])


def _bill(bill_id: str, account_id: str, currency: str, amount: float) -> dict[str, Any]:
    return {"id": bill_id, "accountId": account_id, "status": "APPROVED", "currency": currency,
            "billDate": "2026-11-01", "startDate": "2026-10-01", "endDate": "2026-11-01", "billTotal": amount,
            "dtLastModified": "2026-11-01T02:00:00Z", "sequentialInvoiceNumber": f"INV-{bill_id}",
            "lineItems": [{"lineItemType": "STANDING_CHARGE", "subtotal": amount, "quantity": 1,
                           "averageUnitPrice": amount, "sequenceNumber": 1, "description": "Platform fee"}]}


class FakeM3ter:
    """The m3ter reads the collect step makes and the export stamp the summary writes."""

    def __init__(self) -> None:
        self.bills = {b["id"]: b for b in (_bill("b1", "acc-1", "USD", 100.0), _bill("b2", "acc-2", "USD", 42.5),
                                           _bill("b3", "acc-3", "EUR", 9.0))}
        self.accounts = {
            "acc-1": {"id": "acc-1", "code": "acme", "name": "Acme", "customFields": {"subsidiary": "us"}},
            "acc-2": {"id": "acc-2", "code": "globex", "name": "Globex", "customFields": {}},
            "acc-3": {"id": "acc-3", "code": "initech", "name": "Initech", "customFields": {}},
        }
        self.updates: list[tuple[str, dict[str, Any]]] = []

    def list_bills(self, *, status: str | None = None) -> list[dict[str, Any]]:
        return [b for b in self.bills.values() if status is None or b["status"] == status]

    def get_bill(self, bill_id: str) -> dict[str, Any]:
        return self.bills[bill_id]

    def get_account(self, account_id: str) -> dict[str, Any]:
        return self.accounts[account_id]

    def list_external_mappings(self) -> list[dict[str, Any]]:
        return []

    def update_account(self, account_id: str, changes: dict[str, Any]) -> None:
        self.updates.append((account_id, changes))


class FakeNetSuite:
    """Upserts by external id (the NetSuite hook's contract), recorded; ``refuse`` maps a bill id
    to the 400 NetSuite answers for its invoice."""

    account_id = "TSTDRV1"

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.refuse: dict[str, str] = {}

    def suiteql(self, query: str) -> list[dict[str, Any]]:
        return [{"id": "1", "symbol": "USD"}, {"id": "4", "symbol": "EUR"}]

    def upsert_by_external_id(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        if record_type == "invoice" and external_id in self.refuse:
            raise NetSuiteError(400, "USER_ERROR", self.refuse[external_id], record_type="invoice",
                                external_id=external_id)
        self.writes.append((record_type, external_id))
        self.records[(record_type, external_id)] = body
        return str(100 + list(self.records).index((record_type, external_id)))


@pytest.fixture
def systems(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    netsuite = FakeNetSuite()
    monkeypatch.setattr("m3sh.invoicing.netsuite.NetSuiteHook", lambda conn_id: netsuite)
    return {"m3ter": FakeM3ter(), "storage": MemoryStorage(), "netsuite": netsuite}


def _user_dag(systems: dict[str, Any], **collect_kwargs: Any) -> tuple[Any, Any, Any]:
    """collect -> NetSuite -> summary as a user writes it, wired to the in-memory systems."""
    with DAG("user_invoices", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
        collect = M3terBillsCollectOperator(task_id="collect", destinations=["netsuite"], bucket="bucket",
                                            subsidiary_by_currency={"USD": "us"}, **collect_kwargs)
        to_ns = M3terBillsToNetSuiteOperator(task_id="to_netsuite", staged=collect.output, bucket="bucket",
                                             netsuite_conn_id="netsuite_default", **NS)
        summary = M3terInvoiceRunSummaryOperator(task_id="summary", staged=collect.output, bucket="bucket",
                                                 trigger_rule="all_done")
    for op in (collect, to_ns, summary):
        op.__dict__["hook"] = systems["m3ter"]  # fills the cached_property, as the first access would
        op._storage = lambda: systems["storage"]
    return collect, to_ns, summary


def _run(ops: tuple[Any, Any, Any], run_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    collect, to_ns, summary = ops
    context: dict[str, Any] = {"run_id": run_id}
    refs = collect.execute(context)
    to_ns.staged = refs  # what Airflow resolves collect.output to
    summary.staged = refs
    return refs, to_ns.execute(context)


# ---------------------------------------------------------------------------------- template fields
def test_template_fields() -> None:
    collect = M3terBillsCollectOperator(task_id="c", destinations=["netsuite"], bucket="b")
    deliver = M3terBillsToNetSuiteOperator(task_id="d", staged={}, bucket="b", **NS)
    summary = M3terInvoiceRunSummaryOperator(task_id="s", staged={}, bucket="b")
    assert tuple(collect.template_fields) == ("m3ter_conn_id", "bill_ids", "only_destinations", "full_scan")
    assert tuple(deliver.template_fields) == ("staged", "preview", "redeliver")
    assert tuple(summary.template_fields) == ("m3ter_conn_id", "staged", "preview")
    assert deliver.threads == 1  # NetSuite: one request stream per task; the hook limits the account
    assert M3terBillsDeliverOperator(task_id="d", staged={}, bucket="b",
                                     destination={"type": "s3", "name": "archive", "bucket": "x"}).threads == 4


@pytest.mark.parametrize(("make", "message"), [
    (lambda: M3terBillsCollectOperator(task_id="c", bucket="b"), "c: give destinations=[names] (or config=...)"),
    (lambda: M3terBillsCollectOperator(task_id="c", destinations=["ns"]), "c: give bucket=... (where bills"),
    (lambda: M3terBillsCollectOperator(task_id="c", destinations=["ns"], bucket="b", bill_states=["PAID"]),
     "c: invalid invoicing arguments (bill_states.0: Input should be"),
    (lambda: M3terBillsToNetSuiteOperator(task_id="d", staged={}, bucket="b", locked_invoice_policy="void",  # type: ignore[arg-type]
                                          **NS),
     "d: invalid NetSuite arguments (locked_invoice_policy: Input should be 'update' or 'credit_memo'"),
    (lambda: M3terBillsDeliverOperator(task_id="d", staged={}, bucket="b", destination="netsuite_us"),
     "d: destination 'netsuite_us' is a name; give the destination object"),
    (lambda: M3terBillsDeliverOperator(task_id="d", staged={}, bucket="b", destination={"type": "netsuite",
                                                                                       "name": "ns"}),
     "d: invalid destination (netsuite.conn_id: Field required"),
    (lambda: M3terBillsDeliverOperator(task_id="d", staged={}, bucket="b", threads=0,
                                       destination={"type": "s3", "name": "a", "bucket": "x"}),
     "d: threads must be >= 1, got 0"),
    (lambda: M3terInvoiceRunSummaryOperator(task_id="s", staged={}), "s: give bucket=..."),
])
def test_bad_arguments_fail_at_parse_time_naming_task_and_argument(make: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message), str(err.value)


# ------------------------------------------------------------------------- collect -> NetSuite -> summary
def test_bills_become_one_invoice_each_and_a_rerun_writes_nothing(systems: dict[str, Any]) -> None:
    ops = _user_dag(systems, full_scan=True)
    refs, counts = _run(ops, "manual__1")
    # b3 (EUR) has no subsidiary (no custom field, no currency default): set aside, by name.
    assert {k: refs[k] for k in ("bills", "set_aside", "by_destination")} == {
        "bills": 2, "set_aside": 1, "by_destination": {"netsuite": 2}}
    assert counts == {"delivered": 2}
    ns = systems["netsuite"]
    assert sorted(ns.writes) == [("customer", "acc-1"), ("customer", "acc-2"), ("invoice", "b1"), ("invoice", "b2")]
    invoice = ns.records[("invoice", "b2")]
    assert invoice["subsidiary"] == {"id": "1"} and invoice["currency"] == {"id": "1"}
    assert [(li["item"], li["amount"]) for li in invoice["item"]["items"]] == [({"id": "502"}, 42.5)]

    with pytest.raises(RunFailed) as failed:
        ops[2].execute({"run_id": "manual__1"})
    assert failed.value.records == ["b3"]
    assert "set aside: bill b3 (initech): missing subsidiary" in str(failed.value)
    storage = systems["storage"]
    latest = storage.objects["m3sh/reports/user_invoices/latest.json"]
    assert latest["by_destination"] == {"netsuite": {"delivered": 2}} and latest["exported"] == 2
    assert latest["report_key"] == "m3sh/reports/user_invoices/runs/manual__1.json"
    assert sorted(a for a, _ in systems["m3ter"].updates) == ["acc-1", "acc-2"]
    assert systems["m3ter"].updates[0][1]["customFields"]["exported_bill"] in ("b1", "b2")

    # The next run (same bills, nothing changed): the ledger skips both, NetSuite sees no write.
    writes, updates = len(ns.writes), len(systems["m3ter"].updates)
    _, again = _run(ops, "manual__2")
    assert again == {"unchanged": 2}
    assert len(ns.writes) == writes
    ops[2].fail_on_problems = False
    result = ops[2].execute({"run_id": "manual__2"})
    assert result["exported"] == 0 and result["set_aside"][0]["bill_id"] == "b3"
    assert len(systems["m3ter"].updates) == updates  # nothing newly exported: no stamp


def test_netsuite_refusal_is_action_needed_with_its_own_words(systems: dict[str, Any]) -> None:
    message = "Invalid item reference key 502 for subsidiary 1."
    systems["netsuite"].refuse["b1"] = message
    ops = _user_dag(systems, full_scan=True, bill_ids='["b1", "b2"]')
    refs, counts = _run(ops, "manual__1")
    assert refs["bills"] == 2 and counts == {"action_needed": 1, "delivered": 1}
    with pytest.raises(RunFailed) as failed:
        ops[2].execute({"run_id": "manual__1"})
    assert failed.value.records == ["b1"]
    assert f"netsuite: bill b1 (acme) ACTION NEEDED: {message}" in str(failed.value)
    ops[2].fail_on_problems = False
    result = ops[2].execute({"run_id": "manual__1"})
    assert result["action_needed"] == [{"bill_id": "b1", "account_code": "acme", "destination": "netsuite",
                                        "message": message}]
    assert result["exported"] == 1


def test_templated_arguments_are_read_as_json_and_bad_ones_name_the_field(systems: dict[str, Any]) -> None:
    collect, to_ns, _ = _user_dag(systems, bill_ids='["b2"]', only_destinations="[]", full_scan="false")
    refs = collect.execute({"run_id": "r"})
    assert refs["by_destination"] == {"netsuite": 1}
    to_ns.staged, to_ns.preview = refs, "true"
    assert to_ns.execute({"run_id": "r"}) == {"dry_run": 1}
    assert systems["netsuite"].writes == []
    collect.bill_ids = "b2, b3"
    with pytest.raises(AirflowFailException, match=r"collect: bill_ids='b2, b3' is not JSON"):
        collect.execute({"run_id": "r"})
    collect.bill_ids = '{"b2": 1}'
    with pytest.raises(AirflowFailException, match=r"collect: bill_ids must be a list or tuple, got \{'b2': 1\}"):
        collect.execute({"run_id": "r"})
    collect.bill_ids, collect.only_destinations = None, '["salesforce"]'
    with pytest.raises(AirflowFailException, match=r"only_destinations names unknown destinations \['salesforce'\]"):
        collect.execute({"run_id": "r"})
    to_ns.staged, to_ns.destination = refs, to_ns.destination.model_copy(update={"name": "netsuite_eu"})
    with pytest.raises(AirflowFailException, match=r"to_netsuite: the collect step routed bills to \['netsuite'\], "
                                                   r"not to 'netsuite_eu'"):
        to_ns.execute({"run_id": "r"})
    to_ns.staged = {"bills": 3}
    with pytest.raises(AirflowFailException, match=r"to_netsuite: staged must be what M3terBillsCollectOperator"):
        to_ns.execute({"run_id": "r"})


def test_summary_fails_by_name_when_collect_did_not_finish(systems: dict[str, Any]) -> None:
    _, _, summary = _user_dag(systems)
    summary.staged = None  # collect failed: its XCom resolves to None
    with pytest.raises(RunFailed, match="summary: no staged bills: the collect task did not finish"):
        summary.execute({"run_id": "r"})
    assert systems["storage"].objects == {}


def test_the_invoice_dag_module_imports_without_the_m3ter_sdk() -> None:
    """m3sh_invoice_sync's DAG file imports these operators on every parse; the m3ter SDK (~0.5 s)
    loads only when a task talks to m3ter."""
    code = "import sys, m3sh.dagkit.invoice_sync; print(sorted({'m3ter', 'm3sh.hooks.m3ter'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
