"""Which emulator requests count as data writes: the basis of every "zero writes on re-run" check."""

from __future__ import annotations

import pytest

from m3sh.sandbox.common import RequestStats, is_data_write


@pytest.mark.parametrize(("method", "path", "write"), [
    ("PUT", "/organizations/o/accounts/a", True),
    ("POST", "/organizations/o/accounts", True),
    ("POST", "/organizations/o/measurements", True),
    ("POST", "/crm/v3/objects/companies/batch/update", True),
    ("PATCH", "/services/data/v60.0/sobjects/Account/001", True),
    ("DELETE", "/services/rest/record/v1/invoice/1", True),
    ("POST", "/crm/v3/objects/companies/search", False),
    ("POST", "/crm/v4/associations/deals/line_items/batch/read", False),
    ("POST", "/oauth/token", False),
    ("POST", "/services/Soap/u/60.0", False),
    ("POST", "/organizations/o/usage/query", False),
    ("POST", "/services/rest/query/v1/suiteql", False),
    ("GET", "/organizations/o/accounts", False),
])
def test_reads_served_through_post_are_not_writes(method: str, path: str, write: bool) -> None:
    assert is_data_write(method, path) is write


def test_stats_count_and_mark_data_writes() -> None:
    stats = RequestStats()
    stats.record("POST", "/crm/v3/objects/companies/search", 200)
    stats.record("POST", "/crm/v3/objects/companies/batch/update", 200)
    stats.record("GET", "/crm/v3/objects/companies", 200)
    snap = stats.snapshot()
    assert snap["counts"]["writes"] == 1 and snap["counts"]["total"] == 3
    assert [r["write"] for r in snap["recent"]] == [False, True, False]


def test_stats_keep_each_path_as_requested_beside_the_normalised_counts() -> None:
    # the id heuristic of the counts also rewrites literal segments; "paths" keeps what was asked
    stats = RequestStats()
    stats.record("GET", "/organizations/o/externalmappings", 200)
    stats.record("GET", "/organizations/o/externalmappings", 200)
    stats.record("PUT", "/services/rest/record/v1/customer/eid:c-1", 204)
    snap = stats.snapshot()
    assert snap["counts"]["GET /organizations/o/{id}"] == 2
    assert snap["paths"] == {"GET /organizations/o/externalmappings": 2,
                             "PUT /services/rest/record/v1/customer/eid:c-1": 1}
    stats.clear()
    assert stats.snapshot()["paths"] == {}
