"""Published HubSpot, Salesforce and NetSuite connectors judge the emulators, measured beside m3sh (issue 20).

``make conformance`` (``python -m benchmarks.peers --conformance``) and ``make bench`` run this. Each
peer is installed unmodified from PyPI into its own cached virtualenv
(``.cache/peers/<package>-<version>/``, re-used when present) and started against a fresh demo-seeded
sandbox with only a transport-level redirect (``benchmarks/_peer_redirect/sitecustomize.py``: its
``https://api.hubapi.com``, ``https://login.salesforce.com`` and Salesforce instance requests go to
the emulators; a NetSuite account's ``https://<account>.suitetalk.api.netsuite.com``, whose requests
are TBA-signed over their URL, is forwarded keeping its ``Host``). Per peer, three phases:

* **discover**: the peer's catalog must list the companies and deals streams (and line items where
  the peer has that stream), or Account, Opportunity and Contract, or customer and invoice (NetSuite's
  demo seed has none: the harness creates them through the REST record API first);
* **full**: a sync of those streams from scratch must return exactly the seed's record ids;
* **incremental**: after a known change (a few companies, deals and line items, Accounts,
  Opportunities and Contracts, or customers and invoices, edited through the API), a sync from the
  full sync's state must return every changed id; the ids it returns besides are listed (a
  connector may re-read records at its bookmark: counted, not a failure).

A failed phase names each request the emulator refused (method, path, status, its answer) and any
spec-guard violation. With ``--conformance`` the spec guard is on (as in the tests) and the exit code
is 1 when a phase failed; as a benchmark it is off (as in the other benchmarks) and the last line is
``{"runs": [{"tool", "system", "phase", "completed", "records", "requests", "seconds",
"cpu_seconds", "http_429"}, ...]}`` with m3sh's own ``extract_hubspot`` as one tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from urllib3.util.retry import Retry

from benchmarks._common import PORT_START, admin, emit, sandbox, sized

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("M3SH_PEER_CACHE", ROOT / ".cache" / "peers"))
REDIRECT_DIR = Path(__file__).resolve().parent / "_peer_redirect"
# A hung peer is stopped here. At --scale 10000 tap-hubspot had made 8,705 requests (HubSpot's 100
# per 10 s bind) for 18,654 of its ~20,000 records when 900 s stopped it on 2026-12-03.
PHASE_TIMEOUT_S = 1800.0
START_DATE = "2015-01-01T00:00:00Z"  # before every seeded record
# Salesforce peers start where airbyte-source-salesforce does when no start date is given (two years
# back; the demo seed's records are all newer): it queries in 30-day windows from the start date.
SF_START_DATE = (dt.datetime.now(dt.UTC) - dt.timedelta(days=730)).strftime("%Y-%m-%dT00:00:00Z")
# The known change of the incremental phase: how many of each seeded object get an edit.
CHANGES = {"hubspot": {"companies": 3, "deals": 2, "line_items": 2},
           "salesforce": {"Account": 3, "Opportunity": 2, "Contract": 2},
           "netsuite": {"customer": 3, "invoice": 2}}
SF_API = "v61.0"
# The harness's own calls (seed ids, the known change) meet the same rate limits as the tools it
# measures (at --scale, 100 list pages): a 429 is waited out (Retry-After) and the call repeated
# (a 429 means nothing was applied). These are set-up, outside each phase's request counts.
HTTP = requests.Session()
HTTP.mount("http://", requests.adapters.HTTPAdapter(max_retries=Retry(
    total=20, status_forcelist=[429], allowed_methods=None, backoff_factor=0.5, respect_retry_after_header=True,
    raise_on_status=False)))
# NetSuite's demo seed has no customers or invoices (m3sh creates them), so the harness creates
# these through the REST record API before a NetSuite peer's discover, as m3sh's invoice sync would.
NS_SEED = {"customer": 25, "invoice": 50}
NS_HOST_SUFFIX = ".suitetalk.api.netsuite.com"  # production host of an account: <account>.suitetalk...
# airbyte-source-netsuite queries lastModifiedDate in window_in_days date windows from its start; the
# NetSuite records are all created during the run, so it starts 30 days back (one default window).
NS_START_DATE = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).strftime("%Y-%m-%dT00:00:00Z")


@dataclass(frozen=True)
class Peer:
    package: str
    version: str
    streams: dict[str, str]  # the peer's stream name -> the emulator's object type
    id_field: dict[str, str]  # the peer's stream name -> the record field holding the vendor's id
    system: str = "hubspot"
    command: str = ""  # the console script; default: the package name
    # stream -> a known fault of this release, printed under a phase whose records of it are wrong
    known: dict[str, str] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        return CACHE / f"{self.package}-{self.version}"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


PEERS = [
    # Its line_items stream pages GET /crm/v3/objects/line_item by offset (source_hubspot/manifest.yaml:
    # base_crm_object_stream -> base_retriever -> offset_paginator, OffsetIncrement of 100), which the
    # v3 list does not take (HubSpot answers the first page again): past 100 line items (any --scale)
    # the emulator refuses its second page. Airbyte fixed it after this, its last PyPI release
    # (airbytehq/airbyte#61502: cursor pagination, "lead to stuck sync"); see hubspot/strict.py.
    Peer("airbyte-source-hubspot", "5.7.0",
         {"companies": "companies", "deals": "deals", "line_items": "line_items"},
         {"companies": "id", "deals": "id", "line_items": "id"},
         known={"line_items": "5.7.0 pages line items by offset, which HubSpot's v3 list ignores (first page "
                              "again: a sync that never ends); fixed upstream by airbytehq/airbyte#61502, not "
                              "released on PyPI. --skip-stream line_items measures the rest"}),
    # Singer's tap-hubspot has no line items stream.
    Peer("tap-hubspot", "4.5.0", {"companies": "companies", "deals": "deals"},
         {"companies": "companyId", "deals": "dealId"}),
    # Singer's original tap (singer-io; MeltanoLabs' fork is not on PyPI), REST API: queryAll.
    Peer("tap-salesforce", "2.8.1", {s: s for s in CHANGES["salesforce"]}, {s: "Id" for s in CHANGES["salesforce"]},
         system="salesforce"),
    # Bulk API 2.0 query jobs for every seeded object (none has a compound or base64 field). Its
    # incremental sync starts 10 minutes before the saved cursor (source_salesforce/streams.py:
    # DEFAULT_LOOKBACK_SECONDS = 600), so it re-reads the whole seed here, seeded seconds before.
    Peer("airbyte-source-salesforce", "2.10.3", {s: s for s in CHANGES["salesforce"]},
         {s: "Id" for s in CHANGES["salesforce"]}, system="salesforce", command="source-salesforce"),
    # REST record API with TBA: metadata-catalog JSON Schemas, then per stream a `q`-filtered
    # lastModifiedDate window list and one GET per record (expandSubResources).
    Peer("airbyte-source-netsuite", "0.1.29", {s: s for s in CHANGES["netsuite"]},
         {s: "id" for s in CHANGES["netsuite"]}, system="netsuite", command="source-netsuite"),
]


@dataclass
class Phase:
    tool: str
    phase: str
    completed: bool = False
    records: int = 0
    requests: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    http_429: int = 0
    problems: list[str] = field(default_factory=list)
    ids: dict[str, set[str]] = field(default_factory=dict)
    extra_ids: dict[str, list[str]] = field(default_factory=dict)
    system: str = "hubspot"

    def run_row(self) -> dict[str, Any]:
        return {"tool": self.tool, "system": self.system, "phase": self.phase, "completed": self.completed,
                "records": self.records, "requests": self.requests, "seconds": round(self.seconds, 2),
                "cpu_seconds": round(self.cpu_seconds, 2), "http_429": self.http_429}


def ensure_venv(peer: Peer) -> Path:
    """The peer's virtualenv, created and ``pip install``-ed once (a marker file says it finished)."""
    marker = peer.venv / ".m3sh-installed"
    if marker.exists():
        return peer.venv
    print(f">> installing {peer.package}=={peer.version} into {peer.venv} (once)", file=sys.stderr, flush=True)
    peer.venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(peer.venv)], check=True)
    subprocess.run([str(peer.bin("python")), "-m", "pip", "install", "-q", f"{peer.package}=={peer.version}"],
                   check=True)
    marker.write_text(f"{peer.package}=={peer.version}\n")
    return peer.venv


