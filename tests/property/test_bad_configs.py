"""Broken configs get one kind of answer: :class:`ConfigError` with ``file:line`` on every problem.

Mutations start from the shipped demo config (wrong types, deleted keys, unknown keys) or from its
text (deleted, duplicated and garbled lines), plus arbitrary text. A config that still happens to
be valid may load; any other exception type is a bug.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3sh.config import DEFAULT_CONFIG_PATH, M3shConfig, parse_config
from m3sh.exceptions import ConfigError

pytestmark = [pytest.mark.property]

SOURCE = "conf/m3sh-under-test.yaml"
DEMO_TEXT = DEFAULT_CONFIG_PATH.read_text()
DEMO = yaml.safe_load(DEMO_TEXT)
_PROBLEM = re.compile(rf"^{re.escape(SOURCE)}:(\d+) ")
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


_wrong_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(), max_size=2),
)


@st.composite
def mutated_demo(draw: st.DrawFn) -> str:
    """The demo config with 1-3 structural mutations: retype a value, delete a key, add an unknown key."""
    data = copy.deepcopy(DEMO)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = draw(st.sampled_from(["retype", "delete", "unknown_key"]))
        if op == "retype":
            parent[key] = draw(_wrong_values)
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "conn", "retires", "destinatons", "x-extra"]))] = 1
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@st.composite
def garbled_demo_text(draw: st.DrawFn) -> str:
    """The demo text with lines deleted, duplicated, re-indented or spliced with junk."""
    lines = DEMO_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "indent", "dedent", "junk", "tab"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "   " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i].lstrip()
        elif op == "junk":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.sampled_from(["{", "]", ": :", "&a", "*nope", "!tag ", "\"", "- "]))\
                + lines[i][pos:]
        else:
            lines[i] = "\t" + lines[i]
    return "\n".join(lines) + "\n"


def _check(text: str) -> None:
    try:
        cfg = parse_config(text, source=SOURCE)
    except ConfigError as exc:
        msg = str(exc)
        problems = msg.splitlines()[1:] if msg.startswith("invalid m3sh config") else [msg.splitlines()[0]]
        assert problems, msg
        n_lines = max(text.count("\n") + 1, 1)
        for p in problems:
            m = _PROBLEM.match(p.strip())
            assert m, f"problem without {SOURCE}:<line>: {p!r}"
            assert 1 <= int(m.group(1)) <= n_lines + 1, p
    else:
        assert isinstance(cfg, M3shConfig)


@_SETTINGS
@given(mutated_demo())
def test_structural_mutations_of_the_demo_config(text: str) -> None:
    _check(text)


@_SETTINGS
@given(garbled_demo_text())
def test_garbled_lines_of_the_demo_config(text: str) -> None:
    _check(text)


@_SETTINGS
@given(st.one_of(st.text(max_size=300),
                 st.text(alphabet="{}[]:-&*!|>'\"#%@` \n\tabc0129.", max_size=200)))
def test_arbitrary_text(text: str) -> None:
    _check(text)


@pytest.mark.parametrize("text", [
    "version: 2024-13-45\n",  # a date YAML can't build
    "owner: !custom x\n",  # an unknown tag
    "? [a, b]\n: 1\n",  # a list as a key
    "owner: &a [*a]\n",  # an alias that contains itself
    "m3ter: !!binary 'zz'\n",  # undecodable binary
    "crm: {sources: [\n",  # unclosed flow
])
def test_inputs_that_used_to_escape_as_bare_exceptions(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(SOURCE)}:\d+ "):
        parse_config(text, source=SOURCE)


def test_a_deleted_required_key_and_an_unknown_key_are_named_with_their_lines() -> None:
    text = DEMO_TEXT.replace("      conn_id: netsuite_eu\n", "      conn_idd: netsuite_eu\n", 1)
    line = text.splitlines().index("      conn_idd: netsuite_eu") + 1
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=SOURCE)
    msg = str(info.value)
    assert f"{SOURCE}:{line} invoicing.destinations[1].conn_idd: unknown key" in msg
    assert "invoicing.destinations[1].conn_id: Field required" in msg
