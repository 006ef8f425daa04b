"""The spec guard's records (``m3sh.sandbox.specguard``) summed up for one test session.

``tests/conftest.py`` prints :func:`summarise`'s report at the end of every session and fails the
session when it has violations; ``describe_violation`` is how a test failed for one reads.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3sh.sandbox import specguard

# Tests that judge the emulators themselves (through the official SDKs or raw HTTP); everywhere
# else the SDKs are driven by m3sh (hooks, DAGs, the e2e stacks).
EMULATOR_TESTS = "tests/integration/sandbox/"


def _test_spans(directory: Path) -> dict[Path, list[tuple[int, int, str]]]:
    """Per record file, the byte ranges each test wrote (from tests.idx, written by conftest)."""
    spans: dict[Path, list[tuple[int, int, str]]] = collections.defaultdict(list)
    for idx in directory.rglob("tests.idx"):
        for line in idx.read_text().splitlines():
            entry = json.loads(line)
            for name, (start, end) in entry["spans"].items():
                spans[idx.parent / name].append((start, end, entry["test"]))
    return spans


def _test_at(spans: list[tuple[int, int, str]], offset: int) -> str:
    return next((test for start, end, test in spans if start <= offset < end), "(fixtures, outside any test)")


def describe_violation(line: str) -> str:
    e = json.loads(line)
    status = "no answer" if e["status"] == -1 else e["status"]
    test = f" in {e['test']}" if e.get("test") else ""
    return (f"  [{e['system']} {e['kind']}] {e['request']} -> {status} ({e['client']}: {e['ua']}){test}\n"
            + "\n".join(f"      {p}" for p in e.get("problems", [])))


@dataclass
class SystemCoverage:
    name: str
    documents: dict[str, int]  # document -> operations it has
    requests: collections.Counter[str] = field(default_factory=collections.Counter)  # outcome -> n
    m3sh_ops: collections.Counter[str] = field(default_factory=collections.Counter)  # validated m3sh requests
    test_ops: collections.Counter[str] = field(default_factory=collections.Counter)
    violated_ops: set[str] = field(default_factory=set)
    per_document: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    slowest_ms: float = 0.0
    clients: collections.Counter[str] = field(default_factory=collections.Counter)
    guard_ms: float = 0.0


@dataclass
class Report:
    systems: dict[str, SystemCoverage]
    violations: list[dict[str, Any]]
    directory: Path

    def lines(self) -> list[str]:
        out = []
        for s in self.systems.values():
            total = sum(s.documents.values())
            m3sh_used = set(s.m3sh_ops)
            validated = {op for op, n in s.m3sh_ops.items() if n and op not in s.violated_ops}
            tests_only = set(s.test_ops) - set(s.m3sh_ops)
            out.append(f"{s.name}: operations used by m3sh {len(m3sh_used)}, validated {len(validated)}; "
                       f"used only by the emulator tests {len(tests_only)}; the documents have {total} "
                       f"operations "
                       f"({', '.join(f'{d} {n}' for d, n in s.documents.items())})")
            r = s.requests
            out.append(f"  requests: {r['validated']} validated, {r['unauthenticated']} without valid auth "
                       f"(refused, as they must be), {r['expected-invalid']} deliberately invalid (refused), "
                       f"{r['violation']} violations; by caller {dict(s.clients)}; guard time "
                       f"{s.guard_ms / 1000:.1f} s in all, slowest {s.slowest_ms:.1f} ms")
            if len(s.documents) > 1:
                out.append("  validated against: " + ", ".join(
                    f"{d} {len(s.per_document.get(d, ()))}/{n}" for d, n in s.documents.items()))
            for op in sorted(m3sh_used, key=lambda o: (o.split(" ", 1)[1], o)):
                out.append(f"    m3sh   {op}  ({s.m3sh_ops[op]} requests)")
            for op in sorted(tests_only, key=lambda o: (o.split(" ", 1)[1], o)):
                out.append(f"    tests  {op}  ({s.test_ops[op]} requests)")
        if self.violations:
            out.append(f"SPEC VIOLATIONS: {len(self.violations)} (records in {self.directory}):")
            seen: collections.Counter[str] = collections.Counter()
            for v in self.violations:
                seen[describe_violation(json.dumps(v))] += 1
            for text, n in seen.most_common(40):
                out.append(text + (f"  (x{n})" if n > 1 else ""))
        else:
            out.append("no spec violations")
        return out


def summarise(directory: Path) -> Report:
    systems: dict[str, SystemCoverage] = {}
    for name, spec in specguard.SYSTEMS.items():
        docs = {}
        for rel in spec.documents:
            path = specguard.spec_dir() / rel
            raw = json.loads(path.read_text()) if path.exists() else {"paths": {}}
            docs[Path(rel).stem] = sum(1 for item in raw["paths"].values() for m in item if m in specguard.METHODS)
        systems[name] = SystemCoverage(name, docs)
    violations = []
    spans = _test_spans(directory)
    for path in sorted(directory.rglob("*.jsonl")):
        if path.name.startswith("violations-"):
            continue
        offset = 0
        for raw in path.read_bytes().splitlines(keepends=True):
            line, start, offset = raw.decode(), offset, offset + len(raw)
            if not line.strip():
                continue
            e = json.loads(line)
            e["test"] = _test_at(spans.get(path, []), start)
            if e["client"] == "m3sh" and e["test"].startswith(EMULATOR_TESTS):
                e["client"] = "sdk"  # an emulator test driving the official SDK itself, not m3sh
            s = systems[e["system"]]
            s.requests[e["outcome"]] += 1
            s.slowest_ms = max(s.slowest_ms, e.get("ms", 0.0))
            s.guard_ms += e.get("ms", 0.0)
            ops = [k.split(":", 1)[1] for k in e["ops"]]
            if e["outcome"] == "violation":
                violations.append(e)
                s.violated_ops.update(ops[:1])
                if ops and e["client"] == "m3sh":
                    s.m3sh_ops[ops[0]] += 0  # used by m3sh, not validated
                continue
            if not ops or e["outcome"] != "validated":
                continue
            (s.m3sh_ops if e["client"] == "m3sh" else s.test_ops)[ops[0]] += 1
            s.clients[e["client"]] += 1
            for k in e["ops"]:
                doc, op = k.split(":", 1)
                s.per_document[doc].add(op)
    return Report(systems, violations, directory)


class GuardRecords:
    """What the spec guard recorded from now on for one system, in this test process's folder
    (tests/conftest.py points ``M3SH_SPEC_COVERAGE_DIR`` at one folder per test process)."""

    def __init__(self, system: str) -> None:
        assert specguard.enabled(), f"{specguard.ENABLE_ENV} is off: nothing judges the emulators' answers"
        self.system = system
        self.dir = Path(os.environ[specguard.COVERAGE_DIR_ENV])
        self.start = {p: p.stat().st_size for p in self.dir.glob(f"{system}-*.jsonl")}

    def read(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob(f"{self.system}-*.jsonl")):
            with path.open("rb") as f:
                f.seek(self.start.get(path, 0))
                out += [json.loads(line) for line in f.read().splitlines() if line.strip()]
        return out

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """At least ``count`` records (the guard writes each one just after its answer went out)."""
        deadline = time.monotonic() + timeout_s
        entries = self.read()
        while len(entries) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            entries = self.read()
        assert len(entries) >= count, f"the spec guard recorded {len(entries)} of {count} {self.system} requests"
        return entries
