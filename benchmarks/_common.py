"""Shared helpers for the benchmarks: a private sandbox subset, peak RSS, quick mode, JSON output.

Every benchmark starts only the emulators it needs, on a port base nobody else is using (so a
benchmark can run beside ``make demo`` or a test session), and prints exactly one JSON object as
the last line of its stdout; :mod:`benchmarks.__main__` parses that line.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from m3sh.sandbox.runner import Sandbox

QUICK_ENV = "M3SH_BENCH_QUICK"  # "1": every benchmark picks its smaller default sizes
PORT_START = 20000
PORT_STOP = 29000
PORT_STEP = 10


def quick() -> bool:
    """True when the runner was asked for a quick pass (``python -m benchmarks --quick``)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0", "false")


def sized(full: int, small: int) -> int:
    """A benchmark's default size: ``full`` normally, ``small`` in quick mode."""
    return small if quick() else full


def free_port_base(names: list[str], start: int = PORT_START, stop: int = PORT_STOP, step: int = PORT_STEP) -> int:
    """The first port base at which every port the named emulators need can be bound right now."""
    from m3sh.sandbox.runner import free_port_base as find

    return find(names, start=start, stop=stop, step=step)


@contextlib.contextmanager
def sandbox(names: list[str], *, limits: bool, seed: str = "demo", start: int = PORT_START) -> Iterator[Sandbox]:
    """Start a sandbox subset, export its Airflow connections into ``os.environ``, stop it on exit.

    Child processes started inside the block inherit the connections through the environment.
    """
    from m3sh.sandbox.runner import Sandbox, SandboxEndpoints

    root = Path(tempfile.mkdtemp(prefix="m3sh-bench-"))
    stop = max(PORT_STOP, start + PORT_STOP - PORT_START)  # a start above the default range searches as far
    box = Sandbox(root, SandboxEndpoints(port_base=free_port_base(names, start=start, stop=stop)), only=names)
    box.up(seed=seed, limits=limits)
    saved = dict(os.environ)
    os.environ.update(box.endpoints.env())
    try:
        yield box
    finally:
        box.down(quiet=True)
        os.environ.clear()
        os.environ.update(saved)


def process_cpu_seconds(pid: int | None) -> float:
    """CPU time of another process so far (Linux ``/proc/<pid>/stat`` utime + stime); 0 when unreadable."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin(box: Sandbox, emulator: str, action: str, method: str = "POST", *, body: dict[str, Any] | None = None,
          timeout: float = 300) -> Any:
    """Call an emulator's admin endpoint (``/_sandbox/<action>``) and return its JSON answer."""
    r = requests.request(method, f"{box.endpoints.url(emulator)}/_sandbox/{action}", json=body, timeout=timeout)
    if r.status_code >= 400:
        raise RuntimeError(f"{emulator} admin {method} {action} failed: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


def stats(box: Sandbox, emulator: str) -> dict[str, int]:
    """Request counts since the last :func:`clear_stats` (keys like ``"POST /organizations/{id}/measurements"``)."""
    return dict(admin(box, emulator, "stats", "GET")["counts"])


def clear_stats(box: Sandbox, emulator: str) -> None:
    admin(box, emulator, "stats", "DELETE")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (from ``/proc/self/statm``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def run_child(module: str, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` and return the JSON object on its last stdout line.

    Used to measure something in a fresh process (peak RSS of one ingest, DAG parse time without
    this process's imports); the child's stderr passes through so its progress stays visible.
    """
    import subprocess

    proc = subprocess.run([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)
    last = last_json_line(proc.stdout)
    if proc.returncode != 0 or last is None:
        tail = "\n".join(proc.stdout.splitlines()[-10:])
        raise RuntimeError(f"{module} {' '.join(args)} exited {proc.returncode}; last output:\n{tail}")
    return last


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The JSON object on the last non-empty line of ``stdout`` (None when it is not one)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's result as one JSON line: the contract with the runner."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


class Timer:
    """``with Timer() as t: ...; t.seconds`` (monotonic, high resolution)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def nearest_rank(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values, nearest rank (a few dozen samples: no interpolation)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)
