"""Chaos for the bulk usage path (m3ter file uploads): a worker ``kill -9``-ed while it uploads a part
file. The DAG run afterwards re-uses every job that arrived (found by its file name), uploads only
what did not, and m3ter ends with every valid row exactly once; malformed rows are dead-lettered once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tests.chaos.conftest import USAGE_PREFIX, Chaos, make_usage_file

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]
FEED = "platform_files"
# the stats collapse id-like segments: "generateUploadUrl" (17 letters) reads as a Salesforce id
GENERATE = "POST /organizations/{id}/fileuploads/measurements/{id}"

_WORKER = textwrap.dedent("""
    import sys
    from m3sh.config import get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.usage.ingest import AccountLookup, ingest_s3_object

    cfg = get_config()
    feed = next(f for f in cfg.usage.feeds if f.name == "platform_files")
    hook = M3terHook(cfg.m3ter.conn_id)
    ingest_s3_object(feed=feed, key=sys.argv[1], m3ter=hook, source_storage=Storage(feed.conn_id, feed.bucket),
                     state=Storage.from_config(cfg.storage), account_exists=AccountLookup(hook))
    print("finished", flush=True)
""")


def _puts(chaos: Chaos) -> int:
    """PUTs the upload front has answered (each part file's own path)."""
    counts = chaos.sb.stats("m3ter")["counts"]
    return sum(int(n) for k, n in counts.items() if k.startswith("PUT /_uploads/"))


def _wait_for(condition: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def test_worker_killed_mid_upload_then_the_dag_finishes_exactly_once(chaos: Chaos) -> None:
    # the demo feed made a bulk feed of small part files (~250 rows each)
    text = chaos.cfg_path.read_text()
    bulk = text.replace("      id_field: event_id\n",
                        "      id_field: event_id\n      bulk_min_bytes: 1\n      bulk_part_bytes: 65536\n", 1)
    assert bulk != text, "the demo config layout changed; update this test"
    chaos.cfg_path.write_text(bulk)
    accounts = sorted(a["code"] for a in chaos.m3ter().list_accounts())
    f = make_usage_file(USAGE_PREFIX + "bulk-killed.csv.gz", accounts, 3000, seed=7)
    chaos.put_usage(f)
    # slow uploads so the kill lands while a part's PUT is in flight
    chaos.faults("m3ter", path_regex="^/_uploads/", methods=["PUT"], latency_ms=700)
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, f.key], env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Generous: the worker imports Airflow first, which takes tens of seconds on a busy machine.
        _wait_for(lambda: _puts(chaos) >= 3 or proc.poll() is not None, "3 part files uploaded", 300)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:] if proc.stdout else ""
        _wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] > 0, "a part upload in flight", 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] == 0, "the in-flight upload done", 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    generated_before = int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0))
    count, _ = chaos.usage_totals()
    assert count < f.valid  # partly ingested: only the retry can complete it

    chaos.clear_faults("m3ter")
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    run = build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": [FEED]})
    assert run.state == "success"
    summary = run.get_task_instance("summarize").xcom_pull(task_ids="summarize")
    # every part re-built; the ones that arrived before the kill re-used, not uploaded again
    generated = int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0)) - generated_before
    assert generated <= summary["bulk_files"] - 3 + 1, (generated, summary["bulk_files"])
    assert summary["bulk_failed"] == 0
    chaos.assert_usage_exact([f])
    chaos.assert_dead_lettered([f])
    # and a later re-run of the finished file uploads nothing
    before = int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0))
    assert build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": [FEED]}).state == "success"
    assert int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0)) == before
