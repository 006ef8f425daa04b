"""State of the emulated HubSpot portal: records, property definitions, associations, property history.

Callers hold the emulator lock; nothing here locks. Property values are stored as strings exactly as
the API returns them (api-notes A.3), so responses need no conversion.

Property history is what the CRM v3 reads answer under ``propertiesWithHistory`` (``ValueWithTimestamp``
in tests/specs/hubspot: ``value``, ``timestamp``, ``sourceType`` required; ``sourceId``...): per
property, newest first, the value set at creation included. The shape and the values come from
HubSpot's published OpenAPI and from live answers recorded in public connector test suites (a
private app's writes: ``"sourceType": "INTEGRATION", "sourceId": "<app id>"``, no ``sourceLabel``;
entries newest first, the creation value last). Two choices rest on no HubSpot document: a write
that leaves a value unchanged adds no entry (the emulator records changes, request stats count
writes), and seeded records carry their values as ``IMPORT`` (the demo portal's data predates m3sh).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError, RecordError, invalid_properties
from m3sh.sandbox.hubspot.schema import (
    DEFAULT_ASSOCIATION_TYPES,
    DEFAULT_PROPERTIES,
    KNOWN_ASSOCIATION_TYPES,
    LASTMOD_PROPERTY,
    OBJECT_TYPE_IDS,
    REVERSE_TYPE,
    SINGULAR,
    builtin_properties,
    iso_ms,
)

# The emulated private app's id (the token-info answer's ``appId``): a private app's writes are
# recorded with sourceType INTEGRATION and the app id as sourceId.
PRIVATE_APP_ID = 3_310_942
API_SOURCE: tuple[str, str | None] = ("INTEGRATION", str(PRIVATE_APP_ID))
SEED_SOURCE: tuple[str, str | None] = ("IMPORT", None)

FIRST_NEW_ID = 30_000_000_000  # above every seeded id, so new ids keep dict order == id order


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_datetime_value(value: str) -> dt.datetime:
    """Accept what HubSpot accepts for date/datetime values: epoch milliseconds or ISO-8601."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return dt.datetime.fromtimestamp(int(v) / 1000, dt.UTC)
    parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def to_epoch_ms(value: str) -> int:
    return int(parse_datetime_value(value).timestamp() * 1000)


@dataclass
class Record:
    id: str
    properties: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime
    archived: bool = False
    archived_at: dt.datetime | None = None
    # property -> ValueWithTimestamp entries, newest first
    history: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def record_history(self, before: Mapping[str, str], ts: dt.datetime, source: tuple[str, str | None],
                       names: Iterable[str]) -> None:
        """One entry per property of ``names`` whose value differs from ``before`` (a cleared value is
        recorded as ``""``, the value that cleared it)."""
        kind, source_id = source
        for name in names:
            value = self.properties.get(name, "")
            if before.get(name, "") == value:  # unset and "" are the same to HubSpot (api-notes A.4)
                continue
            entry = {"value": value, "timestamp": iso_ms(ts), "sourceType": kind}
            if source_id is not None:
                entry["sourceId"] = source_id
            self.history.setdefault(name, []).insert(0, entry)

    def to_json(self, object_type: str, wanted: Iterable[str] | None = None,
                with_history: Iterable[str] = ()) -> dict[str, Any]:
        names = list(wanted) if wanted else DEFAULT_PROPERTIES[object_type]
        always = ("hs_object_id", "createdate", LASTMOD_PROPERTY[object_type])
        props: dict[str, str | None] = {n: self.properties.get(n) for n in names}
        for n in always:
            props.setdefault(n, self.properties.get(n))
        out: dict[str, Any] = {
            "id": self.id,
            "properties": props,
            "createdAt": iso_ms(self.created_at),
            "updatedAt": iso_ms(self.updated_at),
            "archived": self.archived,
        }
        if self.archived_at:
            out["archivedAt"] = iso_ms(self.archived_at)
        history = list(with_history)
        if history:
            # "If any of the specified properties are not present on the requested object(s), they
            # will be ignored" (the parameter's description in the published spec).
            out["propertiesWithHistory"] = {n: [dict(e) for e in self.history[n]]
                                            for n in dict.fromkeys(history) if self.history.get(n)}
        return out


