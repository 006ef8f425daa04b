"""m3sh: mesh the m3ter usage-based billing platform into an existing stack with Apache Airflow 3."""

from __future__ import annotations

__version__ = "0.1.0"
