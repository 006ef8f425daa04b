"""Shared machinery of the chaos suite: a per-test config, fault helpers and the invariant checks.

Every invariant is read back through public APIs only (m3ter's usage query and entity lists,
NetSuite SuiteQL, SOQL, S3 objects, the platform emulator's Slack sink), never through m3sh's own
bookkeeping, so a bug in that bookkeeping cannot hide a lost or duplicated record.
"""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Retries fast enough for a 4-minute suite; several tries so a storm is ridden out by Airflow too.
DAG_DEFAULTS = "\ndag_defaults: {retries: 2, retry_delay_s: 0.1, max_retry_delay_s: 0.5}\n"
# NetSuite hook retries: enough attempts to outlast an injected burst, with tiny backoffs.
FAST_NETSUITE = {"max_attempts": 6, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 10}
USAGE_PREFIX = "usage/chaos/"
_ALERT_HEAD = re.compile(r"^:red_circle: m3sh task failed: (?P<task>\S+)$")
# A worker process ingesting one usage file of the demo's S3 feed (the key is argv[1]): what a
# Celery/Local worker runs, in a process the tests can SIGKILL. {kwargs}: extra ingest arguments.
# With argv[2] (a directory) and argv[3] (n), it starts ingesting only once n workers are ready.
USAGE_WORKER = textwrap.dedent("""
    import os, sys, time
    from m3sh.config import get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.usage.ingest import AccountLookup, ingest_s3_object

    cfg = get_config()
    feed = next(f for f in cfg.usage.feeds if f.name == "platform_files")
    hook = M3terHook(cfg.m3ter.conn_id)
    if len(sys.argv) > 3:
        open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
        deadline = time.monotonic() + 300
        while len(os.listdir(sys.argv[2])) < int(sys.argv[3]) and time.monotonic() < deadline:
            time.sleep(0.01)
    ingest_s3_object(feed=feed, key=sys.argv[1], m3ter=hook, source_storage=Storage(feed.conn_id, feed.bucket),
                     state=Storage.from_config(cfg.storage), account_exists=AccountLookup(hook){kwargs})
    print("finished", flush=True)
""")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.02)


