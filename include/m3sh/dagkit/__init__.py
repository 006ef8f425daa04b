"""Builders that turn the validated m3sh config into DAGs (cosmos-style: config in, task graph out).

DAG files in ``dags/`` stay one import and one call, so parsing is cheap and the logic is testable.
"""
