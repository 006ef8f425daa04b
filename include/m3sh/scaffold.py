"""``m3sh init [DIR]``: put the m3sh DAG files and a starter ``m3sh.yaml`` into an existing Airflow project.

DIR is the Airflow DAGs folder (default: the current folder). Each DAG file is one import of
:mod:`m3sh.dags`; the starter config is the demo configuration shipped in the package, which the DAGs
find beside them (:func:`m3sh.config._config_path`) unless ``$M3SH_CONFIG`` names another file.
Nothing is overwritten without ``force``: every file is checked before any is written, so a refused
run leaves the folder as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from m3sh.config import CONFIG_FILE_NAME
from m3sh.dags import DAGS, dag_file_text
from m3sh.exceptions import ConfigError


@dataclass(frozen=True)
class Written:
    path: Path
    replaced: bool


def starter_config_text() -> str:
    """The starter ``m3sh.yaml``: the shipped demo configuration (validated by ``m3sh config validate``)."""
    return resources.files("m3sh").joinpath("data", CONFIG_FILE_NAME).read_text(encoding="utf-8")


def planned_files() -> dict[str, str]:
    """File name -> text, for every file ``m3sh init`` writes."""
    files = {f"{d.dag_id}.py": dag_file_text(d.dag_id) for d in DAGS}
    files[CONFIG_FILE_NAME] = starter_config_text()
    return files


def init_project(directory: Path, *, force: bool = False) -> list[Written]:
    """Write the DAG files and the starter config into ``directory`` (an existing folder).

    Raises :class:`ConfigError` naming every file that exists already unless ``force``.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a folder (m3sh init writes into your existing Airflow DAGs folder)")
    files = planned_files()
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        raise ConfigError(f"{directory}: {', '.join(existing)} already exist; nothing written "
                          "(--force replaces them)")
    written = []
    for name, text in files.items():
        path = directory / name
        replaced = path.exists()
        path.write_text(text, encoding="utf-8")
        written.append(Written(path, replaced))
    return written
