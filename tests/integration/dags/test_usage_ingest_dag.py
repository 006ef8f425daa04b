"""``m3sh_usage_ingest`` end to end against the sandbox, with whole ``dag.test()`` runs.

The invariants are read back through public APIs only: m3ter's usage query for measurements and
S3 for dead letters. 10,000 rows with malformed rows mixed in must land exactly once, through a
re-run, a failure injected mid-file, and 429/5xx storms.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.aws_seed import s3_client

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

PREFIX = "usage/test/"
N_ROWS = 10_000


def _make_file(accounts: list[str]) -> tuple[bytes, int, dict[str, float], int]:
    """A gzipped CSV of N_ROWS rows; returns (bytes, valid rows, expected sum per account, bad rows)."""
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = ["event_id,account,meter,ts,quantity,region"]
    expected: dict[str, float] = {}
    bad = 0
    for i in range(N_ROWS):
        acc = accounts[i % len(accounts)]
        ts = (now - dt.timedelta(hours=1 + i % 48)).strftime("%Y-%m-%dT%H:%M:%SZ")
        q = rng.randint(1, 100)
        kind = i % 200
        if kind == 13:
            lines.append(f"e{i},{acc},api_calls,{ts},lots,us-east-1")
        elif kind == 57:
            lines.append(f"e{i},ghost-{i},api_calls,{ts},{q},us-east-1")
        elif kind == 101:
            lines.append(f"e{i},{acc},api_calls,,{q},us-east-1")
        elif kind == 150:
            lines.append(f"e{i},{acc},api_calls,{ts}")  # truncated row
        else:
            lines.append(f"e{i},{acc},api_calls,{ts},{q},us-east-1")
            expected[acc] = expected.get(acc, 0) + q
            continue
        bad += 1
    return gzip.compress(("\n".join(lines) + "\n").encode()), N_ROWS - bad, expected, bad


@pytest.fixture
def usage_setup(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> dict:
    from m3sh.hooks.m3ter import M3terHook

    m3sh_config({"prefix: usage/\n": f"prefix: {PREFIX}\n"},
                extra="\ndag_defaults: {retries: 2, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    hook = M3terHook()
    accounts = sorted(a["code"] for a in hook.list_accounts())[:20]
    data, valid, expected, bad = _make_file(accounts)
    s3 = s3_client(fresh_sandbox.url("moto"))
    s3.put_object(Bucket="m3sh-usage", Key=PREFIX + "big.csv.gz", Body=data)
    return {"hook": hook, "valid": valid, "expected": expected, "bad": bad, "s3": s3, "sandbox": fresh_sandbox}


def _m3ter_totals(hook: Any) -> tuple[int, dict[str, float]]:
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                              "function": "SUM"},
                             {"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                              "function": "COUNT"}]}
    data = hook.query_usage(body)["data"]
    return (sum(int(r.get("quantity_count", 0)) for r in data),
            {r["accountCode"]: float(r.get("quantity_sum", 0)) for r in data})


def _dead_letters(s3: Any) -> list[dict[str, Any]]:
    out = []
    for obj in s3.list_objects_v2(Bucket="m3sh-archive", Prefix="m3sh/dead-letter/usage/").get("Contents", []):
        body = s3.get_object(Bucket="m3sh-archive", Key=obj["Key"])["Body"].read().decode()
        out += [json.loads(line) for line in body.splitlines() if line.strip()]
    return out


def _run(**conf: Any) -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    return build_usage_ingest_dag().test(run_conf={"feeds": ["platform_files"], **conf})


def test_exactly_valid_rows_land_and_bad_rows_are_dead_lettered(usage_setup: dict) -> None:
    run = _run(scan_all=True)
    assert run.state == "success"
    count, sums = _m3ter_totals(usage_setup["hook"])
    assert count == usage_setup["valid"]
    assert sums == pytest.approx(usage_setup["expected"])
    dead = _dead_letters(usage_setup["s3"])
    assert len(dead) == usage_setup["bad"]
    reasons = {(d["field"], d["reason"].split(":")[0].split(" ")[0]) for d in dead}
    assert ("quantity", "not") in reasons and ("ts", "invalid") in reasons and ("account", "account") in reasons
    assert all(d["file"].endswith("big.csv.gz") and d["line"] > 1 for d in dead)

    # A re-run skips the finished file by its manifest and adds nothing.
    stats_before = usage_setup["sandbox"].stats("m3ter")["counts"].get("POST /organizations/{id}/measurements", 0)
    assert _run(scan_all=True).state == "success"
    assert _m3ter_totals(usage_setup["hook"])[0] == usage_setup["valid"]
    stats_after = usage_setup["sandbox"].stats("m3ter")["counts"].get("POST /organizations/{id}/measurements", 0)
    assert stats_after == stats_before


def test_failure_mid_file_then_retry_adds_no_duplicates(usage_setup: dict) -> None:
    """A worker dies after some batches were confirmed; Airflow retries the task, which resumes and
    re-sends at most the unconfirmed tail: m3ter ends with every valid row exactly once."""
    from m3sh.hooks.m3ter import M3terHook

    calls = {"n": 0}
    real = M3terHook.submit_measurements

    def flaky(self: M3terHook, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("worker lost mid-file (injected)")
        return real(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M3terHook, "submit_measurements", flaky)
        run = _run(scan_all=True)
    assert run.state == "success"
    assert calls["n"] > 10  # the failed try sent 6 batches, the retry resumed and finished
    count, sums = _m3ter_totals(usage_setup["hook"])
    assert count == usage_setup["valid"]
    assert sums == pytest.approx(usage_setup["expected"])
    # The failed try made call 7 plus at most window-1 more already in flight (they land; m3ter
    # de-duplicates them by uid); the retry resumed after the checkpoint (batch 5), so it sent
    # batches 6-10 again and nothing before them.
    from m3sh.config import get_config

    window = get_config().m3ter.ingest_requests_in_flight
    assert 7 + (10 - 5) <= calls["n"] <= 7 + (window - 1) + (10 - 5)


def test_rides_out_429_and_5xx(usage_setup: dict) -> None:
    usage_setup["sandbox"].faults("m3ter", path_regex="/measurements$", burst_429=2, fail_next=2,
                                  error_status=503, retry_after_s=1)
    assert _run(scan_all=True).state == "success"
    count, _ = _m3ter_totals(usage_setup["hook"])
    assert count == usage_setup["valid"]
    counts = usage_setup["sandbox"].stats("m3ter")["counts"]
    assert counts.get("POST /organizations/{id}/measurements", 0) >= 10 + 4  # 10 batches + 4 faulted


def test_an_ingest_task_that_keeps_failing_fails_the_run(usage_setup: dict) -> None:
    """The leaf summary task runs on all_done; it must still fail the run when a chunk was lost."""
    from m3sh.usage import ingest

    def broken(**kwargs: Any) -> Any:
        raise ConnectionError("m3ter unreachable (injected)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest, "ingest_s3_object", broken)
        run = _run(scan_all=True)
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["summarize"] == "failed"
