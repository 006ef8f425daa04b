"""The m3ter emulator's measurement validation (a bad field fails the request, naming ``[i].field``)
and its reading of uploaded measurement files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.m3ter import fileuploads
from m3sh.sandbox.m3ter.fileuploads import _items
from m3sh.sandbox.m3ter.ingest import parse_batch
from m3sh.sandbox.m3ter.schemas import ApiError

GOOD: dict[str, Any] = {"uid": "u1", "meter": "api_calls", "account": "acme", "ts": "2024-03-01T10:00:00Z"}


def _batch(*items: dict[str, Any]) -> bytes:
    return json.dumps({"measurements": list(items)}).encode()


def test_valid_maps_of_numbers_and_strings_pass() -> None:
    got = parse_batch(_batch({**GOOD, "measure": {"q": 2, "r": 0.5}, "cost": {"c": 1}, "who": {"user": "a"},
                              "metadata": {"note": "x" * 256}}))
    assert [(m.account, m.meter, m.uid) for m in got] == [("acme", "api_calls", "u1")]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("measure", {"q": "2"}, "measurements[1].measure.q: must be a number"),
    ("income", {"q": True}, "measurements[1].income.q: must be a number"),
    ("cost", [1], "measurements[1].cost: must be an object of numbers"),
    ("where", {"region": 1}, "measurements[1].where.region: must be a string"),
    ("other", "x", "measurements[1].other: must be an object of strings"),
    ("metadata", {"note": "x" * 257}, "measurements[1].metadata.note: must be at most 256 characters"),
])
def test_a_bad_map_fails_the_whole_request_naming_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_batch(_batch(GOOD, {**GOOD, "uid": "u2", field: value}))
    assert exc.value.status == 400
    assert message in str(exc.value)


@pytest.mark.parametrize("bad", [" acme", "", 7, ["acme"], None, "a" * 81])
def test_codes_found_valid_earlier_do_not_let_a_bad_code_through(bad: Any) -> None:
    # parse_batch shares one set of valid codes across its items: only valid codes may enter it
    with pytest.raises(ApiError, match=r"measurements\[2\]\.account"):
        parse_batch(_batch(GOOD, {**GOOD, "uid": "u2"}, {**GOOD, "uid": "u3", "account": bad}))


@pytest.fixture(params=[7, 300, 1 << 20], ids=lambda n: f"read{n}")
def read_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Each file read in pieces of this size: cuts between items everywhere, or none (one piece)."""
    monkeypatch.setattr(fileuploads, "READ_BYTES", request.param)
    return int(request.param)


def _drain(body: bytes) -> tuple[list[Any], str | None]:
    """What ``_items`` yields before it stops, and its ValueError's message (None: it did not raise)."""
    got: list[Any] = []
    try:
        for item in _items(io.BytesIO(body)):
            got.append(item)
    except ValueError as exc:
        return got, str(exc)
    return got, None


ROWS = [{**GOOD, "uid": f"u{i}", "measure": {"q": i / 3, "n": i}, "who": {"note": "},{\u00e9"}} for i in range(40)]
BIG = b"[" + b",\n".join(json.dumps(r).encode() for r in ROWS * 500) + b"]"  # 20,000 rows, ~2.5 MB


@pytest.mark.parametrize("body", [
    json.dumps(ROWS).encode(),
    json.dumps(ROWS, indent=2).encode(),  # whitespace and newlines between tokens
    b" " * 70_000 + json.dumps(ROWS).encode() + b"\n",  # more blank than one read before the array
    b"[]",
    b" [ ] ",
    json.dumps([1, "x", [], *ROWS[:3]]).encode(),  # items that are not objects fail as rows, later
    BIG,
])
def test_a_files_items_are_what_json_reads_in_it(body: bytes, read_bytes: int) -> None:
    assert _drain(body) == (json.loads(body), None)


def test_the_ingest_apis_envelope_is_read_too(read_bytes: int) -> None:
    assert _drain(b"  \n" + json.dumps({"measurements": ROWS}).encode()) == (ROWS, None)
    assert _drain(b'{"rows": []}') == ([], "the file is a JSON object without a 'measurements' array")


@pytest.mark.parametrize(("body", "before", "message"), [
    (BIG[:-40], 19_999, "invalid JSON at item 19999 of the measurements array (parse error: premature EOF)"),
    (json.dumps(ROWS).encode()[:-1] + b",]", 40, "invalid JSON at item 40"),  # a trailing comma
    (json.dumps(ROWS).encode().replace(b"}, {", b"} {", 1), 1, "invalid JSON at item 1"),  # a missing comma
    (json.dumps(ROWS[:2]).encode().replace(b"0.3333333333333333", b"NaN"), 1, "invalid JSON at item 1"),
    (json.dumps(ROWS[:2]).encode() + b" trailing", 2, "invalid JSON at item 2"),
    (b'[,{"uid": 1}]', 0, "invalid JSON at item 0"),
    (b'"not an array"', 0, "the file is not a JSON array of measurements"),
    (b"", 0, "the file is not a JSON array of measurements"),
])
def test_a_broken_file_yields_the_items_before_the_break_and_names_it(body: bytes, before: int, message: str,
                                                                      read_bytes: int) -> None:
    items, error = _drain(body)
    assert items == (ROWS * 500)[:before]
    assert error is not None and error.startswith(message)


def test_the_usual_file_is_decoded_by_orjson_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    loads = fileuploads.orjson.loads

    def counted(piece: bytes) -> Any:
        sizes.append(len(piece))
        return loads(piece)

    monkeypatch.setattr(fileuploads, "READ_BYTES", 64_000)
    monkeypatch.setattr(fileuploads.orjson, "loads", counted)
    monkeypatch.setattr(fileuploads.ijson, "items", lambda *_a, **_k: pytest.fail("read by ijson"))
    usual = [{**GOOD, "uid": f"u{i}", "measure": {"q": i / 3}, "who": {"user": "a"}} for i in range(20_000)]
    body = b"[" + b",\n".join(json.dumps(r).encode() for r in usual) + b"]"  # as m3sh's bulk writer writes it
    assert _drain(body) == (usual, None)
    assert len(sizes) > 30 and max(sizes) < 2 * 64_000  # one read's worth and the rest of a row


def test_uploaded_files_are_removed_on_reset_and_after_a_killed_emulator(tmp_path: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileuploads.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process id that no longer runs
    killed = tmp_path / f"{fileuploads.DIR_PREFIX}{dead}-x1"
    killed.mkdir()
    (killed / "job").write_bytes(b"[]")
    state = fileuploads.UploadState()
    kept = Path(state.dir)  # the first upload makes the directory, and removes the killed emulator's
    assert kept.name.startswith(f"{fileuploads.DIR_PREFIX}{os.getpid()}-") and not killed.exists()
    (kept / "job").write_bytes(b"[]")
    other = fileuploads.UploadState()  # a second emulator state (a live process's directory stays)
    assert Path(other.dir).exists() and kept.exists()
    state.close()  # a reset
    assert not kept.exists()
