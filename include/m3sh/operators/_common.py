"""What the m3sh operators share: a lazily built m3ter hook, templated arguments read back as
Python values, and the settings an operator runs with (an ``M3shConfig``, its JSON form, or
inline arguments). Light on purpose: DAG files import the operator modules on every parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from pydantic import TypeAdapter, ValidationError

from m3sh.compat import AirflowFailException
from m3sh.config import Destination, M3shConfig, StorageConfig

if TYPE_CHECKING:
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

# A config given to a mapped operator's ``partial()`` is serialized with the DAG: its JSON form
# (``cfg.model_dump(mode="json")``) is accepted wherever an M3shConfig is.
ConfigArg = M3shConfig | Mapping[str, Any] | None
DESTINATION: TypeAdapter[Any] = TypeAdapter(Destination)  # any m3sh invoice destination, from a mapping


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def native(task_id: str, name: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """A rendered argument as its Python value: a string from a template is read as JSON."""
    if isinstance(value, str) and kind is not str:
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError:
            raise AirflowFailException(f"{task_id}: {name}={value!r} is not JSON (template it with "
                                       f"'| tojson')") from None
    if value is None:
        return None
    if not isinstance(value, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AirflowFailException(f"{task_id}: {name} must be a {kinds}, got {value!r}")
    return value


def names(task_id: str, name: str, value: Any) -> list[str]:
    items = native(task_id, name, value, (list, tuple)) or []
    return [str(v) for v in items]


def flag(task_id: str, name: str, value: Any) -> bool:
    return bool(native(task_id, name, value, bool))


def settings(task_id: str, config: ConfigArg, inline: Callable[[], M3shConfig]) -> M3shConfig:
    """The config an operator runs with: ``config`` (object or JSON form), else built from its
    inline arguments by ``inline``; a validation error names the argument at DAG parse time."""
    try:
        if isinstance(config, M3shConfig):
            return config
        if config is not None:
            return M3shConfig.model_validate(dict(config))
        return inline()
    except ValidationError as exc:
        what = "config" if config is not None else "arguments"
        raise ValueError(f"{task_id}: invalid {what} ({problems(exc)})") from None


def destination(task_id: str, arg: str, value: Any, config: M3shConfig | None) -> Any:
    """An invoice destination given as an object, a mapping or (with ``config``) a name; errors name ``arg``."""
    if isinstance(value, str):
        known = [d.name for d in config.invoicing.destinations] if config is not None else []
        found = next((d for d in config.invoicing.destinations if d.name == value), None) if config else None
        if found is None:
            if config is None:
                raise ValueError(f"{task_id}: {arg} {value!r} is a name; give the destination object (or mapping), "
                                 "or config=... that defines it")
            raise ValueError(f"{task_id}: {arg}: config has no destination {value!r}; known: {known}")
        return found
    if isinstance(value, Mapping):
        try:
            return DESTINATION.validate_python(dict(value))
        except ValidationError as exc:
            raise ValueError(f"{task_id}: invalid {arg} ({problems(exc)})") from None
    if not hasattr(value, "type") or not hasattr(value, "name"):
        raise ValueError(f"{task_id}: {arg} must be a destination object, mapping or name; "
                         f"got {type(value).__name__}")
    return value


def models(items: Sequence[Any] | None) -> list[Any]:
    """Pydantic objects as their JSON form, so inline arguments validate into a config alike."""
    return [i.model_dump(mode="json") if hasattr(i, "model_dump") else dict(i) for i in items or []]


class M3terLazyOperator(BaseOperator):
    """:class:`~m3sh.operators.m3ter.M3terBaseOperator`'s ``m3ter_conn_id`` and lazy ``hook``, without
    importing the hook module (and the m3ter SDK, ~0.5 s) at import: the m3sh DAG files import
    these operators on every parse.

    :param m3ter_conn_id: Airflow connection of type ``m3ter``. (templated)
    """

    template_fields: Sequence[str] = ("m3ter_conn_id",)
    ui_color = "#e8f0ff"

    def __init__(self, *, m3ter_conn_id: str = "m3ter_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.m3ter_conn_id = m3ter_conn_id

    @cached_property
    def hook(self) -> M3terHook:
        from m3sh.hooks.m3ter import M3terHook

        return M3terHook(m3ter_conn_id=self.m3ter_conn_id)


def storage_settings(task_id: str, bucket: str | None, prefix: str, aws_conn_id: str) -> StorageConfig:
    """The state bucket of an operator used without a config (``config.storage`` otherwise)."""
    if not bucket:
        raise ValueError(f"{task_id}: give bucket=... (m3sh's state: manifests, ledger, staging) or config=...")
    return StorageConfig(conn_id=aws_conn_id, bucket=bucket, prefix=prefix)

class StagingMixin:
    """Where a run stages its bills, results and summary: ``config.storage``, or inline arguments."""

    task_id: str

    def _init_storage(self, config: M3shConfig | None, aws_conn_id: str, bucket: str | None, prefix: str) -> None:
        if bucket is None and config is None:
            raise ValueError(f"{self.task_id}: give bucket=... (where bills are staged) or config=...")
        self.config = config
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix

    def _storage(self) -> Storage:
        from m3sh.storage import Storage

        if self.bucket is None and self.config is not None:
            return Storage.from_config(self.config.storage)
        if not self.bucket:
            raise AirflowFailException(f"{self.task_id}: bucket is empty")
        return Storage(self.aws_conn_id, self.bucket, self.prefix)
