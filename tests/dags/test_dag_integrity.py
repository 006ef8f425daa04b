"""Every DAG file imports cleanly without touching the network and follows the m3sh conventions."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"m3sh_usage_ingest", "m3sh_crm_sync", "m3sh_invoice_sync", "m3sh_reconcile", "m3sh_plan_triggers",
            "m3sh_analytics_export"}


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    real_connect = socket.socket.connect

    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"DAG parsing tried to open a network connection to {address}")

    socket.socket.connect = no_network  # type: ignore[method-assign]
    try:
        return DagBag(dag_folder=str(DAGS_DIR))
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]


def test_no_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}


def test_expected_dags_exist(dagbag: Any) -> None:
    assert set(dagbag.dag_ids) >= EXPECTED


def test_conventions(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert "m3sh" in dag.tags, dag_id
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            assert (t.retries or 0) >= 1, f"{dag_id}.{t.task_id} has no retries"
            assert t.retry_exponential_backoff, f"{dag_id}.{t.task_id} retries without backoff"
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} has no on_failure_callback"


def test_manual_runs_offer_dry_run(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert "dry_run" in dag.params, dag_id
