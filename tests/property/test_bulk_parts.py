"""Part files of the bulk path (m3sh.usage.bulk.PartWriter): written a block at a time, they must be
exactly what writing one measurement at a time gives — same parts, same split points, each a JSON
array within ``part_bytes`` unless one measurement alone is larger."""

from __future__ import annotations

import json
from typing import IO, Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from m3sh.hooks.m3ter import encode_measurement
from m3sh.usage.bulk import PartWriter


def _make(i: int, pad: int, as_bytes: bool) -> Any:
    """A measurement as the columnar path hands it over (JSON bytes) or as the row path does (a dict)."""
    m = {"uid": f"u{i}", "meter": "m", "account": "a", "pad": "x" * pad}
    return orjson.dumps(m) if as_bytes else m


_measurement = st.builds(_make, st.integers(0, 10**6), st.integers(0, 300), st.booleans())


def _reference(items: list[Any], part_bytes: int) -> list[bytes]:
    """The per-measurement algorithm the block writer replaced, kept here as the oracle."""
    parts: list[bytes] = []
    current: list[bytes] | None = None
    size = 0
    for m in items:
        encoded = encode_measurement(m)
        if current is not None and size + len(encoded) + 3 > part_bytes:
            parts.append(b"[" + b",\n".join(current) + b"]")
            current = None
        if current is None:
            current, size = [encoded], 1 + len(encoded)
        else:
            current.append(encoded)
            size += 2 + len(encoded)
    if current is not None:
        parts.append(b"[" + b",\n".join(current) + b"]")
    return parts


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.lists(_measurement, max_size=40), max_size=8), part_bytes=st.integers(50, 4000))
def test_block_writer_matches_the_per_measurement_writer(blocks: list[list[Any]], part_bytes: int) -> None:
    got: list[tuple[int, bytes, int, int]] = []

    def on_part(part: int, f: IO[bytes], size: int, rows: int) -> None:
        got.append((part, f.read(), size, rows))

    writer = PartWriter(part_bytes, on_part)
    for block in blocks:
        writer.add_block(block)
    writer.finish()
    flat = [m for block in blocks for m in block]
    assert [data for _, data, _, _ in got] == _reference(flat, part_bytes)
    assert [p for p, _, _, _ in got] == list(range(len(got)))
    for _, data, size, rows in got:
        assert size == len(data)
        assert len(json.loads(data)) == rows
        assert size <= part_bytes or rows == 1
