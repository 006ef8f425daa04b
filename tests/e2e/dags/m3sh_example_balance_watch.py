"""Example Airflow DAG: wait (deferred, on the triggerer) for a prepaid balance to deplete, then act.

``M3terBalanceSensor(deferrable=True)`` pokes once on a worker and, while no balance is under the
``prepaid_depleted`` rule's threshold, hands the wait to :class:`m3sh.triggers.m3ter.M3terBalanceTrigger`
on the triggerer, so no worker slot is held. When a balance crosses the threshold the task resumes
and ``act_on_firings`` receives the firings (keys, ids, a few numbers) through XCom.

Used by ``tests/e2e/test_plan_automation_live.py``; cheap to parse (no I/O at import: the sensor reads
``m3sh.yaml`` when it runs).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from m3sh.sensors.m3ter import M3terBalanceSensor

with DAG(
    dag_id="m3sh_example_balance_watch",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["m3sh", "example"],
    doc_md=__doc__,
):
    wait = M3terBalanceSensor(
        task_id="wait_for_depleted_balance",
        rules=["prepaid_depleted"],
        deferrable=True,
        poll_interval=2.0,  # seconds between passes on the triggerer (the demo default is 60)
        timeout=15 * 60,
    )

    @task
    def act_on_firings(firings: list[dict[str, Any]]) -> dict[str, Any]:
        """Stands in for the real action: report which balances fired (keys and counts only)."""
        return {"count": len(firings), "keys": sorted(f["key"] for f in firings),
                "balance_ids": sorted(str(f["entity_id"]) for f in firings)}

    act_on_firings(wait.output)  # type: ignore[arg-type]