# ------------------------------------------------------------------------------ running a peer
@dataclass
class Run:
    stdout: str
    stderr: str
    returncode: int
    seconds: float
    cpu_seconds: float
    requests: list[dict[str, Any]]


def run_peer(peer: Peer, args: list[str], redirects: dict[str, str], workdir: Path) -> Run:
    """Run one peer command; ``redirects``: production origin -> sandbox URL (the transport redirect's map)."""
    log = workdir / f"requests-{time.monotonic_ns()}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "AIRFLOW_CONN"))}
    # NetSuite's requests are signed over their URL: its origins are forwarded keeping their Host.
    keep_host = [origin for origin in redirects if origin.endswith(NS_HOST_SUFFIX)]
    env.update({"PYTHONPATH": str(REDIRECT_DIR), "M3SH_PEER_REDIRECTS": json.dumps(redirects),
                "M3SH_PEER_KEEP_HOST": json.dumps(keep_host),
                "M3SH_PEER_LOG": str(log), "PATH": f"{peer.venv / 'bin'}:{env.get('PATH', '')}"})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S,
                              check=False)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"timed out after {PHASE_TIMEOUT_S:.0f} s"
        code = -1
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    reqs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return Run(out, err, code, seconds, cpu, reqs)


def messages(stdout: str) -> Iterator[dict[str, Any]]:
    for raw in stdout.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


