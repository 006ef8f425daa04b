"""Packaging pieces that need no fresh virtualenv: shipped DAG files, ``m3sh init``, config lookup, extras.

The wheel in a fresh virtualenv with the lowest supported Airflow is tests/install/test_clean_install.py.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from m3sh import cli, config, sandbox_extra, scaffold
from m3sh.dags import DAGS, dag_file_text
from m3sh.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_dag_files_are_the_ones_m3sh_init_writes() -> None:
    shipped = {d.dag_id for d in DAGS}
    assert {p.stem for p in (REPO / "dags").glob("m3sh_*.py")} == shipped
    for dag_id in shipped:
        assert (REPO / "dags" / f"{dag_id}.py").read_text() == dag_file_text(dag_id), dag_id


def test_dag_file_passes_airflow_safe_mode_and_binds_the_dag_id() -> None:
    # Airflow's safe mode parses only files mentioning both "airflow" and "dag" (case-insensitive).
    for d in DAGS:
        text = dag_file_text(d.dag_id).lower()
        assert "airflow" in text and "dag" in text
        namespace: dict[str, object] = {}
        exec(compile(dag_file_text(d.dag_id), f"{d.dag_id}.py", "exec"), namespace)  # noqa: S102
        dag = namespace[d.dag_id]
        assert dag is not None and dag.dag_id == d.dag_id  # type: ignore[attr-defined]


def test_each_import_builds_from_the_current_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second parse in the same process sees the config as it is now, not a DAG cached in sys.modules."""
    from m3sh import dags

    monkeypatch.setenv("M3SH_CONFIG", str(config.DEFAULT_CONFIG_PATH))
    first = dags.m3sh_crm_sync
    owned = tmp_path / "m3sh.yaml"
    owned.write_text(config.DEFAULT_CONFIG_PATH.read_text().replace("owner: revops", "owner: finops", 1))
    monkeypatch.setenv("M3SH_CONFIG", str(owned))
    second = dags.m3sh_crm_sync
    assert first is not second
    assert {t.owner for t in first.tasks} == {"revops"}
    assert {t.owner for t in second.tasks} == {"finops"}


def test_unknown_dag_name_says_which_exist() -> None:
    from m3sh import dags

    with pytest.raises(AttributeError, match="m3sh DAGs: m3sh_usage_ingest, m3sh_crm_sync"):
        dags.m3sh_nope  # noqa: B018


def test_init_writes_dags_and_starter_config_then_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    names = {f"{d.dag_id}.py" for d in DAGS} | {"m3sh.yaml"}
    assert {p.name for p in tmp_path.iterdir()} == names
    for name in names:
        assert f"wrote {tmp_path / name}" in out
    # the starter is the shipped demo config, and it validates
    assert (tmp_path / "m3sh.yaml").read_text() == config.DEFAULT_CONFIG_PATH.read_text()
    assert cli.main(["config", "validate", str(tmp_path / "m3sh.yaml")]) == 0

    (tmp_path / "m3sh.yaml").write_text("version: 1  # the user's own\n")
    assert cli.main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "m3sh.yaml" in err and "already exist" in err and "--force" in err
    assert (tmp_path / "m3sh.yaml").read_text() == "version: 1  # the user's own\n"  # untouched

    assert cli.main(["init", str(tmp_path), "--force"]) == 0
    assert f"replaced {tmp_path / 'm3sh.yaml'}" in capsys.readouterr().out
    assert (tmp_path / "m3sh.yaml").read_text() == config.DEFAULT_CONFIG_PATH.read_text()


def test_init_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        scaffold.init_project(tmp_path / "nope")


def test_config_found_in_airflow_dags_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M3SH_CONFIG", raising=False)
    fake_conf = SimpleNamespace(get=lambda section, key: str(tmp_path))
    monkeypatch.setitem(sys.modules, "airflow.configuration", SimpleNamespace(conf=fake_conf))
    assert config._config_path(None) == config.DEFAULT_CONFIG_PATH  # no m3sh.yaml there yet
    (tmp_path / "m3sh.yaml").write_text("version: 1\n")
    assert config._config_path(None) == tmp_path / "m3sh.yaml"
    monkeypatch.setenv("M3SH_CONFIG", "/elsewhere/m3sh.yaml")  # the env var wins
    assert config._config_path(None) == Path("/elsewhere/m3sh.yaml")
    assert config._config_path("explicit.yaml") == Path("explicit.yaml")


def test_missing_default_config_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M3SH_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")  # as in an installed wheel
    monkeypatch.delitem(sys.modules, "airflow.configuration", raising=False)
    with pytest.raises(ConfigError, match=r"M3SH_CONFIG.*m3sh init"):
        config.load_config()


def test_sandbox_without_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    real = sandbox_extra.importlib.util.find_spec
    monkeypatch.setattr(sandbox_extra.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("moto", "aiosmtpd") else real(name, *a))
    with pytest.raises(sandbox_extra.SandboxExtraMissing, match=r"moto, aiosmtpd.*pip install 'm3sh\[sandbox\]'"):
        sandbox_extra.require_sandbox_extra()
    # the package's own guard, as a fresh import of m3sh.sandbox runs it
    for name in [m for m in sys.modules if m == "m3sh.sandbox" or m.startswith("m3sh.sandbox.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install 'm3sh\[sandbox\]'"):
        import m3sh.sandbox  # noqa: F401
    # the CLI says it without a traceback
    assert cli.main(["sandbox", "status", "--root", "/nonexistent"]) == 2
    assert "pip install 'm3sh[sandbox]'" in capsys.readouterr().err


def test_extras_and_entry_points_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for server in ("moto", "aiosmtpd", "uvicorn"):
        assert server not in base
        assert any(server in d for d in project["optional-dependencies"]["sandbox"])
    assert "m3sh[sandbox]" in project["optional-dependencies"]["dev"]  # make venv installs .[dev]
    assert project["entry-points"]["airflow.plugins"] == {"m3sh": "m3sh.plugin:M3shPlugin"}
    assert not list((REPO / "plugins").glob("*.py")), "a plugins/ copy would register the m3sh plugin twice"
