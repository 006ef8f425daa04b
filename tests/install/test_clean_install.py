"""The wheel in a fresh virtualenv with the LOWEST supported Airflow, as a user installs it into their Airflow.

The main suite runs the newest Airflow the range allows (``make venv``); this file runs the other end.
Nothing of the repository is importable in that virtualenv: it is created without system site-packages,
every command runs in a temporary folder with a clean environment (no ``PYTHONPATH``, no ``M3SH_*``), and
the first assertion is that ``m3sh`` is imported from the virtualenv's site-packages.

Asserted through Airflow's own CLI: ``airflow providers get m3sh`` carries everything ``get_provider_info``
lists (``airflow providers hooks|triggers|notifications`` see each declared class, and each declared
module imports); ``airflow plugins`` shows the m3sh plugin with no plugin import error; ``m3sh init`` then
``airflow dags list`` / ``list-import-errors`` show the m3sh DAGs and no import error; ``pip list`` has
neither moto nor aiosmtpd (uvicorn only as apache-airflow-core's own requirement).

Cache, kept honest: installing Airflow takes minutes, so the virtualenv is kept under
``$XDG_CACHE_HOME/m3sh/clean-install/<key>``, where the key hashes the Airflow version, the Python
version and the wheel's dependency metadata (Requires-Dist lines). The m3sh wheel itself is force-
reinstalled into it on every run, then ``pip install <wheel> apache-airflow==<lowest>`` must resolve
against what is there and ``pip check`` must pass. A dependency change gives a new key, hence a fresh
virtualenv; ``M3SH_CLEAN_INSTALL_FRESH=1`` ignores the cache.
"""

from __future__ import annotations

import email
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

