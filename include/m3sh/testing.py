"""``m3sh.testing``: a pytest plugin so users test their own DAGs against m3sh's emulators.

Installed with ``pip install 'm3sh[sandbox]'`` and registered through the ``pytest11`` entry point, so the
fixtures are there in any test suite of that environment (``-p no:m3sh`` switches the plugin off):

* ``m3sh_sandbox`` (session): the emulators of m3ter, HubSpot, NetSuite, Salesforce and AWS (moto),
  seeded with the demo company, on ports found free at start; the ``AIRFLOW_CONN_*`` variables that
  point Airflow's connections (``m3ter_default``, ``hubspot_default``, ``aws_default`` ...) at them are
  set for the session and restored after it.
* ``m3sh_fresh_sandbox``: the same sandbox reset to the seed (faults off, stats cleared) before the test,
  so what one test wrote is gone for the next.

Both yield a :class:`m3sh.sandbox.runner.Sandbox` (``.endpoints.url("m3ter")``, ``.endpoints.env()``,
``.reset()``). Importing this module imports nothing of the sandbox: a suite that never asks for the
fixtures pays nothing, and one that does without the extra is told to ``pip install 'm3sh[sandbox]'``.
The names differ from m3sh's own ``tests/conftest.py`` fixtures (``sandbox``, ``fresh_sandbox``), so both
coexist when the plugin loads in m3sh's own suite.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from m3sh.sandbox.runner import Sandbox


@pytest.fixture(scope="session")
def m3sh_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The m3sh emulators for this test session, with Airflow connections pointing at them."""
    from m3sh.sandbox_extra import require_sandbox_extra

    require_sandbox_extra("the m3sh_sandbox fixture")
    from m3sh.sandbox.runner import Sandbox, SandboxEndpoints, free_port_base

    sb = Sandbox(tmp_path_factory.mktemp("m3sh-sandbox"), SandboxEndpoints(port_base=free_port_base()))
    sb.up(seed="demo")  # waits until every emulator answers its health check
    try:
        with environ(sb.endpoints.env()):
            yield sb
    finally:
        sb.down(quiet=True)


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (e.g. the sandbox's ``AIRFLOW_CONN_*``) and restore the old ones after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def m3sh_fresh_sandbox(m3sh_sandbox: Sandbox) -> Sandbox:
    """The session's sandbox reset to the demo seed before this test."""
    m3sh_sandbox.reset("demo")
    return m3sh_sandbox
