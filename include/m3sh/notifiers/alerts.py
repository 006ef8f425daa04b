"""The m3sh alert: what failed, where, why in one line, which records, and a link to the log.

One :class:`M3shAlertNotifier` is attached per DAG (as ``on_failure_callback`` and optionally
``on_retry_callback``); it fans out to every configured channel through the official provider
hooks (Slack webhook, SMTP, SNS) or a signed generic webhook. A broken channel is logged and never
masks the task's own failure. Failures only alert on the final try (Airflow calls
``on_failure_callback`` once, after retries), so a failure repeated across retries alerts once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from airflow.sdk import BaseNotifier

from m3sh import layout
from m3sh.config import M3shConfig, Notifier

log = logging.getLogger(__name__)


def _cause(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown cause (task process ended without an exception: killed or timed out?)"
    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    return f"{exc.__class__.__name__}: {first[:300]}"


def _records(exc: BaseException | None) -> list[str]:
    """Affected records an m3sh exception carries (bill ids, files, accounts)."""
    recs = getattr(exc, "records", None) or []
    rid = getattr(exc, "record_id", None)
    if rid:
        recs = [*recs, str(rid)]
    return [str(r) for r in recs][:50]


def build_alert(context: dict[str, Any], event: str) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    alert = {
        "event": event,
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", -1),
        "run_id": getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "cause": _cause(exc),
        "records": _records(exc),
        "log_url": getattr(ti, "log_url", None),
    }
    return _redact(alert)


def _redact(alert: dict[str, Any]) -> dict[str, Any]:
    try:
        from airflow.sdk._shared.secrets_masker import redact

        redacted: dict[str, Any] = redact(alert)  # type: ignore[assignment]
        return redacted
    except ImportError:  # pragma: no cover
        return alert


def format_text(alert: dict[str, Any]) -> str:
    head = {"failure": ":red_circle: m3sh task failed", "retry": ":warning: m3sh task retrying",
            "resolved": ":white_check_mark: m3sh resolved",
            "conflict": ":twisted_rightwards_arrows: m3sh CRM conflicts"}.get(alert["event"], alert["event"])
    lines = [f"{head}: {alert['dag_id']}.{alert['task_id']}"
             + (f"[{alert['map_index']}]" if alert.get("map_index", -1) not in (-1, None) else ""),
             f"run {alert['run_id']}" + (f", try {alert['try_number']}" if alert.get("try_number") else ""),
             f"cause: {alert['cause']}"]
    if alert["records"]:
        lines.append("records: " + ", ".join(alert["records"]))
    if alert.get("log_url"):
        lines.append(f"log: {alert['log_url']}")
    return "\n".join(lines)


class OpenAlerts:
    """Which tasks are currently alerted, kept in durable storage (S3) so any worker sees it.

    One object per (DAG, task): a failure with the same cause as the open alert is not re-sent (a
    task failing every hour alerts once, not 24 times); the next success of that task sends one
    "resolved" message and closes it.
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def key(self, dag_id: str, task_id: str) -> str:
        return layout.open_alert(self.storage, dag_id, task_id)

    def get(self, dag_id: str, task_id: str) -> dict[str, Any] | None:
        value = self.storage.get_json(self.key(dag_id, task_id))
        return value if isinstance(value, dict) else None

    def open(self, alert: dict[str, Any]) -> None:
        self.storage.put_json(self.key(alert["dag_id"], alert["task_id"]), {**alert, "opened_at": time.time()})

    def close(self, dag_id: str, task_id: str) -> None:
        self.storage.delete(self.key(dag_id, task_id))


def _open_alerts() -> OpenAlerts | None:
    try:
        from m3sh.config import get_config
        from m3sh.storage import Storage

        return OpenAlerts(Storage.from_config(get_config().storage))
    except Exception:  # alerting must never fail because its bookkeeping is unavailable
        log.exception("m3sh alert bookkeeping unavailable; alerting without de-duplication")
        return None


class M3shAlertNotifier(BaseNotifier):
    """Sends one alert to several channels. Channels are plain dicts so the notifier serializes.

    ``event`` is ``failure`` (de-duplicated against the open alert of the task), ``retry`` (always
    sent) or ``success`` (sends "resolved" only when the task had an open alert).
    """

    template_fields = ()

    def __init__(self, channels: list[dict[str, Any]], event: str = "failure") -> None:
        super().__init__()
        self.channels = channels
        self.event = event

    def notify(self, context: Any) -> None:
        alert = build_alert(dict(context), self.event)
        book = _open_alerts() if self.event in ("failure", "success") else None
        if self.event == "success":
            previous = book.get(alert["dag_id"], alert["task_id"]) if book else None
            if previous is None:
                return
            alert = {**alert, "event": "resolved", "cause": f"was: {previous.get('cause')}"}
            self._fan_out(alert)
            book.close(alert["dag_id"], alert["task_id"])  # type: ignore[union-attr]
            return
        if book is not None and self.event == "failure":
            previous = book.get(alert["dag_id"], alert["task_id"])
            if previous is not None and previous.get("cause") == alert["cause"]:
                log.warning("m3sh alert for %s.%s not re-sent: same cause as the open alert of run %s",
                            alert["dag_id"], alert["task_id"], previous.get("run_id"))
                return
        self._fan_out(alert)
        if book is not None and self.event == "failure":
            book.open(alert)

    def _fan_out(self, alert: dict[str, Any]) -> None:
        text = format_text(alert)
        for channel in self.channels:
            try:
                send(channel, alert, text)
            except Exception:
                log.exception("m3sh alert channel %s (%s) failed; the alert was: %s", channel.get("name"),
                              channel.get("type"), text)


