"""Every operation a full run of every DAG makes is one the production-wiring suite covers.

The list of operations is not kept by hand on either side. The wiring side is what the scenarios
recorded (``conftest.wired``). The DAG side is read from the sandbox after one run of every DAG in
``dags/``, in the demo's data-flow order (``m3sh.airflow_env.USE_CASE_RUNS``; m3ter's month-end bill
run, emulated, before invoicing): each emulator's ``GET /_sandbox/stats`` ``paths`` and moto's request
recorder, every request classified by ``operations.classify``. A DAG request the wiring suite does not
cover, or one that fits no documented operation, fails the test by name; the proof test below shows
that an extra operation on the DAG side does.

The sandbox's customer platform (usage API, webhook, Slack and SMTP sinks) stands for endpoints the
customer owns, with no published contract m3sh could be checked against; it is not counted.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.wiring.conftest import Wired
from tests.wiring.operations import Operation, classify, coverage_problems, dag_side_operations, summary

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATORS = ("m3ter", "hubspot", "netsuite", "salesforce")
# How each DAG is run: the demo's order and params, with three changes. The CRM sync (a full
# resync: every record is extracted) writes only a sample of the demo customers, two of each kind
# (CRM x currency x already in m3ter), so every later DAG works on ~40 accounts instead of 300: the
# same operations at a quarter of the requests (measured once: the full demo made 9,350 requests in
# 48 operations, the sample 2,635 in the same 48). Invoice sync scans every approved bill (a
# dag.test() run's data interval ends at midnight, before the bills the bill run just made); the
# analytics export, which the demo leaves to its schedule, runs last.
RUN_CONF: dict[str, dict[str, Any]] = {"m3sh_invoice_sync": {"full_scan": True}}
LAST = ("m3sh_analytics_export",)
BILL_RUN_BEFORE = "m3sh_invoice_sync"
PER_KIND = 2


def sample_customers() -> list[str]:
    """Domains of the demo customers the CRM sync writes: ``PER_KIND`` of each kind."""
    from m3sh.sandbox.seed import demo_company

    kinds: dict[tuple[str, str, bool], list[str]] = {}
    for c in demo_company().customers:
        kinds.setdefault((c.crm, c.currency, c.in_m3ter), []).append(c.domain)
    return [domain for domains in kinds.values() for domain in domains[:PER_KIND]]


def _load_dag(dag_id: str) -> Any:
    path = REPO_ROOT / "dags" / f"{dag_id}.py"
    spec = importlib.util.spec_from_file_location(f"wiring_dag_{dag_id}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, dag_id)  # a DAG file binds the DAG to its id (m3sh.dags)


def dag_runs() -> list[tuple[str, dict[str, Any]]]:
    """Every DAG file in ``dags/``, in the demo's order, with its run params."""
    from m3sh.airflow_env import USE_CASE_RUNS

    files = sorted(p.stem for p in (REPO_ROOT / "dags").glob("m3sh_*.py"))
    ordered = [d for d, _ in USE_CASE_RUNS if d in files]
    ordered += [d for d in files if d not in ordered and d not in LAST] + [d for d in LAST if d in files]
    conf = dict(USE_CASE_RUNS)
    extra = {**RUN_CONF, "m3sh_crm_sync": {"accounts": sample_customers()}}
    return [(d, {**conf.get(d, {}), **extra.get(d, {})}) for d in ordered]


# ------------------------------------------------------------------------------- the proof test
def test_an_operation_the_wiring_suite_does_not_cover_fails_the_check(wired: Wired) -> None:
    """The DAG side, as the sandbox reports it, with one request more than the wiring suite sent."""
    paths = {system: {f"{rec.method} {rec.path}": 1 for rec, _ in wired.of(system)}
             for system in ("m3ter", "hubspot", "netsuite", "salesforce")}
    used, unclassified = dag_side_operations(paths)
    assert coverage_problems(used, unclassified, wired.covered) == []

    paths["m3ter"]["DELETE /organizations/org-1/accounts/acc-1"] = 1  # m3sh deletes nothing today
    used, unclassified = dag_side_operations(paths)
    problems = coverage_problems(used, unclassified, wired.covered)
    assert problems == ["a DAG uses m3ter: DELETE /organizations/{orgId}/accounts/{id}, which the production-wiring "
                        "suite does not cover"]

    paths["netsuite"]["GET /services/rest/platform/v1/metadata-catalog"] = 2
    used, unclassified = dag_side_operations(paths)
    problems = coverage_problems(used, unclassified, wired.covered)
    assert len(problems) == 2 and "fits no documented operation: netsuite: GET /services/rest/platform" in problems[1]


