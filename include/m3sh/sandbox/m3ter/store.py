"""In-memory state of one emulated m3ter organization.

Entities are kept as the camelCase JSON dicts the API returns, so responses need no mapping
layer. Each entity carries a private ``_seq`` (creation order) that drives the newest-first
cursor pagination; keys starting with ``_`` are never sent to clients.

Orgs of 20,000+ accounts must not make each request scan a collection, so a collection's dict
order is kept equal to ``_seq`` order (pages need no sort) and the fields requests look up by
value (:data:`INDEXED_FIELDS`) have hash indexes. Both hold because entities enter, change and
leave only through :meth:`Store.insert`, :meth:`Store.replace` and :meth:`Store.delete`; nothing
mutates an indexed field in place.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import collections
import operator
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from m3sh.sandbox.m3ter.schemas import ApiError
from m3sh.sandbox.m3ter.timeutil import now_iso
from m3sh.sandbox.seed import DEMO_ORG_ID

# The service user every sandbox credential maps to; m3ter audit fields hold such ids.
SERVICE_USER = "SERVICE_USER_5c1e0d7a-6b9f-4e2b-9d1c-00000000sand"
DEFAULT_PAGE_SIZE = 10
MAX_EVENTS = 20_000

Entity = dict[str, Any]
# Fields looked up by value on hot paths: unique codes and find-by-code, per-account filters
# (contracts, account plans, balances), external mapping look-ups and their uniqueness check.
INDEXED_FIELDS = ("code", "accountId", "externalId", "m3terId")
_SEQ = operator.itemgetter("_seq")


def public(entity: Entity) -> Entity:
    """The client-visible view of an entity (private ``_`` keys removed)."""
    return {k: v for k, v in entity.items() if not k.startswith("_")}


def new_id() -> str:
    return str(uuid.uuid4())


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not raw.startswith("seq:"):
            raise ValueError(raw)
        return int(raw[4:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "nextToken: invalid pagination token") from None


def page_size(query: Any, maximum: int, name: str = "pageSize") -> int:
    """Parse ``pageSize`` with the per-endpoint range from the spec (1..100, 1..200, ...)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: must be an integer") from None
    if not 1 <= size <= maximum:
        raise ApiError(400, f"{name}: must be between 1 and {maximum}")
    return size


def multi(query: Any, name: str) -> list[str]:
    """Array query params: the spec says ``ids=a&ids=b``, SDK 0.9.0 sends ``ids=a,b``; accept both."""
    out: list[str] = []
    for raw in query.getlist(name):
        out.extend(p for p in raw.split(",") if p)
    return out


def paginate(
    items: Iterable[Entity],
    query: Any,
    maximum: int,
    render: Callable[[Entity], Entity] = public,
    *,
    in_seq_order: bool = False,
) -> dict[str, Any]:
    """Newest first, cursor = creation sequence of the last item returned.

    A sequence cursor (rather than an offset) keeps pages stable while entities are created or
    deleted between page requests, which is what a cursor API promises. ``in_seq_order`` says
    ``items`` already ascend by ``_seq`` (a collection, or a filtered copy of one), so the page is
    cut with a binary search instead of sorting the whole collection on every page.
    """
    size = page_size(query, maximum)
    token = query.get("nextToken")
    after = decode_token(token) if token else None
    if in_seq_order:
        ascending = items if isinstance(items, list) else list(items)
        end = len(ascending) if after is None else bisect.bisect_left(ascending, after, key=_SEQ)
        page = ascending[max(0, end - size) : end][::-1]
        more = end > size
    else:
        ordered = sorted(items, key=_SEQ, reverse=True)
        # first position with _seq < after: the keys -_seq ascend along the newest-first list
        start = 0 if after is None else bisect.bisect_right(ordered, -after, key=lambda e: -e["_seq"])
        page = ordered[start : start + size]
        more = len(ordered) - start > size
    body: dict[str, Any] = {"data": [render(e) for e in page]}
    if more:
        body["nextToken"] = encode_token(page[-1]["_seq"])
    return body


