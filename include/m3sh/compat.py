"""The Airflow differences m3sh meets across its supported range (``apache-airflow>=3.1.2,<3.4``).

Airflow 3.2 made the Task SDK export the timetables, ``conf`` and ``AirflowFailException``; Airflow 3.1
has them only in core (``airflow.timetables``, ``airflow.configuration``, ``airflow.exceptions``). The
SDK names are preferred where they exist, as the Task SDK is what DAG authors are meant to import from.
tests/install/test_clean_install.py parses every DAG on the lowest version; the main suite runs the
newest. Airflow 3.0 is not supported: no ``airflow.sdk.BaseHook`` and no plugin ``external_views``
(the m3sh page's navigation entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

AIRFLOW_3_2_PLUS = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.2")

if TYPE_CHECKING or AIRFLOW_3_2_PLUS:
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, CronTriggerTimetable, conf
    from airflow.sdk.exceptions import AirflowFailException
else:  # Airflow 3.1
    from airflow.configuration import conf
    from airflow.exceptions import AirflowFailException
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.interval import CronDataIntervalTimetable
    from airflow.timetables.trigger import CronTriggerTimetable

__all__ = ["AIRFLOW_3_2_PLUS", "AIRFLOW_VERSION", "AirflowFailException", "AssetOrTimeSchedule",
           "CronDataIntervalTimetable", "CronTriggerTimetable", "conf"]
