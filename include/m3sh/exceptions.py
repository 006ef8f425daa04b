"""m3sh's exception tree. Each error names the system, entity and record it concerns.

Two families matter to operators: :class:`RetryableError` (rate limits, 5xx, dropped connections —
Airflow should retry) and everything else (bad input or configuration — retrying cannot help, so
operators raise ``AirflowFailException`` for them).
"""

from __future__ import annotations


class M3shError(Exception):
    """Base of every m3sh error."""


class ConfigError(M3shError, ValueError):
    """m3sh.yaml is invalid; the message lists every problem with its YAML path and line."""


class RetryableError(M3shError):
    """A transient failure (429, 5xx, connection reset): safe to retry because writes are idempotent."""


class ExternalApiError(M3shError):
    """An external system refused a request; ``system``/``entity``/``record_id`` say which record."""

    def __init__(self, system: str, message: str, *, entity: str | None = None,
                 record_id: str | None = None, status: int | None = None) -> None:
        self.system = system
        self.entity = entity
        self.record_id = record_id
        self.status = status
        where = f" {entity}" if entity else ""
        where += f" {record_id!r}" if record_id else ""
        super().__init__(f"{system}{where}: {message}" + (f" (HTTP {status})" if status else ""))


class M3terApiError(ExternalApiError):
    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__("m3ter", message, **kwargs)  # type: ignore[arg-type]


class M3terVersionConflict(M3terApiError):
    """An optimistic-locking conflict that persisted after re-reading the entity."""


class InvalidRecord(M3shError, ValueError):
    """One input record is invalid; carries where it came from so it can be dead-lettered."""

    def __init__(self, reason: str, *, source: str = "", line: int | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        self.field = field
        loc = source + (f":{line}" if line is not None else "")
        super().__init__(f"{loc} field {field!r}: {reason}" if field else f"{loc}: {reason}")
