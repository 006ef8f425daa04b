"""Chaos for ``m3sh_usage_ingest``: storms, dropped responses, latency, a truncated upload, a
``kill -9`` mid-file and two workers on one file at once. After each scenario m3ter's usage query
must hold exactly the valid rows (0 lost, 0 duplicated), every malformed row must have one dead
letter with a reason, and every failed task exactly one alert.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import USAGE_PREFIX, USAGE_WORKER, Chaos, kill_usage_worker_in_flight, make_usage_file

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]
MEASUREMENTS = "POST /organizations/{id}/measurements"
FEED = "platform_files"


def _run(**conf: Any) -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    # only the S3 feed: the demo's HTTP feed would add its own (correct) measurements to the totals
    return build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": [FEED], **conf})


def _accounts(chaos: Chaos) -> list[str]:
    return sorted(a["code"] for a in chaos.m3ter().list_accounts())


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




def test_worker_killed_mid_batch_then_the_dag_retries_exactly_once(chaos: Chaos) -> None:
    """A worker process is SIGKILLed while it sends batch 8 of 12 (batches 1-7 confirmed, the
    manifest checkpointed after 5); the DAG run afterwards resumes from the checkpoint and m3ter
    ends with every valid row exactly once."""
    accounts = _accounts(chaos)
    f = make_usage_file(USAGE_PREFIX + "killed.csv.gz", accounts, 12_000, seed=4)
    chaos.put_usage(f)
    # slow batches so the kill lands mid-file, while a request is in flight
    chaos.faults("m3ter", path_regex="/measurements$", methods=["POST"], latency_ms=400)
    # Up to 4 batches are in flight in the DAG; the worker here sends one at a time, so "killed while
    # batch 8 is in flight" is exact (a failure with several in flight: test_usage_ingest_dag). The
    # kill may still cut the request mid-body, and the emulator then sees a truncated request (the
    # spec guard would count it as m3sh's): declared for the kill only.
    kill_usage_worker_in_flight(
        chaos, f.key, lambda: _posts(chaos) >= 7, "7 batches confirmed", ingest_kwargs=", max_in_flight=1",
        before_kill=lambda: chaos.sb.admin("m3ter", "spec", "POST", expect_invalid={
            "path_regex": "/measurements$", "count": 1, "reason": "a request cut short by the SIGKILL"}))
    chaos.sb.admin("m3ter", "spec", "DELETE")  # the retry's requests are judged in full again
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


def test_two_workers_ingesting_the_same_file_at_once_land_it_exactly_once(chaos: Chaos, tmp_path: Path) -> None:
    """Two workers take the same object at the same moment (a task run twice: a zombie's retry while
    the first attempt still runs, or two deployments pointed at one org). m3ter de-duplicates by uid,
    so every valid row is counted once, and each malformed row has one dead letter."""
    accounts = _accounts(chaos)
    f = make_usage_file(USAGE_PREFIX + "twice.csv.gz", accounts, 3_000, seed=5)
    chaos.put_usage(f)
    # each batch held long enough that the second worker, however late its first request on a busy
    # machine (at 200 ms, one run in four with a core kept busy finished the first worker before the
    # second had sent anything), sends while the first still waits
    chaos.faults("m3ter", path_regex="/measurements$", methods=["POST"], latency_ms=2000)
    script = USAGE_WORKER.replace("{kwargs}", "")
    # both start sending only once both have imported Airflow (seconds apart on a busy machine)
    procs = [subprocess.Popen([sys.executable, "-c", script, f.key, str(tmp_path), "2"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    chaos.clear_faults("m3ter")
    assert _posts(chaos) > 3  # both sent (3 batches each), or the test proved nothing
    chaos.assert_usage_exact([f])
    chaos.assert_dead_lettered([f])
