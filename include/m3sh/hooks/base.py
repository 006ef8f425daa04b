"""What every m3sh hook shares: the host of a connection as an absolute URL, secrets registered with
Airflow's masker, and one retry policy (tenacity) for transient failures.

The per-system limiters live in :mod:`m3sh.hooks.limits`; the official SDKs' own retry layers are
switched off where a hook retries itself, so a failure is retried by one layer only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")


def absolute_url(host: str | None, default: str) -> str:
    """A connection's host as ``scheme://host[/path]`` without a trailing slash (``https`` when the
    connection form was given a bare host name); ``default`` when it is empty."""
    url = (host or "").strip().rstrip("/")
    if not url:
        return default
    return url if "://" in url else f"https://{url}"


def mask(*secrets: str | None) -> None:
    """Register secrets with Airflow's masker, so task logs show ``***`` instead (3.3: the task
    supervisor is told too)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - outside an Airflow install
        return
    for secret in secrets:
        if secret:
            mask_secret(secret)


def backoff_wait(base_s: float, max_s: float,
                 retry_after: Callable[[BaseException], float | None]) -> Callable[[RetryCallState], float]:
    """The wait before a retry: the server's ``Retry-After`` when it sent one (capped at ``max_s``),
    else exponential back-off with full jitter (threads that failed together retry apart)."""
    jittered = wait_random_exponential(multiplier=base_s, max=max_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        told = retry_after(exc) if exc is not None else None
        return min(max_s, told) if told is not None else float(jittered(state))

    return wait


def retrying(system: str, what: str, *, attempts: int, wait: Callable[[RetryCallState], float],
             retryable: Callable[[BaseException], bool], log: logging.Logger,
             describe: Callable[[BaseException], Any] = lambda e: e) -> Retrying:
    """A tenacity ``Retrying`` for one call: at most ``attempts`` tries, a warning per retry naming
    the system, the call and the failure (``describe`` must never include a secret)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s %s failed (%s); retrying (%d/%d) in %.1fs", system, what,
                    describe(exc) if exc is not None else "?", state.attempt_number, attempts,
                    state.next_action.sleep if state.next_action else 0.0)

    return Retrying(stop=stop_after_attempt(attempts), wait=wait, retry=retry_if_exception(retryable),
                    before_sleep=before_sleep, reraise=True)
