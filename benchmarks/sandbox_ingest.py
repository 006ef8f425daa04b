"""Ingest throughput of the m3ter emulator: ``python -m benchmarks.sandbox_ingest``.

Starts only the m3ter emulator (limits off, demo seed) on a free port base, then posts batches
of 1000 measurements from a few threads with keep-alive ``requests`` sessions. Bodies are
serialised before the clock starts so the number measures the emulator, not the client's JSON
encoder. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import tempfile
import threading
import time
from pathlib import Path

import requests

from m3sh.sandbox import credentials as cred
from m3sh.sandbox import seed
from m3sh.sandbox.runner import Sandbox, SandboxEndpoints, free_port_base

TARGET = 60_000


def build_bodies(batches: int, size: int) -> list[bytes]:
    accounts = [c.key for c in seed.demo_company().customers if c.in_m3ter]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    bodies = []
    for b in range(batches):
        items = [{"uid": f"bench-{b}-{i}", "account": accounts[i % len(accounts)], "meter": "api_calls",
                  "ts": ts, "measure": {"quantity": i % 97}, "where": {"region": "us-east-1"}}
                 for i in range(size)]
        bodies.append(json.dumps({"measurements": items}).encode())
    return bodies


def run(batches: int, threads: int, size: int) -> dict[str, float | int]:
    base = free_port_base(["m3ter"], start=19400)
    root = Path(tempfile.mkdtemp(prefix="m3sh-bench-"))
    sandbox = Sandbox(root, SandboxEndpoints(port_base=base), only=["m3ter"])
    sandbox.up(seed="demo", limits=False)
    try:
        url = sandbox.endpoints.url("m3ter")
        basic = base64.b64encode(f"{cred.M3TER_ACCESS_KEY}:{cred.M3TER_API_SECRET}".encode()).decode()
        token = requests.post(f"{url}/oauth/token", json={"grant_type": "client_credentials"},
                              headers={"Authorization": f"Basic {basic}"}, timeout=10).json()["access_token"]
        endpoint = f"{sandbox.endpoints.url('m3ter_ingest')}/organizations/{cred.M3TER_ORG_ID}/measurements"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        bodies = build_bodies(batches, size)
        errors: list[str] = []

        def worker(mine: list[bytes]) -> None:
            with requests.Session() as session:
                for body in mine:
                    r = session.post(endpoint, data=body, headers=headers, timeout=60)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")

        workers = [threading.Thread(target=worker, args=(bodies[i::threads],)) for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} batches failed, first: {errors[0]}")
        accepted = requests.get(f"{url}/_sandbox/state", timeout=30).json()["usage"]["accepted"]
        if accepted != batches * size:
            raise RuntimeError(f"emulator accepted {accepted} of {batches * size} measurements")
    finally:
        sandbox.down(quiet=True)
    total = batches * size
    return {"measurements_per_s": round(total / seconds), "measurements": total, "seconds": round(seconds, 3),
            "target": TARGET, "threads": threads, "batch_size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(run(args.batches, args.threads, args.batch_size)))


if __name__ == "__main__":
    main()