def send(channel: dict[str, Any], alert: dict[str, Any], text: str) -> None:
    kind = channel["type"]
    if kind == "slack_webhook":
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        SlackWebhookHook(slack_webhook_conn_id=channel["conn_id"]).send_text(text)
    elif kind == "email":
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=channel["conn_id"]) as smtp:
            smtp.send_email_smtp(to=channel.get("to") or [], subject=text.splitlines()[0][:200],
                                 html_content="<pre>" + text + "</pre>")
    elif kind == "sns":
        from airflow.providers.amazon.aws.hooks.sns import SnsHook

        SnsHook(aws_conn_id=channel["conn_id"]).publish_to_target(channel["target"], text)
    elif kind == "webhook":
        post_signed_webhook(channel["conn_id"], channel.get("target") or "/alerts", alert)
    else:  # pragma: no cover - config validation forbids this
        raise ValueError(f"unknown channel type {kind!r}")


def post_signed_webhook(conn_id: str, path: str, payload: dict[str, Any]) -> None:
    """POST JSON signed with HMAC-SHA256 (connection password) over ``timestamp.body``."""
    import requests
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    body = json.dumps(payload, default=str, separators=(",", ":")).encode()
    ts = str(int(time.time()))
    secret = (conn.password or "").encode()
    sig = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    url = (conn.host or "").rstrip("/") + "/" + path.lstrip("/")
    r = requests.post(url, data=body, timeout=10, headers={"Content-Type": "application/json",
                                                           "X-M3sh-Timestamp": ts, "X-M3sh-Signature": sig})
    r.raise_for_status()


def alert_conflicts(cfg: M3shConfig, *, dag_id: str, task_id: str, run_id: str,
                    conflicts: list[dict[str, Any]], where: str) -> int:
    """Tell ``alerting.on_conflict`` about fields changed on both sides (m3sh.crm.outbound): one
    message per run and source, naming each record and field. A channel that fails is logged, never
    fails the sync (the conflicts are in S3 and on the m3sh page either way). Returns channels sent to."""
    channels = _channels(cfg, cfg.alerting.on_conflict)
    if not channels or not conflicts:
        return 0
    alert = _redact({
        "event": "conflict", "dag_id": dag_id, "task_id": task_id, "map_index": -1, "run_id": run_id,
        "try_number": None, "log_url": None,
        "cause": f"{len(conflicts)} field(s) changed in m3ter and in the CRM since the last sync; the ownership "
                 f"rule decided; details in {where}",
        "records": [f"{c['source']} {c['record']} ({c['account']}) {c['field']}: {c['decision']}"
                    for c in conflicts[:20]] + ([f"... {len(conflicts) - 20} more"] if len(conflicts) > 20 else []),
    })
    text = format_text(alert)
    sent = 0
    for channel in channels:
        try:
            send(channel, alert, text)
            sent += 1
        except Exception:
            log.exception("m3sh conflict alert channel %s (%s) failed; the alert was: %s", channel.get("name"),
                          channel.get("type"), text)
    return sent


def _channels(cfg: M3shConfig, names: list[str]) -> list[dict[str, Any]]:
    by_name: dict[str, Notifier] = {n.name: n for n in cfg.alerting.notifiers}
    return [by_name[n].model_dump() for n in names if n in by_name]


def failure_callbacks(cfg: M3shConfig) -> list[M3shAlertNotifier]:
    chans = _channels(cfg, cfg.alerting.on_failure)
    return [M3shAlertNotifier(chans, "failure")] if chans else [_LogOnly()]


def success_callbacks(cfg: M3shConfig) -> list[M3shAlertNotifier]:
    chans = _channels(cfg, cfg.alerting.on_failure)
    return [M3shAlertNotifier(chans, "success")] if chans and cfg.alerting.send_resolved else []


def retry_callbacks(cfg: M3shConfig) -> list[M3shAlertNotifier]:
    chans = _channels(cfg, cfg.alerting.on_retry)
    return [M3shAlertNotifier(chans, "retry")] if chans else []


class _LogOnly(M3shAlertNotifier):
    """With no channel configured, a failure is still written as one clear line in the task log."""

    def __init__(self) -> None:
        super().__init__([], "failure")

    def notify(self, context: Any) -> None:
        log.error("%s", format_text(build_alert(dict(context), "failure")))
