"""No API path or URL is built above ``m3sh.hooks``: everything else calls the hooks' named methods.

The m3ter operations m3sh sends are listed once, in ``m3sh.hooks.m3ter_ops.OPS``; this test keeps
code outside ``hooks/`` (and the sandbox, which *is* the other side of the wire) from reaching for
the hook's request plumbing or writing m3ter paths of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "include" / "m3sh"
# The hook's private plumbing and the m3ter path templates of OPS, as they would appear in code.
PLUMBING = re.compile(r"(?:hook|m3ter)\.(?:_list|_alist|_aiter|_get|_post|_put|_create|_update|_upsert|_request|"
                      r"_arequest|_find_by_code)\(|org_path\(")


def _m3ter_path_literals() -> re.Pattern[str]:
    from m3sh.hooks.m3ter_ops import OPS

    roots = sorted({op.path.split("/")[0] for op in OPS.values()}, key=len, reverse=True)
    # A string literal starting with an m3ter collection and a "/", e.g. "bills/approve" or
    # f"balances/{id}/transactions" (plain words like "bills" alone are fine).
    alternatives = "|".join(map(re.escape, roots))
    return re.compile(r"[\"'](?:" + alternatives + ")/")


def _sources() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(PACKAGE / "hooks")
             and not p.is_relative_to(PACKAGE / "sandbox")]
    files += list((REPO / "dags").glob("*.py")) + list((REPO / "plugins").glob("*.py"))
    return files


def test_no_module_above_hooks_uses_the_hooks_request_plumbing() -> None:
    offenders = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in _sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if PLUMBING.search(line)]
    assert offenders == [], "call a named hook method instead:\n" + "\n".join(offenders)


def test_no_module_above_hooks_writes_an_m3ter_api_path() -> None:
    literal = _m3ter_path_literals()
    offenders = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in _sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == [], "m3ter paths belong in m3sh.hooks.m3ter_ops:\n" + "\n".join(offenders)


def test_the_checks_catch_what_they_are_for() -> None:
    bad = 'self.hook._list("list_bills")\nx = f"balances/{bid}/transactions"\n'
    assert PLUMBING.search(bad.splitlines()[0])
    assert _m3ter_path_literals().search(bad.splitlines()[1])