@dataclass
class PortalState:
    objects: dict[str, dict[str, Record]] = field(
        default_factory=lambda: {t: {} for t in OBJECT_TYPE_IDS}
    )
    properties: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {t: builtin_properties(t) for t in OBJECT_TYPE_IDS}
    )
    # (from_type, from_id, to_type) -> {to_id: {(category, typeId)}}
    associations: dict[tuple[str, str, str], dict[str, set[tuple[str, int]]]] = field(default_factory=dict)
    owners: list[dict[str, Any]] = field(default_factory=list)
    ids: itertools.count = field(default_factory=lambda: itertools.count(FIRST_NEW_ID))

    # -- property validation -------------------------------------------------------------------
    def normalise(
        self, object_type: str, values: Mapping[str, Any], *, allow_read_only: bool = False
    ) -> dict[str, str]:
        """Validate and stringify written properties; raise HubSpot's ``PROPERTY_DOESNT_EXIST`` etc."""
        defs = self.properties[object_type]
        out: dict[str, str] = {}
        problems: list[dict[str, str]] = []
        for name, raw in values.items():
            pdef = defs.get(name)
            if pdef is None or pdef["archived"]:
                problems.append({"name": name, "error": "PROPERTY_DOESNT_EXIST",
                                 "message": f'Property "{name}" does not exist'})
                continue
            if pdef["modificationMetadata"]["readOnlyValue"] and not allow_read_only:
                problems.append({"name": name, "error": "READ_ONLY_VALUE",
                                 "message": f'"{name}" is a read only property; its value cannot be set.'})
                continue
            value = "" if raw is None else (str(raw).lower() if isinstance(raw, bool) else str(raw))
            try:
                out[name] = _coerce(pdef, value)
            except ValueError as exc:
                problems.append({"name": name, "error": str(exc).split(":")[0],
                                 "message": f'{value!r} is not a valid value for "{name}": {exc}'})
        if problems:
            raise invalid_properties(problems)
        return out

    def _check_unique(self, object_type: str, props: Mapping[str, str], own_id: str | None) -> None:
        defs = self.properties[object_type]
        for name, value in props.items():
            if not value or name == "hs_object_id" or not defs[name]["hasUniqueValue"]:
                continue
            other = self.find_by(object_type, name, value)
            if other is not None and other.id != own_id:
                raise RecordError(
                    409,
                    f"A {SINGULAR[object_type]} with {name} {value!r} already exists "
                    f"(record {other.id}).",
                    "CONFLICT",
                    sub_category="OBJECT_ALREADY_EXISTS" if name != "email" else "CONTACT_EXISTS",
                    context={"id": [other.id], "propertyName": [name]},
                )

    # -- records -------------------------------------------------------------------------------
    def find_by(self, object_type: str, prop: str, value: str, archived: bool = False) -> Record | None:
        if prop in ("hs_object_id", "id", ""):
            rec = self.objects[object_type].get(value)
            return rec if rec is not None and rec.archived == archived else None
        for rec in self.objects[object_type].values():
            if rec.archived == archived and rec.properties.get(prop) == value:
                return rec
        return None

    def get(self, object_type: str, object_id: str, id_property: str | None = None,
            archived: bool = False) -> Record:
        if id_property and id_property not in self.properties[object_type]:
            raise RecordError(400, f'Property "{id_property}" does not exist', "VALIDATION_ERROR")
        rec = self.find_by(object_type, id_property or "hs_object_id", object_id, archived)
        if rec is None:
            raise RecordError(
                404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND",
                context={"id": [object_id]},
            )
        return rec

    def create(self, object_type: str, values: Mapping[str, Any], *, allow_read_only: bool = False,
               when: dt.datetime | None = None, record_id: str | None = None,
               source: tuple[str, str | None] = SEED_SOURCE) -> Record:
        props = self.normalise(object_type, values, allow_read_only=allow_read_only)
        self._check_unique(object_type, props, None)
        ts = when or now_utc()
        rid = record_id or str(next(self.ids))
        lastmod = LASTMOD_PROPERTY[object_type]
        base = {"hs_object_id": rid, "createdate": iso_ms(ts), lastmod: iso_ms(ts)}
        merged = {**base, **{k: v for k, v in props.items() if v != ""}}
        _derive(object_type, merged)
        rec = Record(rid, merged, ts, parse_datetime_value(merged[lastmod]))
        rec.record_history({}, ts, source, merged)
        self.objects[object_type][rid] = rec
        return rec

    def update(self, object_type: str, rec: Record, values: Mapping[str, Any],
               source: tuple[str, str | None] = API_SOURCE) -> Record:
        props = self.normalise(object_type, values)
        self._check_unique(object_type, props, rec.id)
        before = dict(rec.properties)
        for k, v in props.items():
            if v == "":
                rec.properties.pop(k, None)  # an empty string clears the value (api-notes A.4)
            else:
                rec.properties[k] = v
        _derive(object_type, rec.properties)
        self.touch(object_type, rec)
        # the written properties and what HubSpot derived from them (not the modification date,
        # which every write moves: HubSpot's source for it is its own, not the writer's)
        lastmod = LASTMOD_PROPERTY[object_type]
        rec.record_history(before, rec.updated_at, source,
                           dict.fromkeys([*props, *(k for k in rec.properties if k != lastmod)]))
        return rec

    def touch(self, object_type: str, rec: Record, when: dt.datetime | None = None) -> None:
        ts = when or now_utc()
        rec.updated_at = ts
        rec.properties[LASTMOD_PROPERTY[object_type]] = iso_ms(ts)

    def archive(self, object_type: str, rec: Record) -> None:
        rec.archived = True
        rec.archived_at = now_utc()
        rec.updated_at = rec.archived_at
        for key in [k for k in self.associations if k[0] == object_type and k[1] == rec.id]:
            for to_id in list(self.associations[key]):
                self.remove_association(object_type, rec.id, key[2], to_id)

    def live(self, object_type: str) -> Iterable[Record]:
        return (r for r in self.objects[object_type].values() if not r.archived)

    # -- associations --------------------------------------------------------------------------
    def associate(self, from_type: str, from_id: str, to_type: str, to_id: str,
                  types: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
        """Link two records in both directions; ``types`` None means the default association."""
        if types is None:
            default = DEFAULT_ASSOCIATION_TYPES.get((from_type, to_type))
            if default is None:
                raise RecordError(
                    400, f"No default association between {from_type} and {to_type}",
                    "VALIDATION_ERROR",
                )
            types = [("HUBSPOT_DEFINED", default)]
        for category, type_id in types:
            known = KNOWN_ASSOCIATION_TYPES.get(type_id)
            if category == "HUBSPOT_DEFINED" and (known is None or known[:2] != (from_type, to_type)):
                raise RecordError(
                    400, f"associationTypeId {type_id} is not valid for {from_type} to {to_type}",
                    "VALIDATION_ERROR",
                )
            self.associations.setdefault((from_type, from_id, to_type), {}).setdefault(to_id, set()).add(
                (category, type_id)
            )
            reverse = REVERSE_TYPE.get(type_id, type_id)
            self.associations.setdefault((to_type, to_id, from_type), {}).setdefault(from_id, set()).add(
                (category, reverse)
            )
        return types

    def remove_association(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        self.associations.get((from_type, from_id, to_type), {}).pop(to_id, None)
        self.associations.get((to_type, to_id, from_type), {}).pop(from_id, None)

    def associated(self, from_type: str, from_id: str, to_type: str) -> list[dict[str, Any]]:
        """``MultiAssociatedObjectWithLabel`` entries, ordered by numeric id.

        As the spec types them: ``toObjectId`` is a string and ``label`` is present only for
        labelled types (it is an optional, non-nullable string in ``AssociationSpecWithLabel``).
        """
        links = self.associations.get((from_type, from_id, to_type), {})
        out = []
        for to_id in sorted(links, key=_id_key):
            types = sorted(links[to_id], key=lambda t: t[1])
            specs: list[dict[str, Any]] = []
            for c, t in types:
                label = (KNOWN_ASSOCIATION_TYPES.get(t) or (None, None, None))[2]
                specs.append({"category": c, "typeId": t, **({"label": label} if label else {})})
            out.append({"toObjectId": to_id, "associationTypes": specs})
        return out

    def require(self, object_type: str, object_id: str) -> Record:
        rec = self.objects[object_type].get(object_id)
        if rec is None or rec.archived:
            raise HubSpotHTTPError(
                404, f"No {SINGULAR[object_type]} with ID {object_id} exists", "OBJECT_NOT_FOUND",
                context={"id": [object_id]},
            )
        return rec


def _id_key(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (0, value)


def _coerce(pdef: Mapping[str, Any], value: str) -> str:
    if value == "":
        return ""
    kind = pdef["type"]
    if kind == "number":
        try:
            num = Decimal(value)
        except InvalidOperation:
            raise ValueError("INVALID_FLOAT: not a number") from None
        if not num.is_finite():
            raise ValueError("INVALID_FLOAT: not a finite number")
        return value
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise ValueError("INVALID_BOOLEAN: expected true or false")
        return value.lower()
    if kind == "datetime":
        try:
            return iso_ms(parse_datetime_value(value))
        except ValueError:
            raise ValueError("INVALID_DATETIME: expected epoch milliseconds or ISO-8601") from None
    if kind == "date":
        try:
            parsed = parse_datetime_value(value)
        except ValueError:
            raise ValueError("INVALID_DATE: expected YYYY-MM-DD or epoch milliseconds") from None
        if (parsed.hour, parsed.minute, parsed.second, parsed.microsecond) != (0, 0, 0, 0):
            raise ValueError("INVALID_DATE: a date must be midnight UTC")
        return parsed.date().isoformat()
    if kind == "enumeration" and pdef["options"]:
        allowed = {o["value"] for o in pdef["options"]}
        bad = [v for v in value.split(";") if v not in allowed]
        if bad:
            raise ValueError(f"INVALID_OPTION: {bad} not in {sorted(allowed)}")
    return value


def _derive(object_type: str, props: dict[str, str]) -> None:
    """Calculated values HubSpot maintains itself (line item amount = quantity x price - discount)."""
    if object_type == "line_items" and "quantity" in props and "price" in props:
        amount = Decimal(props["quantity"]) * (Decimal(props["price"]) - Decimal(props.get("discount", "0")))
        props["amount"] = format(amount.normalize(), "f")
