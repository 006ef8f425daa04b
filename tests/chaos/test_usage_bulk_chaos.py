"""Chaos for the bulk usage path (m3ter file uploads): a worker ``kill -9``-ed while it uploads a part
file; an upload URL that expired before its PUT and a job that m3ter failed part-way. The DAG run
afterwards re-uses every job that arrived (found by its file name), uploads only what did not, and
m3ter ends with every valid row exactly once; malformed rows are dead-lettered once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.conftest import USAGE_PREFIX, Chaos, kill_usage_worker_in_flight, make_usage_file

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]
FEED = "platform_files"
# the stats collapse id-like segments: "generateUploadUrl" (17 letters) reads as a Salesforce id
GENERATE = "POST /organizations/{id}/fileuploads/measurements/{id}"


def _bulk_feed(chaos: Chaos) -> None:
    """The demo's S3 feed made a bulk feed of small part files (~250 rows each)."""
    text = chaos.cfg_path.read_text()
    bulk = text.replace("      id_field: event_id\n",
                        "      id_field: event_id\n      bulk_min_bytes: 1\n      bulk_part_bytes: 65536\n", 1)
    assert bulk != text, "the demo config layout changed; update this test"
    chaos.cfg_path.write_text(bulk)


def _generated(chaos: Chaos) -> int:
    return int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0))


def _run() -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    return build_usage_ingest_dag().test(run_conf={"scan_all": True, "feeds": [FEED]})


def _puts(chaos: Chaos) -> int:
    """PUTs the upload front has answered (each part file's own path)."""
    counts = chaos.sb.stats("m3ter")["counts"]
    return sum(int(n) for k, n in counts.items() if k.startswith("PUT /_uploads/"))


def test_worker_killed_mid_upload_then_the_dag_finishes_exactly_once(chaos: Chaos) -> None:
    _bulk_feed(chaos)
    accounts = sorted(a["code"] for a in chaos.m3ter().list_accounts())
    f = make_usage_file(USAGE_PREFIX + "bulk-killed.csv.gz", accounts, 3000, seed=7)
    chaos.put_usage(f)
    # slow uploads so the kill lands while a part's PUT is in flight
    chaos.faults("m3ter", path_regex="^/_uploads/", methods=["PUT"], latency_ms=700)
    kill_usage_worker_in_flight(chaos, f.key, lambda: _puts(chaos) >= 3, "3 part files uploaded")
    generated_before = _generated(chaos)
    count, _ = chaos.usage_totals()
    assert count < f.valid  # partly ingested: only the retry can complete it

    chaos.clear_faults("m3ter")
    run = _run()
    assert run.state == "success"
    summary = run.get_task_instance("summarize").xcom_pull(task_ids="summarize")
    # every part re-built; the ones that arrived before the kill re-used, not uploaded again
    generated = _generated(chaos) - generated_before
    assert generated <= summary["bulk_files"] - 3 + 1, (generated, summary["bulk_files"])
    assert summary["bulk_failed"] == 0
    chaos.assert_usage_exact([f])
    chaos.assert_dead_lettered([f])
    # and a later re-run of the finished file uploads nothing
    before = int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0))
    assert _run().state == "success"
    assert int(chaos.sb.stats("m3ter")["counts"].get(GENERATE, 0)) == before


def test_an_expired_url_and_a_job_failed_part_way_end_exactly_once(chaos: Chaos) -> None:
    """The first part's upload URL has expired when its PUT arrives (m3ter gives a minute; a slow worker
    misses it) and m3ter fails that part's job after 100 rows. The expired PUT is retried with
    a new URL; the failed job fails the file (alerted, naming the job), and the next run uploads that
    part again — its first 100 rows m3ter already holds come back as failed duplicates, nothing twice."""
    _bulk_feed(chaos)
    accounts = sorted(a["code"] for a in chaos.m3ter().list_accounts())
    f = make_usage_file(USAGE_PREFIX + "bulk-faults.csv.gz", accounts, 1500, seed=11)
    chaos.put_usage(f)
    chaos.sb.admin("m3ter", "fileuploads", "POST", expire_next=1, fail_next=1, fail_after_rows=100)
    alerts = chaos.failure_alerts()

    first = _run()
    assert first.state == "failed"
    assert chaos.sb.stats("m3ter")["statuses"].get("403", 0) >= 1  # the expired URL, S3's "Request has expired"
    jobs = list(chaos.m3ter().list_upload_jobs())
    failed = [j for j in jobs if j["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["processedRows"] == 100, jobs
    assert len({j["fileName"] for j in jobs}) == len([j for j in jobs if j["status"] == "succeeded"]) + 1
    new_alerts = chaos.failure_alerts() - alerts
    assert sum(new_alerts.values()) == 1, new_alerts  # the summary task, once (ingest itself finished)
    slack = "\n".join(m.get("text") or "" for m in chaos.sb.state("platform")["slack"])
    assert failed[0]["id"] in slack and "failed after 100" in slack
    count, _ = chaos.usage_totals()
    assert count < f.valid

    generated = _generated(chaos)
    again = _run()
    assert again.state == "success"
    assert _generated(chaos) - generated == 1  # only the failed part, uploaded again
    chaos.assert_usage_exact([f])
    chaos.assert_dead_lettered([f])
    m3ter_failed = [d for d in chaos.dead_letters() if d.get("job_id")]
    assert [d["failed_rows"] for d in m3ter_failed] == [100]  # the re-sent rows m3ter already had
    # and a later re-run of the finished file uploads nothing
    generated = _generated(chaos)
    assert _run().state == "success"
    assert _generated(chaos) == generated