def kill_usage_worker_in_flight(chaos: Chaos, key: str, started: Callable[[], bool], what: str, *,
                                ingest_kwargs: str = "", before_kill: Callable[[], None] | None = None) -> None:
    """Run :data:`USAGE_WORKER` on ``key``; once ``started()`` holds and a request is in flight at the
    m3ter emulator, SIGKILL it, then wait until the emulator has finished that request."""
    script = USAGE_WORKER.replace("{kwargs}", ingest_kwargs)
    proc = subprocess.Popen([sys.executable, "-c", script, key], env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Generous: the worker imports Airflow first, which takes tens of seconds on a busy machine.
        wait_for(lambda: started() or proc.poll() is not None, what, 300)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:] if proc.stdout else ""
        wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] > 0, "a request in flight", 60)
        if before_kill is not None:
            before_kill()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # the emulator finishes the request that was in flight (its stats count it then)
        wait_for(lambda: chaos.sb.stats("m3ter")["in_flight"] == 0, "the in-flight request done", 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


@dataclass
class UsageFile:
    """A generated usage file and what must come out of it."""

    key: str
    data: bytes
    valid: int
    sums: dict[str, float]
    bad_lines: dict[int, str] = field(default_factory=dict)  # line -> field that is wrong


def make_usage_file(key: str, accounts: list[str], n_rows: int, seed: int, bad_every: int = 97) -> UsageFile:
    """A gzipped CSV for the ``api_calls`` meter with one malformed row every ``bad_every`` rows.

    The malformed kinds cycle through the ways a real export goes wrong; each row records which
    field the dead letter must name.
    """
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = ["event_id,account,meter,ts,quantity,region"]
    sums: dict[str, float] = collections.defaultdict(float)
    bad: dict[int, str] = {}
    kinds = ["quantity", "account", "ts", "columns", "future", "meter", "huge", "nan"]
    for i in range(n_rows):
        line_no = i + 2
        acc = accounts[i % len(accounts)]
        ts = (now - dt.timedelta(hours=1 + i % 24)).strftime("%Y-%m-%dT%H:%M:%SZ")
        q = rng.randint(1, 100)
        eid = f"{seed}-{i}"
        if i % bad_every == bad_every - 1:
            kind = kinds[(i // bad_every) % len(kinds)]
            row = {
                "quantity": f"{eid},{acc},api_calls,{ts},lots,us-east-1",
                "account": f"{eid},ghost-{i},api_calls,{ts},{q},us-east-1",
                "ts": f"{eid},{acc},api_calls,yesterday,{q},us-east-1",
                "columns": f"{eid},{acc},api_calls,{ts}",
                "future": f"{eid},{acc},api_calls,{(now + dt.timedelta(days=2)).isoformat()},{q},us-east-1",
                "meter": f"{eid},{acc},no_such_meter,{ts},{q},us-east-1",
                "huge": f"{eid},{'x' * 5000},api_calls,{ts},{q},us-east-1",
                "nan": f"{eid},{acc},api_calls,{ts},nan,us-east-1",
            }[kind]
            lines.append(row)
            bad[line_no] = {"columns": "", "future": "ts", "huge": "account", "nan": "quantity"}.get(kind, kind)
            continue
        lines.append(f"{eid},{acc},api_calls,{ts},{q},us-east-1")
        sums[acc] += q
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    return UsageFile(key=key, data=data, valid=n_rows - len(bad), sums=dict(sums), bad_lines=bad)


class Chaos:
    """One test's view of the sandbox: config, fault switches and invariant readers."""

    def __init__(self, sandbox: Any, cfg_path: Path, prefix: str) -> None:
        self.sb = sandbox
        self.cfg_path = cfg_path
        self.prefix = prefix

    # ------------------------------------------------------------------------------ plumbing
    def storage(self) -> Any:
        from m3sh.config import load_config
        from m3sh.storage import Storage

        return Storage.from_config(load_config(self.cfg_path).storage)

    def m3ter(self) -> Any:
        from m3sh.hooks.m3ter import M3terHook

        return M3terHook()

    def faults(self, name: str, **config: Any) -> None:
        self.sb.faults(name, **config)

    def faults_spent(self, name: str) -> bool:
        """True once every count-based fault configured on ``name`` has fired."""
        f = self.sb.admin(name, "faults")
        return f["burst_429"] == 0 and f["fail_next"] == 0 and f["drop_next"] == 0

    def clear_faults(self, *names: str) -> None:
        for n in names:
            self.sb.admin(n, "faults", "DELETE")

    def writes(self, name: str) -> int:
        """Mutating requests an emulator answered (its own count: POSTs that only read are not writes)."""
        return int(self.sb.stats(name)["counts"].get("writes", 0))

    # ---------------------------------------------------------------------------- usage
    def put_usage(self, f: UsageFile) -> None:
        from m3sh.sandbox.aws_seed import s3_client

        s3_client(self.sb.url("moto")).put_object(Bucket="m3sh-usage", Key=f.key, Body=f.data)

    def usage_totals(self, meter: str = "api_calls") -> tuple[int, dict[str, float]]:
        """(measurement count, quantity sum per account) from m3ter's usage query."""
        hook = self.m3ter()
        meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == meter)
        body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
                "groups": [{"groupType": "ACCOUNT"}],
                "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                                  "function": f} for f in ("SUM", "COUNT")]}
        data = hook.query_usage(body)["data"]
        return (sum(int(r.get("quantity_count", 0)) for r in data),
                {r["accountCode"]: float(r.get("quantity_sum", 0)) for r in data if r.get("quantity_count")})

    def assert_usage_exact(self, files: Iterable[UsageFile]) -> None:
        """m3ter holds exactly the valid rows of ``files``: 0 lost, 0 duplicated."""
        files = list(files)
        want: dict[str, float] = collections.defaultdict(float)
        for f in files:
            for acc, q in f.sums.items():
                want[acc] += q
        count, sums = self.usage_totals()
        assert count == sum(f.valid for f in files), "measurements lost or duplicated"
        assert sums == pytest.approx(dict(want))

    def dead_letters(self) -> list[dict[str, Any]]:
        storage = self.storage()
        out: list[dict[str, Any]] = []
        for obj in storage.list_keys(storage.key("dead-letter", "usage")):
            out += list(storage.iter_jsonl(obj["Key"]))
        return out

    def assert_dead_lettered(self, files: Iterable[UsageFile]) -> None:
        """Every malformed row of ``files`` has one dead letter naming its file, line and field, with a reason."""
        # m3ter's file-upload jobs report failed rows only as counts (dead letters with a job_id): not rows here
        rows = [d for d in self.dead_letters() if not d.get("job_id")]
        got = collections.Counter((d["file"].rsplit("/", 1)[-1], d["line"]) for d in rows)
        by_line = {(d["file"].rsplit("/", 1)[-1], d["line"]): d for d in rows}
        want = {(f.key.rsplit("/", 1)[-1], line): fld for f in files for line, fld in f.bad_lines.items()}
        assert set(got) == set(want), "malformed rows without a dead letter (or valid rows dead-lettered)"
        assert all(n == 1 for n in got.values()), "a malformed row was dead-lettered twice"
        for where, fld in want.items():
            d = by_line[where]
            assert d["reason"], d
            if fld:
                assert d["field"] == fld, d

    # -------------------------------------------------------------------------- invoices
    def invoice_counts(self, conn_id: str) -> dict[str, int]:
        """ERP invoices per external id (= m3ter bill id), from SuiteQL."""
        from m3sh.hooks.netsuite import NetSuiteHook

        rows = NetSuiteHook(conn_id).suiteql(
            "SELECT externalid, COUNT(*) AS n FROM transaction WHERE type = 'CustInvc' GROUP BY externalid")
        return {r["externalid"]: int(r["n"]) for r in rows}

    # ---------------------------------------------------------------------------- alerts
    def failure_alerts(self) -> collections.Counter[str]:
        """Failure alerts in the Slack sink, per ``dag.task[map_index]``."""
        out: collections.Counter[str] = collections.Counter()
        for m in self.sb.state("platform")["slack"]:
            head = (m.get("text") or "").splitlines()[:1]
            match = _ALERT_HEAD.match(head[0]) if head else None
            if match:
                out[match["task"]] += 1
        return out

    def assert_failed_tasks_alerted_once(self, run: Any, before: collections.Counter[str]) -> set[str]:
        """Each task instance of ``run`` that ended failed has exactly one new alert; nothing else has one."""
        failed = {f"{ti.dag_id}.{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
                  for ti in run.get_task_instances() if ti.state == "failed"}
        new = self.failure_alerts() - before
        assert dict(new) == dict.fromkeys(failed, 1), f"failed tasks {sorted(failed)} vs alerts {dict(new)}"
        return failed


@pytest.fixture
def chaos(fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Chaos:
    """Demo sandbox, a config copy with its own storage prefix and fast retries, fast NetSuite retries."""
    from m3sh.config import DEFAULT_CONFIG_PATH

    prefix = f"chaos-{uuid.uuid4().hex[:8]}/"
    text = DEFAULT_CONFIG_PATH.read_text()
    text = text.replace("  prefix: m3sh/\n", f"  prefix: {prefix}\n", 1)
    text = text.replace("      prefix: usage/\n", f"      prefix: {USAGE_PREFIX}\n", 1)
    assert prefix in text and USAGE_PREFIX in text, "the demo config layout changed; update the chaos conftest"
    path = tmp_path / "m3sh.yaml"
    path.write_text(text + DAG_DEFAULTS)
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    for conn_id, conn in fresh_sandbox.endpoints.connections().items():
        if conn["conn_type"] == "netsuite":
            fast = {**conn, "extra": {**conn["extra"], **FAST_NETSUITE}}
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fast))
    return Chaos(fresh_sandbox, path, prefix)
