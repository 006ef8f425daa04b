"""NetSuite invoice delivery throughput against its governance: ``python -m benchmarks.invoice_sync``.

Starts only the NetSuite emulator (both demo accounts, limits on), sets 20 ms latency and a
concurrency limit of 5 per account, then delivers N synthetic enriched bills (half per account,
spread over 20 customers each) with the real :class:`~m3sh.invoicing.netsuite.NetSuiteDelivery`,
one thread pool per account, both accounts in parallel. The pool has twice ``concurrency`` threads:
the hook's per-account semaphore keeps at most ``concurrency`` requests in flight (``max_in_flight``
is reported, straight from the emulator), while the other threads prepare their next bill (ledger
look-up, body, signing) so a slot never waits on the client's own CPU work.

``bound_seconds`` is the governance floor: bills per account x latency / concurrency (one request
per invoice; the few customer upserts and the currency lookup are overhead). ``seconds`` is the first
pass (both accounts, from the first request to the last answer). A second pass with an empty ledger
re-upserts every bill to prove NetSuite-side idempotency: ``duplicates_after_rerun`` is invoices in
NetSuite minus bills. The last line printed is one JSON object.

At 20 ms per request the two accounts need 500 requests/s, so CPU decides how close ``seconds`` gets
to the bound: the client's (one process, one GIL) and the emulator's, which runs on the same cores,
as NetSuite's servers would not. ``client_cpu_ms_per_request`` and ``emulator_cpu_ms_per_request``
(first pass, whole processes, over the requests the emulator answered) show both; other work on the
machine slows both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import process_cpu_seconds
from m3sh.config import NetSuiteDestination
from m3sh.invoicing.deliver import deliver_batch
from m3sh.invoicing.ledger import MemoryLedger, WriteOnlyLedger
from m3sh.invoicing.models import BillLine, EnrichedBill
from m3sh.invoicing.netsuite import NetSuiteDelivery
from m3sh.sandbox.runner import Sandbox, SandboxEndpoints, free_port_base

ACCOUNTS = {"netsuite_default": "USD", "netsuite_eu": "EUR"}
CUSTOMERS_PER_ACCOUNT = 20


def make_bills(n: int, currency: str, tag: str) -> list[EnrichedBill]:
    bills = []
    for i in range(n):
        cust = i % CUSTOMERS_PER_ACCOUNT
        bills.append(EnrichedBill(
            bill_id=f"bench-{tag}-{i:06d}", account_id=f"acct-{tag}-{cust:03d}", account_code=f"cust-{tag}-{cust}",
            account_name=f"Bench Customer {tag} {cust}", currency=currency, bill_date="2026-11-01",
            due_date="2026-12-01", total=49.0 + i * 0.01, subsidiary=tag, invoice_number=f"INV-{i:06d}",
            lines=[BillLine(line_type="STANDING_CHARGE", description="Standing charge", quantity=1, unit_price=49,
                            amount=49.0),
                   BillLine(line_type="USAGE", description="Usage", quantity=i, unit_price=0.01, amount=i * 0.01)]))
    return bills


def destination(conn_id: str, concurrency: int) -> NetSuiteDestination:
    return NetSuiteDestination(type="netsuite", name=conn_id, conn_id=conn_id, subsidiary_id="1",
                               default_item_id="503", item_map={"STANDING_CHARGE": "502", "USAGE": "503"},
                               concurrency=concurrency)


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_pass(work: dict[str, list[EnrichedBill]], ledgers: dict[str, Any], concurrency: int) -> tuple[float, int]:
    """Deliver every account's bills in parallel; returns (seconds, failed deliveries)."""
    failed = 0
    lock = threading.Lock()

    def one(conn_id: str) -> None:
        nonlocal failed
        deliverer = NetSuiteDelivery(destination(conn_id, concurrency), ledgers[conn_id])
        results = deliver_batch(deliverer, work[conn_id], conn_id, threads=2 * concurrency)
        bad = [r for r in results if r.status != "delivered"]
        with lock:
            failed += len(bad)
        for r in bad[:3]:
            print(f"  {conn_id} bill {r.bill_id}: {r.status} {r.detail}")

    threads = [threading.Thread(target=one, args=(c,)) for c in work]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bills", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="m3sh-bench-invoice-"))
    sandbox = Sandbox(root, SandboxEndpoints(port_base=free_port_base(["netsuite"], start=19650)), only=["netsuite"])
    emulator_pid = int(sandbox.up(seed="demo", limits=True)["pids"]["netsuite"])
    os.environ.update(sandbox.endpoints.env())
    admin = sandbox.endpoints.url("netsuite") + "/_sandbox/"
    try:
        import requests

        requests.post(admin + "latency", json={"ms": args.latency_ms}, timeout=10).raise_for_status()
        requests.post(admin + "concurrency", json={"limit": args.concurrency, "reset_max": True},
                      timeout=10).raise_for_status()
        per_account = args.bills // len(ACCOUNTS)
        work = {conn_id: make_bills(per_account, cur, conn_id.rsplit("_", 1)[-1]) for conn_id, cur in ACCOUNTS.items()}
        ledgers: dict[str, Any] = {c: MemoryLedger() for c in work}
        print(f"delivering {per_account * len(work)} bills to {len(work)} NetSuite accounts "
              f"({args.latency_ms} ms latency, concurrency {args.concurrency}) ...")
        requests.delete(admin + "stats", timeout=10).raise_for_status()
        client_cpu, emulator_cpu = cpu_seconds(), process_cpu_seconds(emulator_pid)
        seconds, failed = run_pass(work, ledgers, args.concurrency)
        client_cpu, emulator_cpu = cpu_seconds() - client_cpu, process_cpu_seconds(emulator_pid) - emulator_cpu
        answered = int(requests.get(admin + "stats", timeout=10).json()["counts"].get("total", 0))
        # Second pass with an empty ledger: every bill is upserted again, NetSuite must not duplicate.
        rerun_s, rerun_failed = run_pass(work, {c: WriteOnlyLedger(MemoryLedger()) for c in work}, args.concurrency)
        state = requests.get(admin + "state", timeout=30).json()
        invoices = sum(a["counts"]["invoice"] for a in state["accounts"].values())
        rejected = sum(a["governance"]["rejected_429"] for a in state["accounts"].values())
        max_in_flight = max(a["governance"]["max_in_flight"] for a in state["accounts"].values())
        bills = per_account * len(work)
        bound = per_account * (args.latency_ms / 1000) / args.concurrency
        result = {
            "benchmark": "invoice_sync", "bills": bills, "accounts": len(work), "latency_ms": args.latency_ms,
            "concurrency": args.concurrency, "seconds": round(seconds, 3), "bound_seconds": round(bound, 3),
            "ratio_to_bound": round(seconds / bound, 3) if bound else None,
            "bills_per_second": round(bills / seconds, 1), "failed": failed + rerun_failed,
            "rerun_seconds": round(rerun_s, 3), "netsuite_invoices": invoices,
            "duplicates_after_rerun": invoices - bills, "netsuite_429s": rejected, "max_in_flight": max_in_flight,
            "requests": answered, "client_cpu_ms_per_request": round(client_cpu * 1000 / max(answered, 1), 3),
            "emulator_cpu_ms_per_request": round(emulator_cpu * 1000 / max(answered, 1), 3),
            "targets": {"ratio_to_bound": "<= 1.15", "duplicates_after_rerun": 0},
        }
    finally:
        sandbox.down(quiet=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
