"""The README's "Use m3sh in your own DAGs" DAG, run the way a user tests their own DAGs.

The python block under the README's marker comment is written, unchanged, as a DAG file into an
empty DAG folder of a fresh Airflow home (no m3sh.yaml: ``M3SH_CONFIG`` names a missing file), and a
separate pytest run whose test only uses ``m3sh.testing``'s ``m3sh_fresh_sandbox`` fixture runs it
with ``dag.test()`` twice for the same day. The effects are read back through the emulators' APIs:
one top-up (idempotency key), the plan switched once, three valid usage rows measured once and the
bad one dead-lettered with its reason, one NetSuite invoice per approved bill, and nothing written
to NetSuite or m3ter's balance by the re-run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- this block is executed by tests/integration/test_readme_example.py"

USER_TESTS = '''
import datetime as dt
import importlib.util
import json
import os
from pathlib import Path

from m3sh.hooks.m3ter import M3terHook
from m3sh.hooks.netsuite import NetSuiteHook
from m3sh.sandbox.aws_seed import s3_client

TASKS = ("balance_low", "top_up", "upgrade", "usage", "collect_bills", "to_netsuite", "invoice_summary")


def load_dag():
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "acme_billing.py"
    spec = importlib.util.spec_from_file_location("acme_billing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def spend_down_to(hook, balance, amount):
    left = hook.get_balance(balance["id"])["amount"]
    hook.create_balance_transaction(balance["id"], {"amount": -(left - amount), "description": "usage"})


def current_plans(hook, account_id):
    from m3sh.automation.rules import active_at

    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    now = dt.datetime.now(dt.UTC)
    return [plans[ap["planId"]] for ap in hook.list_account_plans(account_id=account_id, include_all=True)
            if active_at(ap, now)]


def measured(hook, code):
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                              "function": f} for f in ("SUM", "COUNT")]}
    row = next((r for r in hook.query_usage(body)["data"] if r.get("accountCode") == code), {})
    return int(row.get("quantity_count", 0)), float(row.get("quantity_sum", 0))


def netsuite_writes(sandbox):
    counts = sandbox.stats("netsuite")["counts"]
    return sum(n for k, n in counts.items() if k.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE")
               and "/suiteql" not in k)


def test_the_readme_dag(m3sh_fresh_sandbox):
    sb = m3sh_fresh_sandbox
    hook = M3terHook()
    account = sorted(hook.list_accounts(), key=lambda a: a["code"])[0]
    code = account["code"]
    assert "growth_usd" not in current_plans(hook, account["id"])
    balance = next(hook.list_balances(account_id=account["id"]))
    spend_down_to(hook, balance, 40)
    job = sb.admin("m3ter", "run_billing", "POST", accountIds=[account["id"]], approve=True)
    bills = [hook.get_bill(b) for b in job["billIds"]]
    assert bills and all(b["status"] == "APPROVED" and b["currency"] == "USD" for b in bills)

    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ts = max(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10), day + dt.timedelta(seconds=1))
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [f"{code},api_calls,{stamp},{q}" for q in (300, 200, 150)] + [f"ghost,api_calls,{stamp},7"]
    key = f"platform/{day.date().isoformat()}/hour-01.csv"
    s3 = s3_client(sb.url("moto"))
    s3.put_object(Bucket="m3sh-usage", Key=key, Body=("account,meter,ts,quantity\\n" + "\\n".join(rows)).encode())

    dag = load_dag()

    def run():
        dag_run = dag.test(logical_date=day, run_conf={"account": code})
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert states == dict.fromkeys(TASKS, "success"), states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in TASKS}

    first = run()
    assert [f["account_code"] for f in first["balance_low"]] == [code]
    assert first["top_up"]["status"] == first["upgrade"]["status"] == "done"
    grants = [t for t in hook.list_balance_transactions(balance["id"])
              if t.get("description") == f"m3sh top_up low-balance-{code}-{day.date().isoformat()}"]
    assert [t["amount"] for t in grants] == [500]
    assert hook.get_balance(balance["id"])["amount"] == 540
    assert current_plans(hook, account["id"]) == ["growth_usd"]
    assert measured(hook, code) == (3, 650.0)
    (dead_uri,) = first["usage"]["dead_letter_uris"]
    bucket, _, dead_key = dead_uri.removeprefix("s3://").partition("/")
    dead = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=dead_key)["Body"].read().splitlines()]
    assert [(d["line"], d["field"]) for d in dead] == [(5, "account")] and "ghost" in dead[0]["reason"]
    invoices = {r["externalid"]: float(r["foreigntotal"]) for r in NetSuiteHook().suiteql(
        "SELECT externalid, foreigntotal FROM transaction WHERE type = 'CustInvc'")}
    assert {b["id"]: round(sum(li["subtotal"] for li in b["lineItems"]), 2) for b in bills} == {
        b["id"]: invoices.get(b["id"]) for b in bills}
    assert first["invoice_summary"]["exported"] == len(bills)

    # The day runs again after the credit was used up: nothing is granted, switched, measured or invoiced twice.
    spend_down_to(hook, balance, 40)
    ns_writes = netsuite_writes(sb)
    second = run()
    assert second["top_up"]["status"] == second["upgrade"]["status"] == "unchanged"
    assert hook.get_balance(balance["id"])["amount"] == 40
    assert second["usage"]["skipped"] == 1 and second["usage"]["accepted"] == 0
    assert measured(hook, code) == (3, 650.0)
    assert second["to_netsuite"] == {"unchanged": len(bills)} and netsuite_writes(sb) == ns_writes
'''


def readme_dag() -> str:
    """The python block that follows the README's marker comment."""
    text = README.read_text()
    assert MARKER in text, f"README.md lost the marker {MARKER!r} of its tested example"
    return text.split(MARKER, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_block_is_a_dag_file() -> None:
    source = readme_dag()
    compile(source, "README.md", "exec")
    assert "with DAG(" in source and "m3sh.operators" in source and "get_config" not in source


def test_the_readme_example_runs_against_the_sandbox_through_m3sh_testing(
        pytester: pytest.Pytester, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, dags = tmp_path / "airflow-home", tmp_path / "dags"
    home.mkdir()
    dags.mkdir()
    shutil.copy(airflow_db / "airflow.db", home / "airflow.db")  # a migrated metadata DB, as a user has
    (dags / "acme_billing.py").write_text(readme_dag())
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
    monkeypatch.setenv("M3SH_CONFIG", str(tmp_path / "no-such-dir" / "m3sh.yaml"))
    pytester.makepyfile(test_user_billing=USER_TESTS)
    # the timeout covers a cold sandbox start and two DAG runs on a busy machine
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-o", "timeout=900", timeout=1200)
    result.assert_outcomes(passed=1)
