"""Run every benchmark and print one table of figures against targets: ``python -m benchmarks``.

Each module in ``benchmarks/`` (except ``_``-prefixed helpers) runs as ``python -m benchmarks.<name>``
in its own process with its defaults; the JSON object on its last stdout line is written to
``benchmarks/results/<name>.json`` together with the machine it ran on. The table is printed and
written as ``benchmarks/results/README_table.md`` (embedded by the README), built from the latest
result of *every* benchmark, so ``--only`` refreshes some rows without dropping the others.

Options: ``--only usage_ingest,crm_sync``; ``--quick`` (smaller sizes: ``M3SH_BENCH_QUICK=1`` for
modules that read it, plus :data:`QUICK_ARGS` for those that take flags); ``--list``.

Targets live here, in :data:`TARGETS`, and nowhere else. A missed target is reported, never raised:
the exit status is non-zero only when a benchmark crashed or printed no JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import QUICK_ENV, last_json_line

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# "<benchmark>.<figure>" -> (direction, target). Direction ">=" means bigger is better.
TARGETS: dict[str, tuple[str, float]] = {
    # limits on: 50 requests/s of 1,000 measurements per org is the ceiling; 0.9 of it
    "usage_ingest.rows_per_s": (">=", 45_000),
    # the client alone must never be what limits ingest
    "usage_ingest.rows_per_s_unlimited": (">=", 50_000),
    "usage_ingest.peak_rss_mb": ("<", 300),
    "usage_ingest.peak_rss_mb_quarter": ("<", 300),
    "usage_ingest.peak_rss_mb_5m": ("<", 300),
    "usage_ingest.speedup_vs_naive": (">=", 100),
    # sustained (phase 3): one worker keeps >= 0.95 of each per-IP window, over >= 3 windows, <= 1 % 429s
    "usage_ingest.fraction_of_limit": (">=", 0.95),
    "usage_ingest.sustained_windows": (">=", 3),
    "usage_ingest.limited_429_fraction": ("<=", 0.01),
    "usage_ingest.fraction_of_limit_2_workers": (">=", 0.90),
    "usage_ingest.workers_429_fraction": ("<=", 0.01),
    "usage_ingest.cpu_rows_per_s": (">=", 150_000),
    "usage_ingest.lost": ("<=", 0),
    "usage_ingest.duplicates": ("<=", 0),
    # bulk path (m3ter file uploads) end to end vs the request path, limits on, same run (issue 17).
    # The sandbox processes uploaded files as fast as it can; m3ter documents 2,000 rows/s, so in
    # production the ratio is bulk_vs_request_path_documented (about 0.12), not this.
    "usage_bulk.bulk_vs_request_path": (">=", 3.0),
    "usage_bulk.lost": ("<=", 0),
    "usage_bulk.duplicates": ("<=", 0),
    "usage_bulk.peak_rss_mb": ("<", 300),
    "crm_sync.fraction_of_limit": (">=", 0.9),
    "crm_sync.writes_on_rerun": ("<=", 0),
    "dag_parse.max_parse_s": ("<", 0.5),
    "sandbox_ingest.measurements_per_s": (">=", 60_000),
    "invoice_sync.ratio_to_bound": ("<=", 1.15),
    "invoice_sync.duplicates_after_rerun": ("<=", 0),
    "triggers.api_calls": ("<=", 120),
    "triggers.seconds": ("<=", 10),
    "triggers.double_fires": ("<=", 0),
    "triggers.webhook_to_action_p95_s": ("<=", 10),
    # event-driven usage: a file put into the watched S3 prefix has all its rows in m3ter (issue 17)
    "freshness.freshness_p95_s": ("<=", 10),
    # published connectors side by side (issue 20), on 10,000 more companies / Accounts than the demo's
    "peers.m3sh_vs_best_peer_seconds": ("<=", 0.333),
    "peers.m3sh_requests_over_best_peer": ("<=", 0),
    "peers.m3sh_incremental_requests": ("<=", 10),
    "peers.salesforce_m3sh_vs_best_peer_seconds": ("<=", 0.333),
    "peers.salesforce_m3sh_requests_over_best_peer": ("<=", 0),
    "peers.salesforce_m3sh_incremental_requests": ("<=", 10),
    "audit_trail.requests_page1_5000": ("<=", 60),
    "audit_trail.requests_page1_100000": ("<=", 200),
    "audit_trail.requests_week_100000": ("<=", 60),
    "limits_shared.redis_429_fraction": ("<=", 0.01),
    "limits_shared.redis_lost": ("<=", 0),
    "limits_shared.redis_duplicates": ("<=", 0),
}

# Figures shown without a target, for context (sizes, the other side of a ratio).
CONTEXT: dict[str, list[str]] = {
    "usage_ingest": ["sustained_bound_rows_per_s_per_ip", "sustained_ip_window", "org_rate_fraction_of_limit",
                     "workers_achieved_rps", "rows", "seconds", "api_requests",
                     "naive_rows_per_s", "speedup_vs_naive_wan",
                     "achieved_rps", "limit_rps"],
    "usage_bulk": ["rows", "request_rows_per_s", "bulk_rows_per_s", "bulk_upload_rows_per_s",
                   "bulk_bound_rows_per_s_documented"],
    "crm_sync": ["accounts", "seconds", "binding_api", "binding_limit_rps", "achieved_rps", "m3ter_writes"],
    "dag_parse": ["destinations", "files", "slowest_file", "max_warm_parse_s"],
    "sandbox_ingest": ["measurements", "seconds"],
    "invoice_sync": ["bills", "seconds", "bound_seconds", "client_cpu_ms_per_request", "emulator_cpu_ms_per_request"],
    "triggers": ["accounts", "api_calls_cold"],
    "freshness": ["freshness_p50_s", "freshness_samples", "rows_per_file", "load_avg_1m_end"],
    "peers": ["scale", "m3sh_full_seconds", "best_peer_full_seconds", "m3sh_full_requests", "best_peer_full_requests",
              "salesforce_m3sh_full_seconds", "salesforce_best_peer_full_seconds"],
    "audit_trail": ["months_5000", "requests_csv_5000", "months_100000", "requests_csv_100000"],
    "limits_shared": ["processes", "requests", "client_org_rate_rps", "binding_limit_rps", "redis_achieved_rps",
                      "redis_vs_binding_limit", "redis_429_fraction", "in_process_429s", "in_process_429_fraction"],
}

# Smaller sizes for modules that take flags rather than reading M3SH_BENCH_QUICK.
QUICK_ARGS: dict[str, list[str]] = {
    "sandbox_ingest": ["--batches", "50"],
    "invoice_sync": ["--bills", "400"],
    "triggers": ["--accounts", "1000", "--samples", "5"],
}


# ------------------------------------------------------------------------------- discovery/run
def discover() -> list[str]:
    """Benchmark modules in this package: everything but ``_``-prefixed helpers and ``__main__``."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))


