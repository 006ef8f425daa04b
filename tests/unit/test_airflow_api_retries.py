"""m3sh.airflow_env.AirflowApi: a call Airflow refused because its SQLite database was locked is retried."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from m3sh import airflow_env
from m3sh.airflow_env import AirflowApi, AirflowEnvError


def _response(status: int, body: bytes) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content = status, body
    return r


LOCKED = b'{"detail":"Database is locked. Backfill creation is not supported on SQLite under concurrent access."}'


def _api(answers: list[requests.Response], monkeypatch: pytest.MonkeyPatch) -> tuple[AirflowApi, list[str]]:
    api = AirflowApi("http://airflow.invalid", "admin", "pw")
    sent: list[str] = []

    def request(method: str, url: str, **_kw: Any) -> requests.Response:
        sent.append(f"{method} {url}")
        return answers.pop(0)

    monkeypatch.setattr(api, "_auth", lambda: {})
    monkeypatch.setattr(api.session, "request", request)
    monkeypatch.setattr(airflow_env.time, "sleep", lambda _s: None)
    return api, sent


def test_a_post_refused_with_database_is_locked_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    api, sent = _api([_response(503, LOCKED), _response(503, LOCKED), _response(200, b'{"id": 7}')], monkeypatch)
    assert api.request("POST", "/backfills", json={}) == {"id": 7}
    assert sent == ["POST http://airflow.invalid/api/v2/backfills"] * 3


def test_other_errors_and_a_lock_that_stays_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    api, sent = _api([_response(503, b'{"detail": "down"}')], monkeypatch)
    with pytest.raises(AirflowEnvError, match="HTTP 503"):
        api.request("POST", "/backfills", json={})
    assert len(sent) == 1
    api, sent = _api([_response(503, LOCKED) for _ in range(6)], monkeypatch)
    with pytest.raises(AirflowEnvError, match="Database is locked"):
        api.request("POST", "/backfills", json={})
    assert len(sent) == 6
