"""Chaos for ``m3sh_usage_ingest``: storms, dropped responses, latency, a truncated upload and a
``kill -9`` mid-file. After each scenario m3ter's usage query must hold exactly the valid rows (0
lost, 0 duplicated), every malformed row must have one dead letter with a reason, and every failed
task exactly one alert.
"""

from __future__ import annotations

import json
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
MEASUREMENTS = "POST /organizations/{id}/measurements"
FEED = "platform_files"


def _run(**conf: Any) -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    # only the S3 feed: the demo's HTTP feed would add its own (correct) measurements to the totals
    return build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": [FEED], **conf})


def _accounts(chaos: Chaos) -> list[str]:
    return sorted(a["code"] for a in chaos.m3ter().list_accounts())


def _wait_for(condition: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.01)


def _posts(chaos: Chaos) -> int:
    return int(chaos.sb.stats("m3ter")["counts"].get(MEASUREMENTS, 0))


@pytest.fixture
def m3ter_few_retries(chaos: Chaos, monkeypatch: pytest.MonkeyPatch) -> None:
    """The m3ter SDK retries each call twice only, so a storm also exercises Airflow's task retries
    (and the manifest resume) instead of hiding inside one call's backoff."""
    conn = chaos.sb.endpoints.connections()["m3ter_default"]
    monkeypatch.setenv("AIRFLOW_CONN_M3TER_DEFAULT",
                       json.dumps({**conn, "extra": {**conn["extra"], "max_retries": 2}}))


def test_storm_drops_latency_and_a_truncated_upload_lose_and_duplicate_nothing(
        chaos: Chaos, m3ter_few_retries: None) -> None:
    accounts = _accounts(chaos)
    third = len(accounts) // 3
    assert third >= 1
    # disjoint accounts per file, so each file's landing can be checked on its own
    a = make_usage_file(USAGE_PREFIX + "a.csv.gz", accounts[:third], 3500, seed=1)
    b_full = make_usage_file(USAGE_PREFIX + "b.csv.gz", accounts[third:2 * third], 2600, seed=2)
    truncated = b_full.data[: int(len(b_full.data) * 0.7)]  # an upload cut off mid-stream
    chaos.put_usage(a)
    chaos.put_usage(type(b_full)(b_full.key, truncated, 0, {}))
    # 429 storm, 5xx burst and responses lost *after* m3ter stored the batch, all on the ingest path
    chaos.faults("m3ter", path_regex="/measurements$", methods=["POST"], burst_429=2, fail_next=2,
                 error_status=503, drop_next=2, drop_after_processing=True, retry_after_s=0)
    alerts = chaos.failure_alerts()

    run = _run()
    assert chaos.faults_spent("m3ter")
    assert run.state == "failed"  # the truncated file fails (and only it)
    failed = chaos.assert_failed_tasks_alerted_once(run, alerts)
    assert failed == {"m3sh_usage_ingest.summarize"}
    alert = next(m["text"] for m in chaos.sb.state("platform")["slack"] if "summarize" in m["text"])
    assert b_full.key in alert and "truncated" in alert  # the alert names the bad file and why
    # File a landed exactly; of the truncated file only whole rows, none twice, at most its valid rows.
    _, sums = chaos.usage_totals()
    assert {k: sums[k] for k in a.sums} == pytest.approx(a.sums)
    assert all(sums.get(k, 0) <= v for k, v in b_full.sums.items())

    # The complete file is re-uploaded (new ETag), a new file arrives, and m3ter answers slowly (2 s).
    c = make_usage_file(USAGE_PREFIX + "c.csv.gz", accounts[2 * third:], 400, seed=3)
    chaos.put_usage(b_full)
    chaos.put_usage(c)
    chaos.faults("m3ter", path_regex="/measurements$", methods=["POST"], latency_ms=2000)
    posts = _posts(chaos)
    alerts = chaos.failure_alerts()
    run = _run()
    assert run.state == "success"
    assert chaos.failure_alerts() == alerts
    assert _posts(chaos) - posts == 3 + 1  # b: 3 batches, c: 1; a skipped by its manifest
    chaos.assert_usage_exact([a, b_full, c])
    chaos.assert_dead_lettered([a, b_full, c])


_WORKER = textwrap.dedent("""
    import sys
    from m3sh.config import get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.usage.ingest import AccountLookup, ingest_s3_object

    cfg = get_config()
    feed = next(f for f in cfg.usage.feeds if f.name == "platform_files")
    hook = M3terHook(cfg.m3ter.conn_id)
    # One request in flight, so "killed while batch 8 is in flight" is exact; the DAG's retry below
    # runs with the configured window (a failure with several in flight: test_usage_ingest_dag).
    ingest_s3_object(feed=feed, key=sys.argv[1], m3ter=hook, source_storage=Storage(feed.conn_id, feed.bucket),
                     state=Storage.from_config(cfg.storage), account_exists=AccountLookup(hook), max_in_flight=1)
    print("finished", flush=True)
""")


def test_worker_killed_mid_batch_then_the_dag_retries_exactly_once(chaos: Chaos) -> None:
    """A worker process is SIGKILLed while it sends batch 8 of 12 (batches 1-7 confirmed, the
    manifest checkpointed after 5); the DAG run afterwards resumes from the checkpoint and m3ter
    ends with every valid row exactly once."""
    accounts = _accounts(chaos)
    f = make_usage_file(USAGE_PREFIX + "killed.csv.gz", accounts, 12_000, seed=4)
    chaos.put_usage(f)
    # slow batches so the kill lands mid-file, while a request is in flight
    chaos.faults("m3ter", path_regex="/measurements$", methods=["POST"], latency_ms=400)
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, f.key], env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Generous: the worker imports Airflow first, which takes tens of seconds on a busy machine.
        deadline = time.monotonic() + 300
        while _posts(chaos) < 7 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:] if proc.stdout else ""
        assert _posts(chaos) >= 7
        # batch 8 is on its way (each batch is held 400 ms): kill the worker once the emulator has it
        _wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] > 0, "batch 8 in flight", 60)
        # Up to 4 batches are in flight: the kill may cut one mid-body, and the emulator then sees a
        # truncated request (the spec guard would count it as m3sh's). Declared for the kill only.
        chaos.sb.admin("m3ter", "spec", "POST", expect_invalid={
            "path_regex": "/measurements$", "count": 1, "reason": "a request cut short by the SIGKILL"})
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # the emulator finishes the request that was in flight (its stats count it then)
        _wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] == 0, "the in-flight batch done", 60)
        chaos.sb.admin("m3ter", "spec", "DELETE")  # the retry's requests are judged in full again
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    sent_before = _posts(chaos)
    assert 7 <= sent_before < 12
    count, _ = chaos.usage_totals()
    assert 7000 <= count < f.valid  # partly ingested: only the retry can complete it

    chaos.clear_faults("m3ter")
    alerts = chaos.failure_alerts()
    run = _run()
    assert run.state == "success"
    assert chaos.failure_alerts() == alerts
    # resumed after the checkpoint (5 batches), not from the start: 7 batches re-sent at most
    assert _posts(chaos) - sent_before == 12 - 5
    chaos.assert_usage_exact([f])
    chaos.assert_dead_lettered([f])
    # and a later re-run of the finished file sends nothing
    posts = _posts(chaos)
    assert _run().state == "success"
    assert _posts(chaos) == posts
