"""Arguments of the usage-feed, automation and analytics operators, checked when the DAG is parsed:
a config or inline arguments (never both, never neither), a config's JSON form equal to the config
(mapped tasks get that form), and mistakes named by argument path."""

from __future__ import annotations

from typing import Any

import pytest

from m3sh.config import DEFAULT_CONFIG_PATH, load_config
from m3sh.operators import (
    M3terAnalyticsTableOperator,
    M3terApplyFiringsOperator,
    M3terRulesEvaluateOperator,
    M3terUsageFeedsIngestOperator,
    M3terUsageFeedsPlanOperator,
)

FEED = {"name": "files", "type": "s3", "conn_id": "aws_default", "bucket": "usage", "prefix": "in/",
        "meters": [{"code": "api_calls", "measures": {"quantity": "quantity"}}]}
RULE = {"name": "low", "when": {"balance_below": {"amount": 100}}, "actions": [{"top_up_balance": 10}]}


@pytest.fixture(scope="module")
def cfg() -> Any:
    return load_config(DEFAULT_CONFIG_PATH)


def test_a_configs_json_form_is_the_config(cfg: Any) -> None:
    as_json = cfg.model_dump(mode="json", exclude_defaults=True)
    for op in (M3terUsageFeedsIngestOperator(task_id="i", chunk={}, config=as_json),
               M3terApplyFiringsOperator(task_id="a", firings=[], config=as_json),
               M3terAnalyticsTableOperator(task_id="t", item={}, config=as_json)):
        assert op.settings == cfg


def test_inline_arguments_become_the_settings() -> None:
    op = M3terUsageFeedsIngestOperator(task_id="i", chunk={}, feeds=[FEED], bucket="state", prefix="p/",
                                       batch_size=500, max_in_flight=2)
    assert [f.name for f in op.settings.usage.feeds] == ["files"]
    assert (op.settings.storage.bucket, op.settings.storage.prefix) == ("state", "p/")
    assert (op.settings.m3ter.ingest_batch_size, op.settings.m3ter.ingest_requests_in_flight) == (500, 2)
    rules = M3terApplyFiringsOperator(task_id="a", firings=[], rules=[RULE], bucket="state",
                                      notifiers=[{"name": "ops", "type": "slack_webhook", "conn_id": "slack"}])
    assert [r.name for r in rules.settings.triggers] == ["low"]
    assert [n.name for n in rules.settings.alerting.notifiers] == ["ops"]
    table = M3terAnalyticsTableOperator(task_id="t", item={}, bucket="lake", prefix="tables/")
    assert (table.settings.analytics.bucket, table.settings.analytics.prefix) == ("lake", "tables/")


@pytest.mark.parametrize(("make", "message"), [
    (lambda cfg: M3terUsageFeedsPlanOperator(task_id="p"), "give feeds=.* or config="),
    (lambda cfg: M3terUsageFeedsPlanOperator(task_id="p", feeds=[FEED], config=cfg), "exactly one"),
    (lambda cfg: M3terUsageFeedsPlanOperator(task_id="p", feeds=[]), "feeds is empty"),
    (lambda cfg: M3terUsageFeedsIngestOperator(task_id="i", chunk={}, feeds=[FEED]), "give bucket="),
    (lambda cfg: M3terUsageFeedsIngestOperator(task_id="i", chunk={}, config=cfg, bucket="b"), "not both"),
    (lambda cfg: M3terUsageFeedsPlanOperator(task_id="p", feeds=[{**FEED, "type": "ftp"}]),
     r"invalid arguments \(feeds.0.type"),
    (lambda cfg: M3terRulesEvaluateOperator(task_id="e", rules=[RULE]), "give bucket="),
    (lambda cfg: M3terRulesEvaluateOperator(task_id="e", rules=[RULE], config=cfg), "exactly one"),
    (lambda cfg: M3terRulesEvaluateOperator(task_id="e", rules=[{**RULE, "actions": []}], bucket="b"),
     r"invalid arguments \(triggers.0.actions"),
    (lambda cfg: M3terApplyFiringsOperator(task_id="a", firings=[], config=cfg, notifiers=[]), "not both"),
    (lambda cfg: M3terAnalyticsTableOperator(task_id="t", item={}), "give bucket="),
    (lambda cfg: M3terAnalyticsTableOperator(task_id="t", item={}, config={"analytics": {"source": "x"}}),
     r"invalid config \(analytics.source"),
])
def test_mistakes_fail_at_parse_time_naming_the_argument(cfg: Any, make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(cfg)
