"""Bulk usage ingest through m3ter's file uploads vs the request path: ``python -m benchmarks.usage_bulk [--rows N]``.

Starts m3ter + moto with m3ter's documented limits on, writes two gzipped CSVs of N usage rows each
(0.1 % malformed, :func:`benchmarks.usage_ingest.write_usage_file`) and ingests them in child
processes with the real code: one through the Ingest API (``usage_ingest``'s child, paced at the
documented limit), one through the file uploads (``bulk_min_bytes``: validated rows built into part
files, uploaded, every job awaited and finished). ``bulk_rows_per_s`` is end to end; ``bulk_vs_request_path``
compares it with the request path's rate in the same run; ``bulk_upload_rows_per_s`` is the client's
side alone (rows read, validated, written and uploaded). ``lost``/``duplicates`` come from m3ter's usage
query. The emulator processes uploaded rows as fast as it can: m3ter documents 2,000 measurements/s,
files processed sequentially ("higher processing rates are available"), reported as
``bulk_bound_rows_per_s_documented``, a documented figure, not a measurement. What production would
see follows from it: ``bulk_vs_request_path_documented`` divides the bulk rate, capped at those 2,000
rows/s, by the request path's, capped at what one source IP may send for longer than 5 minutes
(5,000 requests of 1,000 measurements per rolling 5 minutes); derived from m3ter's documents, not
measured (the sandbox processes files at the documented rate only when asked). Its own module (not a
phase of ``usage_ingest``) so it runs beside that benchmark's phases; the last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import current_rss_mb, emit, last_json_line, peak_rss_mb, sandbox, sized
from benchmarks.usage_ingest import (
    BUCKET,
    FEED,
    PREFIX,
    demo_accounts,
    run_child,
    upload,
    usage_count,
    write_usage_file,
)

DOCUMENTED_FILE_ROWS_PER_S = 2_000  # m3ter's guide "File Upload Service API"
# m3ter's "Ingest API Limits": 5,000 requests per source IP per rolling 5 minutes, 1,000 per request.
SUSTAINED_REQUEST_ROWS_PER_S_PER_IP = 5_000 * 1_000 / 300


def child(key: str) -> None:
    """Ingest one object through the file uploads, as the DAG's task does, and await its jobs; print JSON."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="  [bulk] %(message)s")
    from m3sh.config import get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.usage.bulk import finish_bulk, pending_job_ids, wait_jobs
    from m3sh.usage.ingest import AccountLookup, ingest_s3_object

    cfg = get_config()
    feed = next(f for f in cfg.usage.feeds if f.name == FEED).model_copy(update={"bulk_min_bytes": 1})
    hook = M3terHook(cfg.m3ter.conn_id)
    state = Storage.from_config(cfg.storage)
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    # one S3 client for both buckets, as the DAG's run does (m3sh.usage.run)
    result = ingest_s3_object(feed=feed, key=key, m3ter=hook, source_storage=state.for_bucket(feed.conn_id, BUCKET),
                              state=state, account_exists=AccountLookup(hook),
                              progress_every=cfg.usage.progress_every_rows)
    uploaded = time.perf_counter() - t0
    jobs, error = wait_jobs(hook, pending_job_ids([result.to_dict()]), poll_interval=0.1, timeout_s=3600)
    final = finish_bulk(result.to_dict(), jobs, state, error)
    emit({"key": key, "status": final["status"], "rows_read": result.rows_read, "accepted": result.accepted,
          "seconds": time.perf_counter() - t0, "uploaded_s": uploaded, "files": len(result.jobs),
          "bulk_processed": final["bulk_processed"], "bulk_failed": final["bulk_failed"],
          "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()})


def run_bulk_child(key: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.usage_bulk", "--child", key], stdout=subprocess.PIPE,
                          text=True, check=False)
    out = last_json_line(proc.stdout)
    if proc.returncode != 0 or out is None or out.get("status") != "complete":
        raise RuntimeError(f"bulk child for {key} failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return out


def run(rows: int) -> dict[str, Any]:
    accounts = demo_accounts()
    tmp = Path(tempfile.mkdtemp(prefix="m3sh-bench-bulk-"))
    valid = {name: write_usage_file(tmp / f"{name}.csv.gz", rows, name, accounts) for name in ("request", "bulk")}
    with sandbox(["m3ter", "moto"], limits=True) as box:
        for name in valid:
            upload(box, tmp / f"{name}.csv.gz", f"{PREFIX}{name}.csv.gz")
        request = run_child(f"{PREFIX}request.csv.gz")  # the Ingest API, paced at m3ter's documented limit
        after_request = usage_count(box)
        bulk = run_bulk_child(f"{PREFIX}bulk.csv.gz")
        landed = usage_count(box) - after_request
    request_rate = request["rows_read"] / request["seconds"]
    bulk_rate = bulk["rows_read"] / bulk["seconds"]
    return {
        "benchmark": "usage_bulk",
        "rows": rows,
        "request_rows_per_s": round(request_rate),
        "bulk_rows_per_s": round(bulk_rate),
        "bulk_vs_request_path": round(bulk_rate / request_rate, 2),
        "bulk_upload_rows_per_s": round(bulk["rows_read"] / bulk["uploaded_s"]),
        "bulk_bound_rows_per_s_documented": DOCUMENTED_FILE_ROWS_PER_S,
        "bulk_vs_request_path_documented": round(min(bulk_rate, DOCUMENTED_FILE_ROWS_PER_S)
                                                 / min(request_rate, SUSTAINED_REQUEST_ROWS_PER_S_PER_IP), 3),
        "bulk_seconds": round(bulk["seconds"], 3),
        "bulk_files": bulk["files"],
        "bulk_failed_rows": bulk["bulk_failed"],
        "peak_rss_mb": bulk["peak_rss_mb"],
        "request_lost": valid["request"] - after_request,
        "lost": max(0, valid["bulk"] - landed),
        "duplicates": max(0, landed - valid["bulk"]),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=sized(300_000, 50_000))
    parser.add_argument("--child", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    emit(run(args.rows))


if __name__ == "__main__":
    main()