def machine() -> dict[str, Any]:
    """What the figures were measured on (they only mean something next to this)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.machine(), "memory_gib": mem_gib,
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def run_one(name: str, quick: bool, timeout_s: float | None) -> dict[str, Any]:
    """Run one benchmark module, echoing its output; returns the record written to results/."""
    args = QUICK_ARGS.get(name, []) if quick else []
    env = {**os.environ, QUICK_ENV: "1" if quick else ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH", "")]))
    print(f"\n=== {name} {' '.join(args)}".rstrip() + " ===", flush=True)
    started = dt.datetime.now(dt.UTC)
    mach = machine()
    t0 = time.perf_counter()
    lines: list[str] = []
    error = None
    try:
        with subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", *args], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=HERE.parent) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                print(f"  {line}", end="", flush=True)
            code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code, error = -1, f"timed out after {timeout_s}s"
    result = last_json_line("".join(lines))
    if error is None and (code != 0 or result is None):
        error = f"exit {code}" + ("" if result is not None else ", no JSON object on the last line")
    return {"benchmark": name, "ran_at": started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - t0, 1), "quick": quick, "args": args, "machine": mach,
            "error": error, "result": result or {}}


# ------------------------------------------------------------------------------------ table
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def check(value: Any, direction: str, target: float) -> bool | None:
    """Whether ``value`` meets the target; None when the benchmark did not report it as a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return {">=": value >= target, ">": value > target, "<=": value <= target, "<": value < target}[direction]


