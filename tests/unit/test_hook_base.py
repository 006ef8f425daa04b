"""The plumbing every hook shares (m3sh.hooks.base): hosts, the retry policy and its log line."""

from __future__ import annotations

import logging

import pytest

from m3sh.hooks.base import absolute_url, backoff_wait, retrying


@pytest.mark.parametrize(("host", "expected"), [
    ("", "https://default.example"), (None, "https://default.example"),
    ("api.m3ter.com", "https://api.m3ter.com"), (" https://api.m3ter.com/ ", "https://api.m3ter.com"),
    ("http://127.0.0.1:8711", "http://127.0.0.1:8711"), ("proxy.example/m3ter/", "https://proxy.example/m3ter"),
])
def test_a_connection_host_becomes_an_absolute_url(host: str | None, expected: str) -> None:
    assert absolute_url(host, "https://default.example") == expected


class _Transient(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("HTTP 503")
        self.retry_after = retry_after


def _run(failures: list[_Transient], caplog: pytest.LogCaptureFixture, attempts: int = 4) -> list[float]:
    """Fail with ``failures`` in turn, then succeed; the sleeps tenacity was asked for."""
    sleeps: list[float] = []
    left = list(failures)

    def call() -> str:
        if left:
            raise left.pop(0)
        return "ok"

    retry = retrying("System", "get thing", attempts=attempts, log=logging.getLogger("t"),
                     wait=backoff_wait(0.5, 4.0, lambda e: getattr(e, "retry_after", None)),
                     retryable=lambda e: isinstance(e, _Transient))
    retry.sleep = sleeps.append  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, "t")
    assert retry(call) == "ok"
    return sleeps


def test_retry_after_is_honoured_up_to_the_cap_and_backoff_is_jittered(caplog: pytest.LogCaptureFixture) -> None:
    assert _run([_Transient(2.0), _Transient(60.0)], caplog) == [2.0, 4.0]
    sleeps = _run([_Transient()] * 3, caplog)
    assert len(sleeps) == 3 and all(0 <= s <= 4.0 for s in sleeps)
    assert "System get thing failed (HTTP 503); retrying (1/4)" in caplog.text


def test_gives_up_after_the_attempts_and_never_retries_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(_Transient):
        _run([_Transient()] * 4, caplog, attempts=3)
    calls = []

    def refused() -> None:
        calls.append(1)
        raise ValueError("400")

    with pytest.raises(ValueError, match="400"):
        retrying("System", "put", attempts=5, log=logging.getLogger("t"), wait=lambda _s: 0.0,
                 retryable=lambda e: isinstance(e, _Transient))(refused)
    assert calls == [1]