def refused(run: Run) -> list[str]:
    """Each request the emulator answered with an error, once per endpoint and status (429s are
    counted in ``http_429``, not failures: a client that waits and retries is right)."""
    seen: dict[tuple[str, str, int], dict[str, Any]] = {}
    counts: dict[tuple[str, str, int], int] = {}
    for r in run.requests:
        if r["status"] >= 400 and r["status"] != 429:
            key = (r["method"], r["url"].split("?")[0], r["status"])
            seen.setdefault(key, r)
            counts[key] = counts.get(key, 0) + 1
    out = []
    for key, r in seen.items():
        query = r["url"].split("?", 1)[1] if "?" in r["url"] else ""
        path = key[1].split("://", 1)[-1]
        out.append(f"{key[0]} {path}"
                   f"{'?' + query[:200] if query else ''} -> {key[2]} (x{counts[key]}): {r.get('answer', '')[:400]}")
    return out


def tail(text: str, lines: int = 8) -> str:
    return "\n    ".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------ per-peer protocols
def _command(peer: Peer) -> str:
    return str(peer.bin(peer.command or peer.package))


def airbyte_discover(peer: Peer, url: dict[str, str], work: Path, config: Path) -> tuple[Run, dict[str, Any] | None]:
    run = run_peer(peer, [str(peer.bin(peer.command or "source-hubspot")), "discover", "--config", str(config)],
                   url, work)
    catalog = next((m["catalog"] for m in messages(run.stdout) if m.get("type") == "CATALOG"), None)
    return run, catalog


def airbyte_configure(peer: Peer, catalog: dict[str, Any]) -> dict[str, Any]:
    streams = []
    for s in catalog["streams"]:
        if s["name"] in peer.streams:
            incremental = "incremental" in s.get("supported_sync_modes", [])
            streams.append({"stream": s, "sync_mode": "incremental" if incremental else "full_refresh",
                            "destination_sync_mode": "append",
                            "cursor_field": s.get("default_cursor_field") or []})
    return {"streams": streams}


def airbyte_read(peer: Peer, url: dict[str, str], work: Path, config: Path, catalog: Path, *,
                 state: Any) -> tuple[Run, dict[str, set[str]], Any]:
    args = [str(peer.bin(peer.command or "source-hubspot")), "read", "--config", str(config), "--catalog", str(catalog)]
    if state is not None:
        (work / "state.json").write_text(json.dumps(state))
        args += ["--state", str(work / "state.json")]
    run = run_peer(peer, args, url, work)
    ids: dict[str, set[str]] = {s: set() for s in peer.streams}
    states: dict[str, Any] = {}
    for m in messages(run.stdout):
        if m.get("type") == "RECORD":
            rec = m["record"]
            if rec["stream"] in ids:
                ids[rec["stream"]].add(str(rec["data"].get(peer.id_field[rec["stream"]])))
        elif m.get("type") == "STATE":
            st = m["state"]
            key = json.dumps(st.get("stream", {}).get("stream_descriptor", st.get("type")), sort_keys=True)
            states[key] = st
        elif m.get("type") == "TRACE" and m.get("trace", {}).get("type") == "ERROR":
            run.stderr += "\nTRACE ERROR: " + str(m["trace"]["error"].get("message")) + " | " + str(
                m["trace"]["error"].get("internal_message"))[:500]
    return run, ids, list(states.values())


def tap_discover(peer: Peer, url: dict[str, str], work: Path, config: Path) -> tuple[Run, dict[str, Any] | None]:
    run = run_peer(peer, [_command(peer), "--config", str(config), "--discover"], url, work)
    try:
        catalog = json.loads(run.stdout) if run.returncode == 0 else None
    except ValueError:
        catalog = None
    return run, catalog


def tap_configure(peer: Peer, catalog: dict[str, Any]) -> dict[str, Any]:
    streams = []
    for s in catalog["streams"]:
        if s["tap_stream_id"] in peer.streams:
            for md in s["metadata"]:
                if md["breadcrumb"] == []:
                    md["metadata"]["selected"] = True
            streams.append(s)
    return {"streams": streams}


