"""Chaos for the bulk usage path (m3ter file uploads): a worker ``kill -9``-ed while it uploads a part
file. The DAG run afterwards re-uses every job that arrived (found by its file name), uploads only
what did not, and m3ter ends with every valid row exactly once; malformed rows are dead-lettered once.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import USAGE_PREFIX, Chaos, kill_usage_worker_in_flight, make_usage_file

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]
FEED = "platform_files"
# the stats collapse id-like segments: "generateUploadUrl" (17 letters) reads as a Salesforce id
GENERATE = "POST /organizations/{id}/fileuploads/measurements/{id}"



def _puts(chaos: Chaos) -> int:
    """PUTs the upload front has answered (each part file's own path)."""
    counts = chaos.sb.stats("m3ter")["counts"]
    return sum(int(n) for k, n in counts.items() if k.startswith("PUT /_uploads/"))


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
    kill_usage_worker_in_flight(chaos, f.key, lambda: _puts(chaos) >= 3, "3 part files uploaded")
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