class Store:
    """All entities of the org plus counters; guarded by the emulator's lock."""

    def __init__(self, org_id: str = DEMO_ORG_ID) -> None:
        self.org_id = org_id
        self.entities: dict[str, dict[str, Entity]] = collections.defaultdict(dict)
        self.events: collections.OrderedDict[str, Entity] = collections.OrderedDict()
        self.custom_fields: Entity = {}
        self._seq = 0
        # (kind, field) -> value -> {id: entity}; only str values are indexed
        self._index: dict[tuple[str, str], dict[str, dict[str, Entity]]] = collections.defaultdict(dict)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def coll(self, kind: str) -> dict[str, Entity]:
        return self.entities[kind]

    def get(self, kind: str, entity_id: str, label: str | None = None) -> Entity:
        entity = self.entities[kind].get(entity_id)
        if entity is None:
            raise ApiError(404, f"{label or kind} with id {entity_id} not found")
        return entity

    def find(self, kind: str, field: str, value: Any) -> Entity | None:
        """The oldest entity whose ``field`` equals ``value``."""
        found = self.select(kind, field, [value])
        return found[0] if found else None

    def select(self, kind: str, field: str, values: Iterable[Any]) -> list[Entity]:
        """Entities whose ``field`` is one of ``values``, oldest first.

        By ``id`` or an indexed field this costs O(matches), not a scan of the collection; other
        fields (or non-string values, which are never indexed) fall back to the scan.
        """
        wanted = list(values)
        coll = self.entities[kind]
        if (field != "id" and field not in INDEXED_FIELDS) or not all(isinstance(v, str) for v in wanted):
            return [e for e in coll.values() if e.get(field) in wanted]
        if field == "id":
            hits = {v: coll[v] for v in wanted if v in coll}
        else:
            index = self._index[(kind, field)]
            # an entity dropped from the collection behind the store's back is not returned
            hits = {
                e["id"]: e for v in wanted for e in index.get(v, {}).values() if coll.get(e["id"]) is e
            }
        return sorted(hits.values(), key=_SEQ)

    def _index_add(self, kind: str, entity: Entity) -> None:
        for field in INDEXED_FIELDS:
            value = entity.get(field)
            if isinstance(value, str):
                self._index[(kind, field)].setdefault(value, {})[entity["id"]] = entity

    def _index_drop(self, kind: str, entity: Entity) -> None:
        for field in INDEXED_FIELDS:
            value = entity.get(field)
            if isinstance(value, str):
                bucket = self._index[(kind, field)].get(value)
                if bucket is not None:
                    bucket.pop(entity["id"], None)
                    if not bucket:
                        del self._index[(kind, field)][value]

    def insert(self, kind: str, fields: Entity, entity_id: str | None = None) -> Entity:
        stamp = now_iso()
        entity: Entity = {
            "id": entity_id or new_id(),
            **fields,
            "version": 1,
            "dtCreated": stamp,
            "dtLastModified": stamp,
            "createdBy": SERVICE_USER,
            "lastModifiedBy": SERVICE_USER,
            "_seq": self.next_seq(),
        }
        coll = self.entities[kind]
        previous = coll.pop(entity["id"], None)  # re-append: dict order stays _seq order
        if previous is not None:
            self._index_drop(kind, previous)
        coll[entity["id"]] = entity
        self._index_add(kind, entity)
        return entity

    def replace(self, kind: str, entity_id: str, fields: Entity, label: str | None = None) -> Entity:
        """Full PUT with optimistic locking: ``version`` must match, answer 400 (never 409)."""
        current = self.get(kind, entity_id, label)
        version = fields.pop("version")
        if version != current["version"]:
            raise ApiError(
                400,
                f"Version mismatch for {label or kind} {entity_id}: sent {version}, "
                f"current is {current['version']}. Re-read the entity and retry.",
            )
        private = {k: v for k, v in current.items() if k.startswith("_")}
        updated: Entity = {
            "id": entity_id,
            **fields,
            "version": version + 1,
            "dtCreated": current["dtCreated"],
            "dtLastModified": now_iso(),
            "createdBy": current["createdBy"],
            "lastModifiedBy": SERVICE_USER,
            **private,
        }
        self._index_drop(kind, current)
        self.entities[kind][entity_id] = updated  # same key: keeps its place, and _seq is kept
        self._index_add(kind, updated)
        return updated

    def touch(self, entity: Entity) -> None:
        """A server-side change (e.g. a balance amount) also bumps version and audit fields."""
        entity["version"] += 1
        entity["dtLastModified"] = now_iso()

    def delete(self, kind: str, entity_id: str, label: str | None = None) -> Entity:
        entity = self.get(kind, entity_id, label)
        del self.entities[kind][entity_id]
        self._index_drop(kind, entity)
        return entity

    def add_event(self, event: Entity) -> None:
        event["_seq"] = self.next_seq()
        self.events[event["id"]] = event
        while len(self.events) > MAX_EVENTS:
            self.events.popitem(last=False)