def tap_read(peer: Peer, url: dict[str, str], work: Path, config: Path, catalog: Path, *,
             state: Any) -> tuple[Run, dict[str, set[str]], Any]:
    args = [_command(peer), "--config", str(config), "--properties", str(catalog)]
    if state is not None:
        (work / "state.json").write_text(json.dumps(state))
        args += ["--state", str(work / "state.json")]
    run = run_peer(peer, args, url, work)
    ids: dict[str, set[str]] = {s: set() for s in peer.streams}
    last_state = None
    for m in messages(run.stdout):
        if m.get("type") == "RECORD" and m.get("stream") in ids:
            ids[m["stream"]].add(str(m["record"].get(peer.id_field[m["stream"]])))
        elif m.get("type") == "STATE":
            last_state = m.get("value")
    return run, ids, last_state


def tap_salesforce_configure(peer: Peer, catalog: dict[str, Any]) -> dict[str, Any]:
    """Select the streams as a Singer user does: incremental on the replication key discovery offers."""
    streams = []
    for s in catalog["streams"]:
        if s["tap_stream_id"] in peer.streams:
            for md in s["metadata"]:
                if md["breadcrumb"] == []:
                    keys = md["metadata"].get("valid-replication-keys") or []
                    md["metadata"].update({"selected": True, "replication-method": "INCREMENTAL" if keys else
                                           "FULL_TABLE", **({"replication-key": keys[0]} if keys else {})})
            streams.append(s)
    return {"streams": streams}


def _sf_config(_: str) -> dict[str, Any]:
    from m3sh.sandbox import credentials as cred

    return {"client_id": cred.SALESFORCE_CLIENT_ID, "client_secret": cred.SALESFORCE_CLIENT_SECRET,
            "refresh_token": cred.SALESFORCE_REFRESH_TOKEN, "start_date": SF_START_DATE, "is_sandbox": False}


def _ns_config(_: str) -> dict[str, Any]:
    from m3sh.sandbox import credentials as cred

    ns = cred.NETSUITE["default"]
    return {"realm": ns.account_id, "consumer_key": ns.consumer_key, "consumer_secret": ns.consumer_secret,
            "token_key": ns.token_id, "token_secret": ns.token_secret, "object_types": list(CHANGES["netsuite"]),
            "start_datetime": NS_START_DATE, "window_in_days": 30}


PROTOCOLS: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[[str], Any]]] = {
    "airbyte-source-hubspot": (
        airbyte_discover, airbyte_configure, airbyte_read,
        lambda token: {"credentials": {"credentials_title": "Private App Credentials", "access_token": token},
                       "start_date": START_DATE}),
    "tap-hubspot": (
        tap_discover, tap_configure, tap_read,
        lambda token: {"api_key": token, "start_date": START_DATE}),
    "tap-salesforce": (
        tap_discover, tap_salesforce_configure, tap_read,
        lambda token: {**_sf_config(token), "api_type": "REST", "select_fields_by_default": True}),
    "airbyte-source-salesforce": (
        airbyte_discover, airbyte_configure, airbyte_read,
        lambda token: {**_sf_config(token), "auth_type": "Client"}),
    "airbyte-source-netsuite": (airbyte_discover, airbyte_configure, airbyte_read, _ns_config),
}


# ------------------------------------------------------------------------------ the sandbox side
def seed_ids(url: str, token: str, object_type: str) -> set[str]:
    """Every live record id of a type, read through the v3 list endpoint (the emulator's own paging)."""
    ids: set[str] = set()
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        r = HTTP.get(f"{url}/crm/v3/objects/{object_type}", params=params,
                         headers={"Authorization": f"Bearer {token}"}, timeout=60)
        r.raise_for_status()
        body = r.json()
        ids.update(str(x["id"]) for x in body["results"])
        after = ((body.get("paging") or {}).get("next") or {}).get("after")
        if not after:
            return ids


