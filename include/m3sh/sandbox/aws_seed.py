"""Seeds the moto server: buckets, a month of usage files for the demo company, the alert topic.

Usage files are one per day under ``s3://m3sh-usage/usage/dt=YYYY-MM-DD/``: CSV, CSV.gz or JSONL in
turn, so every reader path is exercised. Every seventh day carries three malformed rows (unknown
account, non-numeric quantity, missing timestamp) that the ingest DAG must dead-letter.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import random
from typing import Any

import boto3

from m3sh.sandbox import credentials as cred
from m3sh.sandbox.seed import ARCHIVE_BUCKET, USAGE_BUCKET, DemoCompany, demo_company

USAGE_COLUMNS = ["event_id", "account", "meter", "ts", "quantity", "region"]
ALERT_TOPIC = "m3sh-alerts"
USAGE_EVENTS_QUEUE = "m3sh-usage-events"
MOTO_ACCOUNT = "123456789012"


def s3_client(endpoint_url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=cred.AWS_ACCESS_KEY,
        aws_secret_access_key=cred.AWS_SECRET_KEY,
        region_name="us-east-1",
    )


def usage_rows(company: DemoCompany, day: dt.date) -> list[dict[str, str]]:
    """Deterministic usage for one day: one api_calls and one storage_gb row per active customer."""
    rng = random.Random(day.toordinal())
    rows: list[dict[str, str]] = []
    for c in company.customers:
        if not (c.contract_start <= day <= c.contract_end):
            continue
        base = {"growth": 20000, "enterprise": 120000}.get(c.plan_code.split("_")[0], 4000)
        if c.plan_code.startswith("prepaid"):
            base = 12000
        ts = dt.datetime.combine(day, dt.time(rng.randint(0, 23), rng.randint(0, 59)), dt.UTC)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        region = "eu-west-1" if c.currency == "EUR" else "us-east-1"
        rows.append({"event_id": f"{day:%Y%m%d}-{c.key}-calls", "account": c.key, "meter": "api_calls",
                     "ts": stamp, "quantity": str(rng.randint(base // 2, base)), "region": region})
        rows.append({"event_id": f"{day:%Y%m%d}-{c.key}-storage", "account": c.key, "meter": "storage_gb",
                     "ts": stamp, "quantity": f"{rng.uniform(1, 50):.2f}", "region": region})
    if day.toordinal() % 7 == 0:
        rows.append({"event_id": f"{day:%Y%m%d}-bad-1", "account": "no-such-customer", "meter": "api_calls",
                     "ts": f"{day}T12:00:00Z", "quantity": "10", "region": "us-east-1"})
        rows.append({"event_id": f"{day:%Y%m%d}-bad-2", "account": company.customers[0].key,
                     "meter": "api_calls", "ts": f"{day}T12:00:00Z", "quantity": "lots", "region": "us-east-1"})
        rows.append({"event_id": f"{day:%Y%m%d}-bad-3", "account": company.customers[1].key,
                     "meter": "api_calls", "ts": "", "quantity": "5", "region": "us-east-1"})
    return rows


def encode_rows(rows: list[dict[str, str]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=USAGE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    data = buf.getvalue().encode()
    return gzip.compress(data, mtime=0) if fmt == "csv.gz" else data


def usage_key(day: dt.date) -> tuple[str, str]:
    fmt = ["jsonl", "csv.gz", "csv"][day.toordinal() % 3]
    return f"usage/dt={day:%Y-%m-%d}/usage-{day:%Y%m%d}.{fmt}", fmt


def seed_aws(endpoint_url: str, seed: str) -> None:
    s3 = s3_client(endpoint_url)
    for bucket in (USAGE_BUCKET, ARCHIVE_BUCKET):
        s3.create_bucket(Bucket=bucket)
    sns = boto3.client("sns", endpoint_url=endpoint_url, aws_access_key_id=cred.AWS_ACCESS_KEY,
                       aws_secret_access_key=cred.AWS_SECRET_KEY, region_name="us-east-1")
    sns.create_topic(Name=ALERT_TOPIC)
    sqs = boto3.client("sqs", endpoint_url=endpoint_url, aws_access_key_id=cred.AWS_ACCESS_KEY,
                       aws_secret_access_key=cred.AWS_SECRET_KEY, region_name="us-east-1")
    sqs.create_queue(QueueName=USAGE_EVENTS_QUEUE)
    if seed == "demo":
        _seed_usage_files(s3)
    # Notifications are switched on after the seed files exist: the demo month is picked up by the
    # scheduled/manual runs, files uploaded later arrive as events.
    s3.put_bucket_notification_configuration(Bucket=USAGE_BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{
            "QueueArn": f"arn:aws:sqs:us-east-1:{MOTO_ACCOUNT}:{USAGE_EVENTS_QUEUE}",
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "usage/"}]}},
        }],
    })
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=USAGE_EVENTS_QUEUE)["QueueUrl"])


def _seed_usage_files(s3: Any) -> None:
    company = demo_company()
    day = company.anchor
    # the demo month: the whole previous month
    while day.month == company.anchor.month:
        key, fmt = usage_key(day)
        s3.put_object(Bucket=USAGE_BUCKET, Key=key, Body=encode_rows(usage_rows(company, day), fmt))
        day += dt.timedelta(days=1)
