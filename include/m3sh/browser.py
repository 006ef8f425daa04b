"""Find (or install) the headless Chromium the browser tests drive, and how to launch it.

Browser test tools cannot download their own browsers here (``playwright install`` fetches from a
CDN), so the tests drive Debian's ``chromium`` package through the Playwright Python package
(which ships its driver) with ``executable_path``. When Chromium is missing and we are root with
apt, it is installed from Debian's registry; otherwise :class:`BrowserUnavailable` says why, and
the tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "/usr/bin/google-chrome")
# --no-sandbox: root in a container; the network flags keep Chromium from calling Google's hosts
# (refused on a closed network, one error per attempt and slower starts).
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]


class BrowserUnavailable(RuntimeError):
    """No usable Chromium or Playwright; the message is the reason to show (e.g. as a skip)."""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.exists(path) and os.access(path, os.X_OK):
            return path
    return None


def ensure_chromium(install: bool = True, timeout_s: float = 900) -> str:
    """The Chromium executable; installs Debian's ``chromium`` when missing, root and apt allow it."""
    found = find_chromium()
    if found:
        return found
    if not install:
        raise BrowserUnavailable("Chromium is not installed (apt-get install chromium)")
    apt = shutil.which("apt-get")
    if apt is None:
        raise BrowserUnavailable("Chromium is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        raise BrowserUnavailable("Chromium is not installed; run `sudo apt-get install -y chromium` (not root here)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in ([apt, *lock, "update", "-q"], [apt, *lock, "install", "-y", "-q", "--no-install-recommends",
                                                 "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise BrowserUnavailable(f"`{' '.join(cmd[0:1] + cmd[3:])}` failed ({proc.returncode}): "
                                     f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    found = find_chromium()
    if not found:
        raise BrowserUnavailable("apt-get installed chromium but no chromium executable was found")
    return found


def ensure_playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailable(f"the playwright package is not installed (pip install -e '.[dev]'): {exc}") from None