def make_change(url: str, token: str, seeded: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edit the first few records of each type through the API (their last-modified time moves to now)."""
    changed: dict[str, set[str]] = {}
    prop = {"companies": "description", "deals": "description", "line_items": "description"}
    for object_type, count in CHANGES["hubspot"].items():
        ids = sorted(seeded[object_type], key=int)[:count]
        inputs = [{"id": i, "properties": {prop[object_type]: f"changed by the peers benchmark {i}"}} for i in ids]
        r = HTTP.post(f"{url}/crm/v3/objects/{object_type}/batch/update", json={"inputs": inputs},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
        if r.status_code >= 300:
            raise RuntimeError(f"could not make the known change to {object_type}: {r.status_code} {r.text[:300]}")
        changed[object_type] = set(ids)
    return changed


class SalesforceSide:
    """The harness's own Salesforce calls (seed ids, the known change), through the same OAuth
    refresh token flow the peers log in with."""

    def __init__(self, box: Any) -> None:
        from m3sh.sandbox import credentials as cred

        r = HTTP.post(f"{box.endpoints.url('salesforce')}/services/oauth2/token", timeout=60, data={
            "grant_type": "refresh_token", "client_id": cred.SALESFORCE_CLIENT_ID,
            "client_secret": cred.SALESFORCE_CLIENT_SECRET, "refresh_token": cred.SALESFORCE_REFRESH_TOKEN})
        r.raise_for_status()
        self.base = box.endpoints.url("salesforce_instance")
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def ids(self, sobject: str) -> set[str]:
        out: set[str] = set()
        r = HTTP.get(f"{self.base}/services/data/{SF_API}/query", params={"q": f"SELECT Id FROM {sobject}"},  # noqa: S608 - fixed names
                         headers=self.headers, timeout=60)
        while True:
            r.raise_for_status()
            body = r.json()
            out.update(rec["Id"] for rec in body["records"])
            if body.get("done", True):
                return out
            r = HTTP.get(self.base + body["nextRecordsUrl"], headers=self.headers, timeout=60)

    def change(self, seeded: dict[str, set[str]]) -> dict[str, set[str]]:
        changed: dict[str, set[str]] = {}
        for sobject, count in CHANGES["salesforce"].items():
            ids = sorted(seeded[sobject])[:count]
            for i in ids:
                r = HTTP.patch(f"{self.base}/services/data/{SF_API}/sobjects/{sobject}/{i}", headers=self.headers,
                                   json={"Description": f"changed by the peers benchmark {i}"}, timeout=60)
                if r.status_code >= 300:
                    raise RuntimeError(f"could not make the known change to {sobject} {i}: {r.status_code} "
                                       f"{r.text[:300]}")
            changed[sobject] = set(ids)
        return changed


class NetSuiteSide:
    """The harness's own NetSuite calls (creating the customers and invoices the peer reads, their
    ids, the known change), TBA-signed with requests-oauthlib as the peer signs."""

    def __init__(self, box: Any) -> None:
        from requests_oauthlib import OAuth1

        from m3sh.sandbox import credentials as cred

        ns = cred.NETSUITE["default"]
        self.base = box.endpoints.url("netsuite") + "/services/rest/record/v1"
        self.session = requests.Session()
        self.session.auth = OAuth1(ns.consumer_key, ns.consumer_secret, ns.token_id, ns.token_secret,
                                   realm=ns.account_id, signature_method="HMAC-SHA256")

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        r = self.session.request(method, self.base + path, timeout=60, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"NetSuite {method} {path}: {r.status_code} {r.text[:300]}")
        return r

    def seed(self) -> None:
        from m3sh.sandbox.seed import NETSUITE_ITEMS

        customers = []
        for n in range(NS_SEED["customer"]):
            r = self._send("POST", "/customer", json={"companyName": f"Peer Customer {n}", "externalId": f"PEER-{n}"})
            customers.append(r.headers["Location"].rsplit("/", 1)[1])
        for n in range(NS_SEED["invoice"]):
            self._send("POST", "/invoice", json={
                "entity": {"id": customers[n % len(customers)]}, "externalId": f"PEER-INV-{n}",
                "item": {"items": [{"item": {"id": NETSUITE_ITEMS["usage"]}, "quantity": n + 1, "rate": 2.5}]}})

    def ids(self, record_type: str) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            page = self._send("GET", f"/{record_type}", params={"offset": offset}).json()
            out.update(item["id"] for item in page["items"])
            if not page["hasMore"]:
                return out
            offset += page["count"]

    def change(self, seeded: dict[str, set[str]]) -> dict[str, set[str]]:
        changed: dict[str, set[str]] = {}
        for record_type, count in CHANGES["netsuite"].items():
            ids = sorted(seeded[record_type], key=int)[:count]
            field_name = "comments" if record_type == "customer" else "memo"
            for i in ids:
                self._send("PATCH", f"/{record_type}/{i}", json={field_name: f"changed by the peers benchmark {i}"})
            changed[record_type] = set(ids)
        return changed


def redirects(box: Any, system: str) -> dict[str, str]:
    """Production origin -> sandbox URL, for the peer's transport redirect."""
    from m3sh.sandbox import credentials as cred

    if system == "hubspot":
        return {"https://api.hubapi.com": box.endpoints.url("hubspot")}
    if system == "netsuite":
        account = cred.NETSUITE["default"].account_id.replace("_", "-").lower()
        return {f"https://{account}{NS_HOST_SUFFIX}": box.endpoints.url("netsuite")}
    return {f"https://{cred.SALESFORCE_LOGIN_HOST}": box.endpoints.url("salesforce"),
            f"https://{cred.SALESFORCE_INSTANCE_HOST}": box.endpoints.url("salesforce_instance")}