def test_the_moto_recording_is_classified_like_the_wiring_side(wired: Wired) -> None:
    """moto's recorder lines (path-style S3 on a loopback host) name the same operations as the
    wiring side's virtual-hosted requests to AWS."""
    lines = []
    for rec, _op in wired.of("aws"):
        bucket = rec.host.split(".s3.")[0] if ".s3." in rec.host else None
        url = f"http://127.0.0.1:5000{'/' + bucket if bucket else ''}{rec.path}"
        query = rec.url.partition("?")[2]
        lines.append(json.dumps({"method": rec.method, "url": url + (f"?{query}" if query else ""),
                                 "headers": rec.headers, "body": rec.body.decode("latin-1"), "body_encoded": False}))
    used, unclassified = dag_side_operations({}, "\n".join(lines))
    assert unclassified == []
    assert set(used) == {op for op in wired.covered if op.system == "aws"}


def test_every_dag_file_is_run() -> None:
    from m3sh.sandbox.seed import demo_company

    runs = dag_runs()
    assert [d for d, _ in runs] == list(dict.fromkeys(d for d, _ in runs))  # each once
    assert {d for d, _ in runs} == {p.stem for p in (REPO_ROOT / "dags").glob("m3sh_*.py")}
    assert runs[0] == ("m3sh_crm_sync", {"full_resync": True, "accounts": sample_customers()})
    assert runs[-1][0] == "m3sh_analytics_export"
    kinds = {(c.crm, c.currency, c.in_m3ter) for c in demo_company().customers}
    assert len(sample_customers()) == PER_KIND * len(kinds) >= 16  # every kind of customer, twice
    assert classify("m3ter", "GET", "/organizations/o/accounts") == Operation(
        "m3ter", "GET /organizations/{orgId}/accounts")


# ------------------------------------------------------------------------ the DAG run (sandbox)
@pytest.mark.sandbox
@pytest.mark.dagrun
def test_every_operation_of_a_full_dag_run_is_covered(wired: Wired, fresh_sandbox: Any, airflow_db: Path,
                                                      m3sh_config: Any, capsys: Any) -> None:
    sb = fresh_sandbox
    m3sh_config(extra="\ndag_defaults: {retries: 0, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    for name in (*EMULATORS, "platform"):
        sb.admin(name, "limits", "POST", enabled=False)  # clients pace themselves; a 429 only costs time here
        requests.delete(f"{sb.url(name)}/_sandbox/stats", timeout=30).raise_for_status()
    moto = sb.url("moto")
    for action in ("reset-recording", "start-recording"):
        requests.post(f"{moto}/moto-api/recorder/{action}", timeout=30).raise_for_status()

    timings: list[tuple[str, str, float]] = []
    t_all = time.monotonic()
    try:
        for dag_id, conf in dag_runs():
            if dag_id == BILL_RUN_BEFORE:  # m3ter's month-end bill run and approval, as in the demo
                t0 = time.monotonic()
                sb.admin("m3ter", "run_billing", "POST", approve=True)
                timings.append(("m3ter bill run (sandbox admin)", "done", time.monotonic() - t0))
            t0 = time.monotonic()
            run = _load_dag(dag_id).test(run_conf=conf or None)
            shown = {k: (f"{len(v)} domains" if k == "accounts" else v) for k, v in conf.items()}
            timings.append((f"{dag_id} {shown or ''}".strip(), str(run.state), time.monotonic() - t0))
    finally:
        requests.post(f"{moto}/moto-api/recorder/stop-recording", timeout=30)
    total = time.monotonic() - t_all

    paths = {name: sb.stats(name)["paths"] for name in EMULATORS}
    recording = requests.get(f"{moto}/moto-api/recorder/download-recording", timeout=60).text
    used, unclassified = dag_side_operations(paths, recording)
    problems = coverage_problems(used, unclassified, wired.covered)

    with capsys.disabled():
        print(f"\nfull DAG run against the sandbox: {total:.0f}s")
        for what, state, seconds in timings:
            print(f"  {what:<50} {state:<8} {seconds:6.1f}s")
        print(f"DAG requests: {sum(used.values())} in {len(used)} operations; coverage by the production-wiring suite:")
        for line in summary(used, wired.covered):
            print(f"  {line}")
        for problem in problems:
            print(f"  !! {problem}")

    failed = [what for what, state, _ in timings if state not in ("success", "done")]
    assert failed == [], f"DAG runs did not succeed (their requests are not a full run): {failed}"
    assert problems == [], "\n".join(problems)
    assert {op.system for op in used} == {"m3ter", "hubspot", "netsuite", "salesforce", "aws"}