def rows_for(record: dict[str, Any]) -> list[tuple[str, str, str, str, bool | None]]:
    """(benchmark, figure, value, target, ok) rows of one result record."""
    name, result = record["benchmark"], record.get("result") or {}
    if record.get("error") and not result:
        return [(name, "error", str(record["error"]), "", False)]
    out: list[tuple[str, str, str, str, bool | None]] = []
    for key, (direction, target) in TARGETS.items():
        bench, _, figure = key.partition(".")
        if bench != name:
            continue
        value = result.get(figure)
        sign = {">=": "≥", "<=": "≤"}.get(direction, direction)
        out.append((name, figure, _fmt(value) if value is not None else "not reported", f"{sign} {_fmt(target)}",
                    check(value, direction, target)))
    for figure in CONTEXT.get(name, []):
        if figure in result and f"{name}.{figure}" not in TARGETS:
            out.append((name, figure, _fmt(result[figure]), "", None))
    if not out:  # a new benchmark without targets yet: show its numeric figures
        out.extend((name, str(k), _fmt(v), "", None) for k, v in list(result.items())[:8]
                   if isinstance(v, int | float))
    if record.get("error"):
        out.append((name, "error", str(record["error"]), "", False))
    return out


def _mark(ok: bool | None, md: bool) -> str:
    if ok is None:
        return ""
    if md:
        return "✅" if ok else "❌"
    return "pass" if ok else "MISS"


def render(records: list[dict[str, Any]], md: bool) -> str:
    rows = [r for rec in records for r in rows_for(rec)]
    head = ("benchmark", "figure", "value", "target", "")
    if md:
        lines = ["| benchmark | figure | value | target | |", "|---|---|--:|---|:-:|"]
        lines += [f"| {b} | `{f}` | {v} | {t} | {_mark(ok, True)} |" for b, f, v, t, ok in rows]
        return "\n".join(lines)
    table = [head] + [(b, f, v, t, _mark(ok, False)) for b, f, v, t, ok in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*row) for row in table[1:]]
    return "\n".join(out)


def describe(m: dict[str, Any]) -> str:
    return (f"{m.get('cpus')} CPU(s) ({m.get('cpu_model')}), {m.get('memory_gib')} GiB RAM, "
            f"Python {m.get('python')}, {m.get('os')}; 1-min load average at start {m.get('load_avg_1m')}")


def latest_records() -> list[dict[str, Any]]:
    records = []
    for path in sorted(RESULTS.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(rec, dict) and "benchmark" in rec:
            records.append(rec)
    return records


def write_readme_table(records: list[dict[str, Any]]) -> Path:
    machines = {describe(r["machine"]).rsplit(";", 1)[0] for r in records if r.get("machine")}
    when = max((r["ran_at"] for r in records), default="")
    text = ["<!-- generated by `python -m benchmarks` (make bench): do not edit by hand -->", "",
            render(records, md=True), "",
            f"Measured {when[:10]} on " + ("; ".join(sorted(machines)) or "an unknown machine") + ". "
            + ("Some figures come from a `--quick` run (smaller sizes). " if any(r.get("quick") for r in records)
               else "")
            + "Each row is one run of `python -m benchmarks.<name>`; raw figures in `benchmarks/results/<name>.json`. "
            + "Per benchmark, the CPU it ran on (the same code is ~1.5-2x slower per core on some hosts this "
            + "machine is scheduled on) and the 1-minute load average when it started (other work on the "
            + "machine slows every figure): "
            + ", ".join(f"{r['benchmark']} {r['machine'].get('cpu_model')} load {r['machine'].get('load_avg_1m')}"
                        for r in records if r.get("machine"))
            + ".",
            ""]
    path = RESULTS / "README_table.md"
    path.write_text("\n".join(text))
    return path


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes instead of tens of minutes)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    args = parser.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe(machine())}")
    records = []
    for name in names:
        record = run_one(name, args.quick, args.timeout)
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        records.append(record)
    print("\n" + render(records, md=False))
    table = write_readme_table(latest_records())
    print(f"\nresults in {RESULTS}/, README table {table}")
    failed = [r["benchmark"] for r in records if r.get("error")]
    if failed:
        print(f"benchmark(s) that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
