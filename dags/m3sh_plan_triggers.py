"""Airflow DAG: plan and contract automation, exactly once. Built from m3sh.yaml; see README.

Balances, usage limits and contract dates -> plan switches, balance resets, custom/CRM fields, notifications.
"""

from m3sh.dagkit.plan_triggers import build_plan_triggers_dag

dag = build_plan_triggers_dag()
