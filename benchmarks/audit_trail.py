"""The plan-automation audit trail at scale: ``python -m benchmarks.audit_trail [--firings 5000,100000]``.

What a page view of the audit trail costs in S3 requests at a given ledger size, with the real
reader (:class:`m3sh.automation.audit.AuditTrail`), for: page 1 unfiltered, a rule filter, one week,
the last page, and the CSV export (index columns). Requests are counted at the HTTP level (every
attempt botocore sends).

The ledgers are laid out in in-process moto: N firings spread evenly over ``--days`` (100 days for
5,000, as in ``tests/integration/test_ui_view.py``; a year for more), each a ledger entry plus its
index key, both computed by the ledger's own key functions from the entry the real ledger would
hold. They are put straight into moto's backend (a million HTTP puts would take hours on a small
machine); the reads go through boto3 as in production. Seconds are moto's, reported for context
only: the request counts are what carry over to S3 (at 1,000 keys a listing).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

from benchmarks._common import emit, quick

BUCKET = "m3sh-bench-audit"
RULES = ("prepaid_depleted", "usage_cap", "renewal_due", "heavy_starter")
OUTCOMES = ("done",) * 13 + ("failed",) * 3 + ("claimed",) * 2 + ("abandoned",) * 2


def populate(backend: Any, prefix: str, firings: int, days: int, now: dt.datetime) -> None:
    from m3sh.automation.ledger import entry_index_key, format_time, ledger_object_key

    step = dt.timedelta(days=days) / firings
    for n in range(firings):
        at = format_time(now - step * n - dt.timedelta(microseconds=n))
        code = f"acct-{n % 97:02d}.example"
        key = f"{RULES[(n // 20) % 4]}|id-{code}|balance:bal-{n}|credits={n}"
        entry = {"key": key, "rule": RULES[(n // 20) % 4], "kind": "balance_below", "account_id": f"id-{code}",
                 "account_code": code, "status": OUTCOMES[n % 20], "rev": 2, "first_seen": at, "claimed_at": at,
                 "attempts": 1, "actions": [{"index": 0, "kind": "notify", "status": "done", "detail": "sent"}],
                 "history": []}
        backend.put_object(BUCKET, ledger_object_key(prefix, key), json.dumps(entry).encode())
        backend.put_object(BUCKET, entry_index_key(prefix, entry), b"")


def measure(trail: Any, params: dict[str, str], page: int | None = None) -> dict[str, Any]:
    from m3sh.automation.audit import AuditFilter

    flt = AuditFilter.from_params(params)
    t0 = time.perf_counter()
    if page is None:  # the CSV export
        with trail.count_requests() as requests:
            rows = sum(1 for _ in trail.csv_rows(flt)) - 1
        return {"requests": requests[0], "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}
    result = trail.page(flt, page if page > 0 else 1, backfill=False)
    if page < 0:  # the last page
        result = trail.page(flt, result.pages, backfill=False)
    return {"requests": result.s3_requests, "rows": result.total, "shown": len(result.entries),
            "seconds": round(time.perf_counter() - t0, 2)}


def run(firings: int, days: int) -> dict[str, Any]:
    import boto3
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from m3sh.automation.audit import AuditTrail
    from m3sh.storage import Storage

    now = dt.datetime.now(dt.UTC)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        populate(s3_backends[DEFAULT_ACCOUNT_ID]["aws"], "m3sh/", firings, days, now)
        print(f"{firings:,} firings laid out in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        storage = Storage("aws_default", BUCKET, "m3sh/")
        storage.__dict__["client"] = client
        trail = AuditTrail(storage)
        week = {"from": (now - dt.timedelta(days=13)).date().isoformat(),
                "to": (now - dt.timedelta(days=7)).date().isoformat()}
        views = {"page1": measure(trail, {}, 1), "rule": measure(trail, {"rule": "usage_cap"}, 1),
                 "week": measure(trail, week, 1), "last_page": measure(trail, {}, -1), "csv": measure(trail, {})}
        months = len(trail.ledger.index_months())
    for name, v in views.items():
        print(f"{firings:>7,} firings / {months} months, {name:<9}: {v['requests']:>4} S3 requests "
              f"({v['rows']:,} rows, {v['seconds']}s in moto)", file=sys.stderr, flush=True)
    return {"months": months, **{f"requests_{name}": v["requests"] for name, v in views.items()},
            "moto_seconds_page1": views["page1"]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firings", default="5000" if quick() else "5000,100000",
                        help="comma-separated ledger sizes")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    for size in (int(s) for s in args.firings.split(",")):
        figures = run(size, 100 if size <= 5000 else 365)
        result.update({f"{k}_{size}": v for k, v in figures.items()})
    emit(result)


if __name__ == "__main__":
    main()