INSTALL_TIMEOUT_S = 1800  # a cold install of Airflow and its providers on a busy 2-core machine
CLI_TIMEOUT_S = 600  # one `airflow ...` command (imports every provider) under load
# the first test's fixtures build the wheel and (cold cache) install Airflow: longer than the suite's 600 s
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(INSTALL_TIMEOUT_S + 600)]

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DAGS = {"m3sh_usage_ingest", "m3sh_crm_sync", "m3sh_invoice_sync", "m3sh_reconcile", "m3sh_plan_triggers",
                "m3sh_analytics_export"}


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (f"{' '.join(cmd)} exited {done.returncode}\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def _json_out(text: str) -> Any:
    """The JSON document of an ``airflow ... -o json`` run (Airflow may log lines before it)."""
    start = min(i for i in (text.find("["), text.find("{")) if i >= 0)
    return json.loads(text[start:])


def _leaves_as_text(value: Any) -> Any:
    """The structure with every scalar as text: Airflow's CLI prints nested numbers as strings."""
    if isinstance(value, dict):
        return {k: _leaves_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_leaves_as_text(v) for v in value]
    return None if value is None else str(value)


def _lowest_airflow(requires: list[str]) -> str:
    """The lower bound the wheel declares for apache-airflow: the version this test installs."""
    for req in requires:
        m = re.match(r"apache-airflow(\[[^\]]*\])?\s*(\(?)([^;]*)", req)
        if m:
            bound = re.search(r">=\s*([0-9][0-9.]*)", m.group(3))
            assert bound, f"apache-airflow requirement {req!r} has no lower bound"
            return bound.group(1)
    raise AssertionError(f"the wheel does not require apache-airflow: {requires}")


def _source_copy(dest: Path) -> Path:
    """The working tree's files (tracked or new, not ignored) copied: building in the checkout would leave
    include/m3sh.egg-info there, a second m3sh distribution on the dev virtualenv's sys.path."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True, timeout=120).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if not src.exists() and not src.is_symlink():  # deleted in the working tree
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp_path_factory.mktemp("source"))
    # build isolation: setuptools/wheel from pyproject's build-system, not the dev virtualenv's
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
         env={**os.environ}, cwd=out, timeout=INSTALL_TIMEOUT_S)
    (built,) = out.glob("m3sh-*.whl")
    return built


def _wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    return [str(r) for r in meta.get_all("Requires-Dist") or []]


def _clean_env(venv: Path, home: Path) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_CERT", "PIP_FIND_LINKS",
                                       "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK") if k in os.environ}
    return {**keep, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    requires = _wheel_requires(wheel)
    lowest = _lowest_airflow(requires)
    key = hashlib.sha256(json.dumps([lowest, sys.version_info[:2], sorted(requires)]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m3sh" / "clean-install"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"airflow-{lowest}-{key}"
    work = tmp_path_factory.mktemp("pip")
    with (cache / f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same venv: wait for it
        complete = path / ".m3sh-complete"
        if os.environ.get("M3SH_CLEAN_INSTALL_FRESH") == "1" or not complete.exists():
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True, timeout=300)
        env = _clean_env(path, work)
        pip = [str(path / "bin" / "python"), "-m", "pip"]
        if complete.exists():  # cached dependencies: the code under test is always this wheel
            _run([*pip, "install", "-q", "--force-reinstall", "--no-deps", str(wheel)], env=env, cwd=work)
        # resolves the wheel's dependencies with Airflow at the lower bound (a no-op when cached and satisfied)
        _run([*pip, "install", "-q", str(wheel), f"apache-airflow=={lowest}"], env=env, cwd=work,
             timeout=INSTALL_TIMEOUT_S)
        _run([*pip, "check"], env=env, cwd=work)
        complete.write_text(lowest)
    yield path, lowest


@pytest.fixture(scope="module")
def airflow(venv: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    path, _ = venv
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    env = {**_clean_env(path, home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}

    class Env:
        def __init__(self) -> None:
            self.venv, self.home, self.dags, self.env = path, home, dags, env

        def run(self, *args: str) -> str:
            return _run(list(args), env=self.env, cwd=self.home)

        def python(self, code: str) -> str:
            return self.run(str(path / "bin" / "python"), "-c", code)

    return Env()


def test_installed_from_the_wheel_with_the_lowest_airflow(airflow: Any, venv: tuple[Path, str]) -> None:
    _, lowest = venv
    where = airflow.python("import m3sh, airflow; print(m3sh.__file__); print(airflow.__version__)").split()
    assert where[0].startswith(str(airflow.venv)) and "site-packages" in where[0], where
    assert where[1] == lowest


def test_base_install_has_no_sandbox_servers(airflow: Any) -> None:
    installed = {p["name"].lower() for p in _json_out(airflow.run("pip", "list", "--format", "json"))}
    assert "m3sh" in installed and "apache-airflow" in installed
    assert not installed & {"moto", "aiosmtpd"}
    m3sh_requires = airflow.run("pip", "show", "m3sh")
    assert not re.search(r"^Requires:.*\b(moto|aiosmtpd|uvicorn)\b", m3sh_requires, re.M), m3sh_requires
    if "uvicorn" in installed:  # tolerated only as Airflow's own dependency (directly, or fastapi[standard])
        core = json.loads(airflow.python("import json; from importlib.metadata import requires; "
                                         "print(json.dumps(requires('apache-airflow-core')))"))
        assert [r for r in core if r.startswith("uvicorn") or r.startswith("fastapi[standard")], core
    # and the sandbox says what to install instead of a bare ModuleNotFoundError
    done = subprocess.run([str(airflow.venv / "bin" / "m3sh"), "sandbox", "status"], env=airflow.env,
                          cwd=airflow.home, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert done.returncode == 2 and "pip install 'm3sh[sandbox]'" in done.stderr, done.stderr


def test_provider_lists_what_get_provider_info_declares(airflow: Any) -> None:
    declared = json.loads(airflow.python("import json; from m3sh.provider import get_provider_info; "
                                         "print(json.dumps(get_provider_info()))"))
    providers = {p["package_name"]: p for p in _json_out(airflow.run("airflow", "providers", "list", "-o", "json"))}
    assert "m3sh" in providers, sorted(providers)
    full = _json_out(airflow.run("airflow", "providers", "get", "m3sh", "--full", "-o", "json"))
    (info,) = full  # the provider's info as Airflow loaded it through the apache_airflow_provider entry point
    assert info["package-name"] == "m3sh", info
    for kind in ("connection-types", "hooks", "operators", "sensors", "triggers", "notifications"):
        assert _leaves_as_text(info.get(kind)) == _leaves_as_text(declared.get(kind)), kind

    hooks = airflow.run("airflow", "providers", "hooks", "-o", "json")
    for conn in declared["connection-types"]:
        assert conn["hook-class-name"] in hooks, conn
    triggers = airflow.run("airflow", "providers", "triggers", "-o", "json")
    for group in declared.get("triggers", []):
        for cls in group.get("python-modules", []):
            assert cls in triggers, cls
    if declared.get("notifications"):
        notifications = airflow.run("airflow", "providers", "notifications", "-o", "json")
        for cls in declared["notifications"]:
            assert cls in notifications, cls
    modules = [m for kind in ("hooks", "operators", "sensors", "triggers")
               for group in declared.get(kind, []) for m in group.get("python-modules", [])]
    if modules:  # every module the provider declares is in the wheel and imports
        airflow.python("import importlib; [importlib.import_module(m) for m in " + repr(modules) + "]")


def test_plugin_registered_once_through_the_entry_point(airflow: Any) -> None:
    plugins = _json_out(airflow.run("airflow", "plugins", "-o", "json"))
    m3sh = [p for p in plugins if p["name"] == "m3sh"]
    assert len(m3sh) == 1, plugins
    assert "m3sh.plugin" in json.dumps(m3sh[0]), m3sh[0]
    # a second "m3sh" plugin (say a copy in the plugins folder) would be skipped and reported here;
    # Airflow < 3.2 keeps the errors in a module dict, later ones return them from _get_plugins()
    errors = airflow.python(
        "from airflow import plugins_manager as pm; pm.ensure_plugins_loaded(); "
        "ie = getattr(pm, 'import_errors', None); print(repr(pm._get_plugins()[1] if ie is None else ie))")
    assert errors.strip() == "{}", errors


def test_init_then_dags_list_shows_the_m3sh_dags(airflow: Any) -> None:
    out = airflow.run("m3sh", "init", str(airflow.dags))
    for dag_id in SHIPPED_DAGS:
        assert f"wrote {airflow.dags / dag_id}.py" in out
    assert f"wrote {airflow.dags / 'm3sh.yaml'}" in out
    t0 = time.monotonic()
    airflow.run("airflow", "db", "migrate")  # `dags list` refuses to run on an uninitialised metadata DB
    listed = {d["dag_id"] for d in _json_out(airflow.run("airflow", "dags", "list", "-o", "json", "--local"))}
    assert listed >= SHIPPED_DAGS, listed
    errors = _json_out(airflow.run("airflow", "dags", "list-import-errors", "-o", "json", "--local"))
    assert not errors, errors
    print(f"db migrate + dags list + import errors: {time.monotonic() - t0:.1f}s")