def sandbox_counts(box: Any, system: str = "hubspot") -> tuple[int, int]:
    stats = admin(box, system, "stats", "GET")
    return int(stats["counts"].get("total", 0)), int(stats.get("statuses", {}).get("429", 0))


_READ: dict[Path, int] = {}  # violations file -> lines already reported


def violations(coverage_dir: Path | None) -> list[str]:
    """The spec guard's violations recorded since the last call (the guard writes one line each;
    only HubSpot's emulator has published documents to judge by)."""
    if coverage_dir is None:
        return []
    out = []
    for path in sorted(coverage_dir.glob("violations-hubspot-*.jsonl")):
        lines = path.read_text().splitlines()
        for line in lines[_READ.get(path, 0):]:
            v = json.loads(line)
            out.append(f"spec guard ({v.get('kind')}): {v.get('request')} -> {v.get('status')}: "
                       f"{'; '.join(v.get('problems', []))}"[:500])
        _READ[path] = len(lines)
    return out


# ------------------------------------------------------------------------------ one peer, three phases
def reset(box: Any, system: str, scale: int) -> None:
    """The demo seed, plus ``scale`` more companies with a deal each (HubSpot) or Accounts with a
    Contract, an Opportunity and a line item each (Salesforce) — ``benchmarks.crm_sync``'s seeding,
    limits off while seeding (set-up, not the measured sync)."""
    box.reset("demo", limits=True)
    if not scale or system not in ("hubspot", "salesforce"):
        return
    from benchmarks.crm_sync import seed_hubspot, seed_salesforce

    today = dt.datetime.now(dt.UTC).date()
    admin(box, system, "limits", body={"enabled": False})
    try:
        if system == "hubspot":
            seed_hubspot(box, scale, today, dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        else:
            admin(box, "salesforce", "daily_limit", body={"max": 5_000_000, "used": 0})
            seed_salesforce(box, scale, today)
    finally:
        admin(box, system, "limits", body={"enabled": True})


def run_peer_phases(peer: Peer, box: Any, token: str, coverage_dir: Path | None, scale: int = 0) -> list[Phase]:
    discover, configure, read, make_config = PROTOCOLS[peer.package]
    system = peer.system
    url = redirects(box, system)
    work = Path(tempfile.mkdtemp(prefix=f"m3sh-peer-{peer.package}-"))
    config = work / "config.json"
    config.write_text(json.dumps(make_config(token)))
    tool = peer.package
    reset(box, system, scale)
    if system == "hubspot":
        hs_url = box.endpoints.url("hubspot")
        seeded = {t: seed_ids(hs_url, token, t) for t in set(peer.streams.values()) | set(CHANGES[system])}

        def change() -> dict[str, set[str]]:
            return make_change(hs_url, token, seeded)
    else:
        side: SalesforceSide | NetSuiteSide = SalesforceSide(box) if system == "salesforce" else NetSuiteSide(box)
        if isinstance(side, NetSuiteSide):
            side.seed()
        seeded = {t: side.ids(t) for t in set(peer.streams.values()) | set(CHANGES[system])}

        def change() -> dict[str, set[str]]:
            return side.change(seeded)
    phases: list[Phase] = []

    def measure(name: str, fn: Callable[[], tuple[Run, Any]]) -> tuple[Phase, Run, Any]:
        admin(box, system, "stats", "DELETE")
        violations(coverage_dir)  # skip what earlier phases left
        run, value = fn()
        total, n429 = sandbox_counts(box, system)
        ph = Phase(tool, name, requests=total, http_429=n429, seconds=run.seconds, cpu_seconds=run.cpu_seconds,
                   system=system)
        ph.problems += refused(run) + violations(coverage_dir)
        if run.returncode != 0:
            ph.problems.append(f"exit {run.returncode}: {tail(run.stderr)}")
        phases.append(ph)
        return ph, run, value

    ph, run, catalog = measure("discover", lambda: discover(peer, url, work, config))
    names = {s.get("name") or s.get("tap_stream_id") for s in (catalog or {}).get("streams", [])}
    missing = sorted(set(peer.streams) - names)
    if catalog is None or missing:
        ph.problems.append(f"catalog lacks {missing or 'everything'}")
    ph.completed = run.returncode == 0 and not missing
    ph.records = len(names)
    if not ph.completed:
        return phases
    (work / "catalog.json").write_text(json.dumps(configure(peer, catalog)))

    def sync(name: str, state: Any) -> tuple[Phase, Any]:
        def call() -> tuple[Run, Any]:
            run, ids, new_state = read(peer, url, work, config, work / "catalog.json", state=state)
            return run, (ids, new_state)

        ph, run, value = measure(name, call)
        ids, new_state = value
        ph.ids = ids
        ph.records = sum(len(v) for v in ids.values())
        ph.completed = run.returncode == 0
        return ph, new_state

    full, state = sync("full", None)
    for stream, object_type in peer.streams.items():
        got, want = full.ids[stream], seeded[object_type]
        if got != want:
            full.problems.append(f"{stream}: {len(got)} records, seed has {len(want)}; missing "
                                 f"{sorted(want - got)[:5]}, unexpected {sorted(got - want)[:5]}")
            if stream in peer.known:
                full.problems.append(f"known: {stream}: {peer.known[stream]}")
    full.completed = full.completed and not full.problems
    if not full.completed:
        return phases
    changed = change()
    inc, _ = sync("incremental", state)
    for stream, object_type in peer.streams.items():
        got, want = inc.ids[stream], changed.get(object_type, set())
        if want - got:
            inc.problems.append(f"{stream}: changed {sorted(want)}, missing {sorted(want - got)}")
            if stream in peer.known:
                inc.problems.append(f"known: {stream}: {peer.known[stream]}")
        if got - want:
            inc.extra_ids[stream] = sorted(got - want)
    inc.completed = inc.completed and not inc.problems
    return phases


# ------------------------------------------------------------------------------ m3sh's own extract
def m3sh_phases(box: Any, system: str = "hubspot", scale: int = 0) -> list[Phase]:
    """m3sh's own extract over the same seed — ``extract_hubspot`` (companies with deals and line
    items) or ``extract_salesforce`` (Accounts with Contracts and Opportunities): full, then
    incremental after the same known change. Records are the accounts/companies extracted."""
    from m3sh.config import load_config
    from m3sh.crm.hubspot import extract_hubspot
    from m3sh.crm.salesforce import extract_salesforce
    from m3sh.sandbox import credentials

    cfg = load_config(ROOT / "include" / "m3sh.yaml")
    source = next(s for s in cfg.crm.sources if s.type == system)
    reset(box, system, scale)
    account = "companies" if system == "hubspot" else "Account"
    if system == "hubspot":
        url = box.endpoints.url("hubspot")
        seeded = {t: seed_ids(url, credentials.HUBSPOT_TOKEN, t) for t in CHANGES["hubspot"]}

        def change() -> dict[str, set[str]]:
            return make_change(url, credentials.HUBSPOT_TOKEN, seeded)
        extract = extract_hubspot
    else:
        side = SalesforceSide(box)
        seeded = {t: side.ids(t) for t in CHANGES["salesforce"]}

        def change() -> dict[str, set[str]]:
            return side.change(seeded)
        extract = extract_salesforce  # type: ignore[assignment]
    phases = []
    start = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
    for name in ("full", "incremental"):
        if name == "incremental":
            # the window starts a second back and Salesforce's SystemModstamp is whole seconds: let the
            # seeding's seconds pass first, or seeded records count as changes
            time.sleep(2.1)
            start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            changed = change()
        admin(box, system, "stats", "DELETE")
        cpu0, t0 = time.process_time(), time.perf_counter()
        ph = Phase("m3sh", name, system=system)
        try:
            out = extract(source, start, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
                          plan_map=cfg.crm.plan_map)
            ph.completed = True
        except Exception as exc:  # reported as the phase's failure, not raised
            out = []
            ph.problems.append(f"{type(exc).__name__}: {exc}"[:500])
        ph.seconds, ph.cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        ph.requests, ph.http_429 = sandbox_counts(box, system)
        ph.records = len(out)
        got = {a.crm_id for a in out}
        want = seeded[account] if name == "full" else None
        if want is not None and got != want:
            ph.problems.append(f"{account}: {len(got)} extracted, seed has {len(want)}")
            ph.completed = False
        if name == "incremental" and not changed[account] <= got:
            ph.problems.append(f"{account}: changed {sorted(changed[account])} not all extracted")
            ph.completed = False
        phases.append(ph)
    return phases


# ------------------------------------------------------------------------------ main
def report(phases: list[Phase]) -> None:
    for ph in phases:
        mark = "PASS" if ph.completed else "FAIL"
        print(f"{mark} {ph.tool:26} {ph.system:10} {ph.phase:12} records={ph.records:<5} requests={ph.requests:<5} "
              f"wall={ph.seconds:7.2f}s cpu={ph.cpu_seconds:6.2f}s 429={ph.http_429}", file=sys.stderr)
        for stream, extra in ph.extra_ids.items():
            print(f"     note: {stream}: {len(extra)} unchanged record(s) re-read too: {extra[:5]}", file=sys.stderr)
        for p in ph.problems:
            print(f"     {p}", file=sys.stderr)
    sys.stderr.flush()


def summary(phases: list[Phase]) -> dict[str, Any]:
    """Flat figures for ``make bench``'s table (it shows numbers, not the ``runs`` list); HubSpot's
    keep their names, Salesforce's have a ``salesforce_`` prefix."""
    out: dict[str, Any] = {"phases_completed": sum(ph.completed for ph in phases), "phases": len(phases)}
    for system in ("hubspot", "salesforce", "netsuite"):
        prefix = "" if system == "hubspot" else f"{system}_"
        full = {ph.tool: ph for ph in phases if ph.phase == "full" and ph.completed and ph.system == system}
        peers = [ph for tool, ph in full.items() if tool != "m3sh"]
        if "m3sh" in full:
            out[f"{prefix}m3sh_full_seconds"] = round(full["m3sh"].seconds, 2)
            out[f"{prefix}m3sh_full_requests"] = full["m3sh"].requests
        if peers:
            best = min(peers, key=lambda ph: ph.seconds)
            out[f"{prefix}best_peer_full_seconds"] = round(best.seconds, 2)
            out[f"{prefix}best_peer_full_requests"] = min(ph.requests for ph in peers)
        if peers and "m3sh" in full:
            # issue 20's targets: m3sh's full extraction in <= 1/3 of the best peer's wall time, with no
            # more requests than the peer that needs fewest
            out[f"{prefix}m3sh_vs_best_peer_seconds"] = round(full["m3sh"].seconds / max(best.seconds, 1e-9), 3)
            out[f"{prefix}m3sh_requests_over_best_peer"] = full["m3sh"].requests - min(ph.requests for ph in peers)
        incremental = [ph for ph in phases if ph.tool == "m3sh" and ph.system == system and ph.phase == "incremental"
                       and ph.completed]
        if incremental:
            out[f"{prefix}m3sh_incremental_requests"] = incremental[0].requests
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conformance", action="store_true",
                        help="spec guard on; exit 1 when any phase of any peer failed")
    parser.add_argument("--only", default="", help="comma-separated peer packages (and/or m3sh)")
    parser.add_argument("--skip-stream", action="append", default=[],
                        help="a stream to leave out of every peer's catalog (to see the later phases while "
                             "one stream fails); the run then does not count as conformance")
    parser.add_argument("--scale", type=int, default=None,
                        help="seed this many more HubSpot companies (with a deal each) and Salesforce Accounts (with "
                             "a Contract, Opportunity and line item each) than the demo's, and change 100 of them "
                             "for the incremental phase (default: 10000 as a benchmark, 2000 quick, 0 with "
                             "--conformance)")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = 0 if args.conformance else sized(10_000, 2_000)
    if args.scale:  # issue 20's incremental phase at scale: 100 changed companies / Accounts
        CHANGES["hubspot"]["companies"] = CHANGES["salesforce"]["Account"] = 100
    # A SIGTERM (timeout, Ctrl-C from make) unwinds through the sandbox's context manager, so its
    # emulator processes stop with the harness.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = {s for s in args.only.split(",") if s}
    from m3sh.sandbox import credentials

    coverage_dir: Path | None = None
    saved = dict(os.environ)
    if args.conformance:
        coverage_dir = Path(tempfile.mkdtemp(prefix="m3sh-peer-spec-"))
        os.environ.update({"M3SH_SANDBOX_SPEC_CHECK": "1", "M3SH_SPEC_COVERAGE_DIR": str(coverage_dir)})
    skip = set(args.skip_stream)
    peers = [dataclasses.replace(p, streams={k: v for k, v in p.streams.items() if k not in skip})
             for p in PEERS if not only or p.package in only]
    for peer in peers:
        ensure_venv(peer)
    phases: list[Phase] = []
    m3sh_systems = {"hubspot", "salesforce"} if not only or "m3sh" in only else set()
    systems = sorted({p.system for p in peers} | m3sh_systems)
    try:
        # M3SH_TEST_PORT_BASE (a developer's own port range) moves where free ports are searched from.
        start = int(os.environ.get("M3SH_TEST_PORT_BASE") or PORT_START)
        with sandbox(systems, limits=True, start=start) as box:
            for peer in peers:
                print(f">> {peer.package}=={peer.version}", file=sys.stderr, flush=True)
                phases += run_peer_phases(peer, box, credentials.HUBSPOT_TOKEN, coverage_dir, args.scale)
            for system in sorted(m3sh_systems):
                print(f">> m3sh extract_{system}", file=sys.stderr, flush=True)
                phases += m3sh_phases(box, system, args.scale)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    report(phases)
    emit({"runs": [ph.run_row() for ph in phases], "scale": args.scale, **summary(phases)})
    if args.conformance:
        expected = {(p.package, ph) for p in peers for ph in ("discover", "full", "incremental")}
        passed = {(ph.tool, ph.phase) for ph in phases if ph.completed}
        return 0 if expected <= passed and not skip else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
