"""The m3ter emulator's measurement validation: a bad field fails the request, naming ``[i].field``."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
