"""Routing rules of ``invoicing.routes``: currency, subsidiary, custom field, accounts, amount, cut-over."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.config import parse_config
from m3sh.invoicing.models import BillLine, EnrichedBill
from m3sh.invoicing.routing import route_bill

CONFIG = """
invoicing:
  destinations:
    - {name: ns_old, type: netsuite, conn_id: a, subsidiary_id: "1", default_item_id: "9", cutover_until: 2026-07-01}
    - {name: ns_new, type: netsuite, conn_id: b, subsidiary_id: "1", default_item_id: "9", cutover_from: 2026-07-01}
    - {name: ns_eu, type: netsuite, conn_id: c, subsidiary_id: "1", default_item_id: "9"}
    - {name: sf, type: salesforce}
    - {name: archive, type: s3, bucket: b}
    - {name: big, type: webhook, conn_id: w}
    - {name: retired, type: s3, bucket: b, enabled: false}
  routes:
    - {name: us, when: {currency: [USD]}, to: [ns_old, ns_new, sf]}
    - {name: eu, when: {subsidiary: [eu]}, to: [ns_eu]}
    - {name: all, to: [archive, retired]}
    - {name: large, when: {min_amount: 1000, max_amount: 5000}, to: [big]}
    - {name: vip, when: {accounts: [vip-co], custom_field: {tier: gold}}, to: [sf]}
"""


def bill(**kw: Any) -> EnrichedBill:
    base: dict[str, Any] = dict(bill_id="b1", account_id="acc-1", account_code="acme", account_name="Acme",
                                currency="USD", bill_date="2026-06-30", total=100.0, subsidiary="us",
                                lines=[BillLine(line_type="STANDING_CHARGE", amount=100.0)])
    base.update(kw)
    return EnrichedBill(**base)


@pytest.fixture
def cfg() -> Any:
    return parse_config(CONFIG).invoicing


def test_currency_route_with_cutover_graduates_on_the_date(cfg: Any) -> None:
    assert route_bill(cfg, bill())[0] == ["ns_old", "sf", "archive"]
    assert route_bill(cfg, bill(bill_date="2026-07-01"))[0] == ["ns_new", "sf", "archive"]


def test_subsidiary_route_is_case_insensitive_and_disabled_destinations_drop(cfg: Any) -> None:
    targets, matched = route_bill(cfg, bill(currency="EUR", subsidiary="EU"))
    assert targets == ["ns_eu", "archive"]
    assert matched == ["eu", "all"]


def test_amount_bounds_are_inclusive(cfg: Any) -> None:
    assert "big" in route_bill(cfg, bill(total=1000.0))[0]
    assert "big" in route_bill(cfg, bill(total=5000.0))[0]
    assert "big" not in route_bill(cfg, bill(total=999.99))[0]
    assert "big" not in route_bill(cfg, bill(total=5000.01))[0]


def test_account_and_custom_field_conditions_are_anded(cfg: Any) -> None:
    gold = {"tier": "gold"}
    assert "sf" in route_bill(cfg, bill(currency="GBP", account_code="vip-co", custom_fields=gold))[0]
    assert "sf" not in route_bill(cfg, bill(currency="GBP", account_code="vip-co", custom_fields={"tier": "x"}))[0]
    assert "sf" not in route_bill(cfg, bill(currency="GBP", account_code="other", custom_fields=gold))[0]
    assert "sf" in route_bill(cfg, bill(currency="GBP", account_id="vip-co", account_code="c", custom_fields=gold))[0]


def test_destinations_param_restricts_and_unmatched_bill_goes_nowhere(cfg: Any) -> None:
    assert route_bill(cfg, bill(), only=["sf"])[0] == ["sf"]
    no_all = cfg.model_copy(update={"routes": [r for r in cfg.routes if r.name != "all"]})
    assert route_bill(no_all, bill(currency="JPY", subsidiary="jp"))[0] == []


def test_unknown_route_target_is_a_config_error_with_its_line() -> None:
    from m3sh.exceptions import ConfigError

    bad = CONFIG.replace("to: [big]", "to: [bigg]")
    with pytest.raises(ConfigError, match=r"m3sh.yaml:\d+ invoicing.routes\[3\].to\[0\]: unknown destination 'bigg'"):
        parse_config(bad)


def test_cutover_dates_parse_as_dates(cfg: Any) -> None:
    assert cfg.destinations[0].cutover_until == dt.date(2026, 7, 1)
