"""``m3sh sandbox up|down|reset|status``: start the emulators and moto, write ``.sandbox/env``.

State of a running sandbox lives in ``<root>/.sandbox/``: ``state.json`` (pids and ports),
``env`` (``export AIRFLOW_CONN_*=...`` lines to ``source``), and one log file per process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from m3sh.sandbox import credentials as cred
from m3sh.sandbox.platform import PLATFORM_TOKEN
from m3sh.sandbox.seed import NETSUITE_ACCOUNTS
from m3sh.sandbox.serve import EMULATORS

DEFAULT_PORT_BASE = 8710
PORT_OFFSETS = {"m3ter": 1, "hubspot": 2, "netsuite": 3, "salesforce": 4, "moto": 5, "platform": 6}
SMTP_OFFSET = 7  # the platform emulator's SMTP catcher
# Where production splits a system across hosts, the emulator's process also listens on ports of its
# own for the other hosts (see Emulator.listener_apps): listener -> (emulator, role, port offset).
# m3ter: api.m3ter.com (main port) vs ingest.m3ter.com; Salesforce: login.salesforce.com (main port)
# vs the org's instance host; NetSuite: one <account>.suitetalk.api.netsuite.com host per account
# (the main port is the default account's).
LISTENERS: dict[str, tuple[str, str, int]] = {
    "m3ter_ingest": ("m3ter", "ingest", 8),
    "salesforce_instance": ("salesforce", "instance", 9),
    # a second Salesforce org's instance host (several CRM sources of one type); same login host
    "salesforce_acme_instance": ("salesforce", "instance_acme", 19),
    **{f"netsuite_{name}": ("netsuite", name, 10 + i)
       for i, name in enumerate(n for n in NETSUITE_ACCOUNTS if n != "default")},
}


def listeners_of(emulator: str) -> dict[str, tuple[str, int]]:
    """The extra listeners of one emulator process: listener name -> (role, port offset)."""
    return {name: (role, off) for name, (emu, role, off) in LISTENERS.items() if emu == emulator}
HEALTH_TIMEOUT_S = 20.0


class SandboxError(RuntimeError):
    """The sandbox could not start, stop or be reached; the message says which emulator and why."""


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound right now (nobody listens on it)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_base(names: Iterable[str] = tuple(PORT_OFFSETS), start: int = 20000, stop: int = 29000,
                   step: int = 10, extra_offsets: Iterable[int] = ()) -> int:
    """The first port base from ``start`` at which every port the named emulators need (and
    ``extra_offsets``, e.g. an Airflow api-server at base + 80) can be bound right now.

    Why: :meth:`Sandbox.up` on a base where a sandbox already answers resets and adopts it, which is
    right for ``m3sh sandbox up`` but wrong for a test session or benchmark beside someone else's.
    """
    wanted = list(names)
    offsets = [PORT_OFFSETS[n] for n in wanted] + ([SMTP_OFFSET] if "platform" in wanted else [])
    offsets += [off for n in wanted for _role, off in listeners_of(n).values()]
    offsets += list(extra_offsets)
    for base in range(start, stop, step):
        if all(port_bindable(base + off) for off in offsets):
            return base
    raise SandboxError(f"no free port base between {start} and {stop} for {', '.join(wanted)}")


@dataclass(frozen=True)
class SandboxEndpoints:
    """Where each emulator listens, derived from one port base so tests can run beside a demo."""

    port_base: int = DEFAULT_PORT_BASE
    host: str = "127.0.0.1"

    def port(self, name: str) -> int:
        """The port of an emulator (its main host) or of one of its :data:`LISTENERS`."""
        if name in LISTENERS:
            return self.port_base + LISTENERS[name][2]
        return self.port_base + PORT_OFFSETS[name]

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port(name)}"

    def connections(self) -> dict[str, dict[str, Any]]:
        """Airflow connections (JSON form) that point the hooks and official clients here."""
        conns: dict[str, dict[str, Any]] = {
            "m3ter_default": {
                "conn_type": "m3ter",
                "host": self.url("m3ter"),
                "login": cred.M3TER_ACCESS_KEY,
                "password": cred.M3TER_API_SECRET,
                "extra": {"org_id": cred.M3TER_ORG_ID, "ingest_url": self.url("m3ter_ingest")},
            },
            "hubspot_default": {
                "conn_type": "hubspot",
                "host": self.url("hubspot"),
                "password": cred.HUBSPOT_TOKEN,
            },
            "salesforce_default": {
                "conn_type": "salesforce",
                "login": cred.SALESFORCE_USERNAME,
                "password": cred.SALESFORCE_PASSWORD,
                "extra": {
                    "security_token": cred.SALESFORCE_SECURITY_TOKEN,
                    # no "version": m3sh's pinned API version applies, as with a production connection
                    # Read by m3sh.hooks.salesforce: route simple-salesforce's https URLs, host by
                    # host, to the plain-http emulator's ports through a requests adapter (no
                    # patching of SalesforceHook); any other host is refused.
                    "sandbox_hosts": {cred.SALESFORCE_LOGIN_HOST: self.url("salesforce"),
                                      cred.SALESFORCE_INSTANCE_HOST: self.url("salesforce_instance")},
                },
            },
            "salesforce_acme": {  # the second org: its own user, same login host, its own instance
                "conn_type": "salesforce",
                "login": cred.SALESFORCE2_USERNAME,
                "password": cred.SALESFORCE2_PASSWORD,
                "extra": {
                    "security_token": cred.SALESFORCE2_SECURITY_TOKEN,
                    "sandbox_hosts": {cred.SALESFORCE_LOGIN_HOST: self.url("salesforce"),
                                      cred.SALESFORCE2_INSTANCE_HOST: self.url("salesforce_acme_instance")},
                },
            },
            "aws_default": {
                "conn_type": "aws",
                "login": cred.AWS_ACCESS_KEY,
                "password": cred.AWS_SECRET_KEY,
                "extra": {"endpoint_url": self.url("moto"), "region_name": "us-east-1"},
            },
            "m3sh_platform_default": {
                "conn_type": "http",
                "host": self.url("platform"),
                "password": PLATFORM_TOKEN,
            },
            "m3sh_customer_webhook": {
                "conn_type": "http",
                "host": self.url("platform") + "/hooks",
                "password": cred.WEBHOOK_SECRET,
            },
            # Secret m3sh's webhook receiver verifies m3ter notification signatures with; the same
            # secret is given to m3ter by `m3sh triggers sync-notifications`.
            "m3ter_webhook": {
                "conn_type": "generic",
                "password": cred.WEBHOOK_SECRET,
            },
            "m3sh_slack": {
                "conn_type": "slackwebhook",
                "host": self.url("platform") + "/slack",
                "password": "T0000/B0000/sandbox",
            },
            "smtp_default": {
                "conn_type": "smtp",
                "host": self.host,
                "port": self.port_base + SMTP_OFFSET,
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "m3sh@northwind.example"},
            },
        }
        for name, ns in cred.NETSUITE.items():
            conn_id = "netsuite_default" if name == "default" else f"netsuite_{name}"
            conns[conn_id] = {
                "conn_type": "netsuite",
                # Each account its own host, as <account>.suitetalk.api.netsuite.com in production.
                "host": self.url("netsuite" if name == "default" else f"netsuite_{name}"),
                "login": ns.consumer_key,
                "password": ns.consumer_secret,
                "extra": {
                    "account_id": ns.account_id,
                    "token_id": ns.token_id,
                    "token_secret": ns.token_secret,
                },
            }
        return conns

    def env_lines(self) -> list[str]:
        lines = []
        for conn_id, conn in self.connections().items():
            lines.append(f"export AIRFLOW_CONN_{conn_id.upper()}='{json.dumps(conn)}'")
        lines.append(f"export M3SH_SANDBOX_PORT_BASE={self.port_base}")
        return lines

    def env(self) -> dict[str, str]:
        """The same connections as a dict, for subprocesses and tests."""
        out = {f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in self.connections().items()}
        out["M3SH_SANDBOX_PORT_BASE"] = str(self.port_base)
        return out


class Sandbox:
    """Starts and stops the emulator processes of one sandbox instance."""

    def __init__(
        self, root: Path, endpoints: SandboxEndpoints | None = None, only: list[str] | None = None
    ) -> None:
        self.root = root
        self.dir = root / ".sandbox"
        self.endpoints = endpoints or SandboxEndpoints()
        # A subset (e.g. only m3ter and moto) can be started for focused tests or demos;
        # M3SH_SANDBOX_EMULATORS=m3ter,moto does the same from the environment.
        selected = only or [n for n in os.environ.get("M3SH_SANDBOX_EMULATORS", "").split(",") if n]
        unknown = set(selected) - set(PORT_OFFSETS)
        if unknown:
            raise SandboxError(f"unknown emulators {sorted(unknown)}; choose from {sorted(PORT_OFFSETS)}")
        self.names = [n for n in PORT_OFFSETS if not selected or n in selected]
        # In a container (docker-compose's m3sh-sandbox service) the emulators must listen on every
        # interface while the health checks still use the endpoints' host: M3SH_SANDBOX_BIND_HOST=0.0.0.0.
        self.bind_host = os.environ.get("M3SH_SANDBOX_BIND_HOST") or self.endpoints.host

    # -- process management -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _spawn(self, name: str, cmd: list[str]) -> int:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
        env = {**os.environ, "M3SH_PLATFORM_SMTP_PORT": str(self.endpoints.port_base + SMTP_OFFSET),
               # moto's request recorder (/moto-api/recorder/..., off until started) writes here, not
               # to ./moto_recording in the root
               "MOTO_RECORDER_FILEPATH": str(self.dir / "moto-recording.jsonl"),
               # where the m3ter emulator's file upload service keeps uploaded files (as m3ter does in S3)
               **({"M3SH_SANDBOX_MOTO_URL": self.endpoints.url("moto")} if "moto" in self.names else {})}
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, env=env
        )
        return proc.pid

    def up(self, seed: str = "demo", limits: bool = True, wait: bool = True) -> dict[str, Any]:
        """Start everything (idempotent: a healthy running sandbox is reset to ``seed`` instead)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.healthy():
            self.reset(seed, limits=limits)
            return self._state()
        self.down(quiet=True)
        pids: dict[str, int] = {}
        for name in (n for n in EMULATORS if n in self.names):
            listen = [f"--listen={role}={self.endpoints.port(lname)}" for lname, (role, _off)
                      in listeners_of(name).items()]
            pids[name] = self._spawn(
                name,
                [sys.executable, "-m", "m3sh.sandbox.serve", name, "--port", str(self.endpoints.port(name)),
                 "--seed", seed, "--limits", "on" if limits else "off", "--host", self.bind_host, *listen],
            )
        if "moto" in self.names:
            pids["moto"] = self._spawn(
                "moto",
                [sys.executable, "-m", "moto.server", "-H", self.bind_host, "-p",
                 str(self.endpoints.port("moto"))],
            )
        state = {"pids": pids, "port_base": self.endpoints.port_base, "seed": seed}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))
        (self.dir / "env").write_text("\n".join(self.endpoints.env_lines()) + "\n")
        if wait:
            try:
                self.wait_healthy()
                if "moto" in self.names:
                    self._seed_aws(seed)
            except BaseException:
                # One emulator failed to start: stop the others too, or they keep the ports and the
                # next `up` on them meets stale state (state.json still lists every pid).
                self.down(quiet=True)
                raise
        return state

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.names)
        pids = self._state().get("pids", {})
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if self._is_healthy(name):
                    pending.discard(name)
                elif name in pids and not _alive(pids[name]):
                    raise SandboxError(f"sandbox emulator {name!r} exited during start-up; "
                                       f"last log lines:\n{self._tail_log(name, 12)}")
            if pending:
                time.sleep(0.2)
        if pending:
            logs = {n: self._tail_log(n) for n in pending}
            raise SandboxError(f"sandbox emulators not healthy after {timeout_s:.0f}s: {sorted(pending)}; "
                               f"last log lines: {logs}")

    def _tail_log(self, name: str, lines: int = 5) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def pid(self, name: str) -> int | None:
        """The process id of the emulator ``name`` this sandbox started (None when it did not), so a
        benchmark can tell what the emulator's own CPU costs."""
        pid = self._state().get("pids", {}).get(name)
        return int(pid) if pid else None

    def _is_healthy(self, name: str) -> bool:
        if name == "moto":
            return self._answers(f"{self.endpoints.url('moto')}/moto-api/")
        # Every listener must answer, and as the process this sandbox started (when it knows the pid):
        # under load another session can pick the same free ports a moment earlier, and a foreign
        # emulator that answers our health check would be adopted and then vanish under our tests.
        pid = self._state().get("pids", {}).get(name)
        return all(self._answers(f"{self.endpoints.url(lname)}/_sandbox/health", pid)
                   for lname in [name, *listeners_of(name)])

    @staticmethod
    def _answers(url: str, pid: int | None = None) -> bool:
        try:
            r = requests.get(url, timeout=1)
        except requests.RequestException:
            return False
        if r.status_code != 200:
            return False
        return pid is None or r.json().get("pid") == pid

    def healthy(self) -> bool:
        return all(self._is_healthy(n) for n in self.names)

    def down(self, quiet: bool = False) -> None:
        state = self._state()
        for pid in state.get("pids", {}).values():
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                continue
        deadline = time.monotonic() + 5
        for pid in state.get("pids", {}).values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        if (self.dir / "state.json").exists():
            (self.dir / "state.json").unlink()
        if not quiet:
            print("sandbox stopped")

    def reset(self, seed: str = "demo", limits: bool = True) -> None:
        for name in (n for n in EMULATORS if n in self.names):
            r = requests.post(f"{self.endpoints.url(name)}/_sandbox/reset",
                              json={"seed": seed, "limits": limits}, timeout=30)
            if r.status_code != 200:
                raise SandboxError(f"reset of {name} failed: {r.status_code} {r.text[:200]}")
        if "moto" in self.names:
            requests.post(f"{self.endpoints.url('moto')}/moto-api/reset", timeout=30)
            self._seed_aws(seed)

    def status(self) -> dict[str, bool]:
        return {n: self._is_healthy(n) for n in self.names}

    # -- admin API (what tests of users' DAGs seed and assert with) -----------------------------
    def url(self, name: str) -> str:
        return self.endpoints.url(name)

    def admin(self, name: str, action: str, method: str = "GET", **body: object) -> dict[str, Any]:
        """Call an emulator's ``/_sandbox/<action>`` (e.g. ``admin("m3ter", "run_billing", "POST",
        accountIds=[...])``); the actions are listed in the README's sandbox section."""
        r = requests.request(method, f"{self.url(name)}/_sandbox/{action}", json=body or None, timeout=30)
        if r.status_code >= 400:
            raise SandboxError(f"{name} admin {action}: HTTP {r.status_code} {r.text[:300]}")
        result: dict[str, Any] = r.json()
        return result

    def state(self, name: str) -> dict[str, Any]:
        """The emulator's stored state (records per account or object type)."""
        return self.admin(name, "state")

    def stats(self, name: str) -> dict[str, Any]:
        """Requests served since the last reset: ``counts`` by ``"METHOD /path"``, ``recent``, ``statuses``."""
        return self.admin(name, "stats")

    def requests_to(self, name: str, method: str, path_suffix: str) -> int:
        """How many ``method`` requests the emulator served on paths ending in ``path_suffix``."""
        counts: dict[str, int] = self.stats(name)["counts"]
        return sum(n for k, n in counts.items() if k.startswith(f"{method} ") and k.endswith(path_suffix))

    def faults(self, name: str, **config: object) -> dict[str, Any]:
        """Inject faults (``fail_next``, ``error_status``, ``drop_next`` ...) into the emulator."""
        return self.admin(name, "faults", "POST", **config)

    def _seed_aws(self, seed: str) -> None:
        from m3sh.sandbox.aws_seed import seed_aws

        seed_aws(self.endpoints.url("moto"), seed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by us) is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return waited == 0
