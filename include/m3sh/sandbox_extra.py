"""The ``m3sh[sandbox]`` extra: the emulators' and the demo's server dependencies.

A base ``pip install m3sh`` (the provider in a user's Airflow) brings none of moto or aiosmtpd, so
importing :mod:`m3sh.sandbox` there fails at once with the command that fixes it, instead of a bare
``ModuleNotFoundError: moto`` from deep inside an emulator. Kept outside :mod:`m3sh.sandbox` so the
CLI can catch the error without importing the sandbox.
"""

from __future__ import annotations

import importlib.util

# What the sandbox imports that a base install may lack (uvicorn usually comes with apache-airflow-core).
EXTRA_MODULES = ("moto", "aiosmtpd", "uvicorn")
INSTALL_HINT = "pip install 'm3sh[sandbox]'"


class SandboxExtraMissing(ImportError):
    """The sandbox or demo was asked for on an install without the ``sandbox`` extra."""


def missing_modules() -> list[str]:
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_sandbox_extra(what: str = "the m3sh sandbox") -> None:
    missing = missing_modules()
    if missing:
        raise SandboxExtraMissing(f"{what} needs {', '.join(missing)}, which the base install leaves out: "
                                  f"{INSTALL_HINT}")
