"""Records of the emulated org, write validation, SOQL execution with query cursors.

Kept free of HTTP so the rules (what a write may touch, what bumps ``SystemModstamp``, how a
query pages) can be read in one place; ``app.py`` only maps them to routes and status codes.

Id, lookup and external-id/unique fields have hash indexes so that ``WHERE AccountId IN (...)``,
upserts and reference checks don't scan every record of a 10k-account org. Records must
therefore only change through :class:`Store` methods (``create``/``update``/``set_fields``...),
which keep the indexes current.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from m3sh.sandbox.salesforce import soql
from m3sh.sandbox.salesforce.schema import (
    HISTORY_CREATED,
    HISTORY_OBJECTS,
    NUMBER_TYPES,
    OBJECTS,
    TRACKED_FIELDS,
    FieldDef,
    ObjectDef,
    get_object,
)

Record = dict[str, Any]

DEFAULT_BATCH = 2000
MIN_BATCH = 200
MAX_CURSORS = 500  # Salesforce keeps a bounded number of open query cursors per user too


def _missing(names: list[str]) -> ApiError:
    message = f"Required fields are missing: [{', '.join(names)}]"
    return ApiError(400, "REQUIRED_FIELD_MISSING", message, names)


def _no_column(name: str, obj: ObjectDef) -> ApiError:
    return ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}", [name])


_NO_EXT_FIELD = "Provided external ID field does not exist or is not accessible: "


def _history_is_read_only(obj: ObjectDef, what: str) -> ApiError:
    """Field history supports describe, query, retrieve and the replication calls only (object
    reference); the error code is the API's for an operation an entity does not support, the wording
    the emulator's."""
    return ApiError(400, "INVALID_TYPE_FOR_OPERATION", f"entity type cannot be {what}: {obj.label}")


class ApiError(Exception):
    """An error Salesforce answers with its array body ``[{message, errorCode, fields}]``."""

    def __init__(self, status: int, error_code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields or []

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.error_code, "fields": self.fields}]


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"^[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?$")


def id18(id15: str) -> str:
    """Salesforce's case-safe suffix: 3 chars encoding which of the 15 are upper-case."""
    suffix = ""
    for chunk in range(3):
        bits = 0
        for j, ch in enumerate(id15[chunk * 5:chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << j
        suffix += _ID_CHARS[bits]
    return id15 + suffix


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Fields worth a hash index: ids, lookups and external-id/unique keys (all text, so their
# comparable form never fails to compute whatever an admin stored).
_INDEXED: dict[str, tuple[FieldDef, ...]] = {
    obj.name: tuple(f for f in obj.fields.values()
                    if (f.type in ("id", "reference") or f.external_id or f.unique)
                    and f.type not in NUMBER_TYPES and f.type not in ("date", "datetime", "boolean"))
    for obj in OBJECTS.values()
}


def _indexed(obj: ObjectDef) -> tuple[FieldDef, ...]:
    return _INDEXED[obj.name]


IndexKeys = list[tuple[str, Any]]


@dataclass
class Cursor:
    query: soql.Query
    records: list[Record]
    batch: int
    endpoint: str  # query | queryAll


class Store:
    """All sObject records plus the open query cursors. Callers hold the emulator lock.

    ``user_id``: the org's integration user, the ``CreatedById`` of the field history rows its API
    writes leave (what m3sh reads back to tell its own writes from a person's).
    """

    def __init__(self, user_id: str | None = None) -> None:
        self.user_id = user_id
        self.records: dict[str, dict[str, Record]] = {name: {} for name in OBJECTS}
        # object -> field -> comparable value -> {record id: record}; None values aren't indexed
        self._index: dict[str, dict[str, dict[Any, dict[str, Record]]]] = {
            name: {f.name: {} for f in _indexed(obj)} for name, obj in OBJECTS.items()}
        self._position: dict[str, dict[str, int]] = {name: {} for name in OBJECTS}  # insertion order
        self.cursors: collections.OrderedDict[str, Cursor] = collections.OrderedDict()
        self._seq = itertools.count(1)
        self._contract_seq = itertools.count(100)
        self._instance_tag = secrets.token_hex(2).upper()  # new ids differ across resets

    # -------------------------------------------------------------------------- ids and lookup
    def new_id(self, obj: ObjectDef) -> str:
        n = next(self._seq)
        return id18(f"{obj.prefix}8X{self._instance_tag}{n:06d}"[:15].ljust(15, "0"))

    def find(self, obj: ObjectDef, record_id: str, include_deleted: bool = False) -> Record | None:
        table = self.records[obj.name]
        rec = table.get(record_id)
        if rec is None and len(record_id) == 15:
            rec = next(iter(self._lookup(obj, "Id", {record_id})), None)
        if rec is None or (rec.get("IsDeleted") and not include_deleted):
            return None
        return rec

    def resolve(self, sobject: str, record_id: str) -> Record | None:
        obj = get_object(sobject)
        return self.find(obj, record_id, include_deleted=True) if obj else None

    def find_by_field(self, obj: ObjectDef, f: FieldDef, value: str) -> list[Record]:
        want = soql.comparable(f, value)
        if want is not None and f.name in self._index[obj.name]:
            candidates: Iterable[Record] = self._lookup(obj, f.name, {want})
        else:
            candidates = self.records[obj.name].values()
        return [r for r in candidates
                if not r.get("IsDeleted") and soql.comparable(f, r.get(f.name)) == want]

    def _lookup(self, obj: ObjectDef, field_name: str, keys: Iterable[Any]) -> list[Record]:
        """Records (deleted too) whose indexed ``field_name`` has one of ``keys``, in insertion order."""
        index = self._index[obj.name][field_name]
        found: dict[str, Record] = {}
        for key in keys:
            found.update(index.get(key, {}))
        position = self._position[obj.name]
        return [found[rid] for rid in sorted(found, key=position.__getitem__)]

    def _index_keys(self, obj: ObjectDef, rec: Record) -> IndexKeys:
        return [(f.name, soql.comparable(f, rec.get(f.name))) for f in _indexed(obj)]

    def _reindex(self, obj: ObjectDef, rid: str, rec: Record, before: IndexKeys) -> None:
        """Move ``rec`` to the index buckets of its current values (``before``: its old keys)."""
        indexes = self._index[obj.name]
        for (name, old), (_, new) in zip(before, self._index_keys(obj, rec), strict=True):
            if old == new:
                continue
            if old is not None:
                bucket = indexes[name].get(old, {})
                bucket.pop(rid, None)
                if not bucket:
                    indexes[name].pop(old, None)
            if new is not None:
                indexes[name].setdefault(new, {})[rid] = rec

    # ---------------------------------------------------------------------------------- writes
    def create(self, obj: ObjectDef, data: dict[str, Any], now: dt.datetime | None = None,
               record_id: str | None = None, trusted: bool = False) -> Record:
        """Insert a record. ``trusted`` (seeding) may set system fields the API never accepts, and
        leaves no field history (seeded records predate the org's tracking)."""
        if obj.history_of is not None and not trusted:
            raise _history_is_read_only(obj, "inserted")
        values = data if trusted else self._validate(obj, data, creating=True)
        missing = [f for f in obj.required if values.get(f) in (None, "")]
        if missing and not trusted:
            raise _missing(missing)
        stamp = soql.format_datetime(now or now_utc())
        rid = record_id or self.new_id(obj)
        rec: Record = {f: None for f in obj.fields}
        rec.update({"Id": rid, "IsDeleted": False, "CreatedDate": stamp, "LastModifiedDate": stamp,
                    "SystemModstamp": stamp})
        rec.update(values)
        if not trusted:
            self._check_unique(obj, rec)
            _contract_end(obj, rec)  # seeds set EndDate as they find it (an org may have imported it)
        self._derive(obj, rec)
        table = self.records[obj.name]
        if rid in table:  # a re-used id replaces the record, as before indexes existed
            self._reindex(obj, rid, {}, self._index_keys(obj, table[rid]))
        else:
            self._position[obj.name][rid] = len(self._position[obj.name])
        table[rid] = rec
        self._reindex(obj, rid, rec, [(f.name, None) for f in _indexed(obj)])
        if not trusted and obj.name in TRACKED_FIELDS:
            self._track(obj, rec, HISTORY_CREATED, None, None)
        return rec

    def _track(self, obj: ObjectDef, rec: Record, field_name: str, old: Any, new: Any) -> None:
        """One field history row (object reference, "AccountHistory": a row per changed tracked field
        per save, and a "created" row when the record is created)."""
        history, parent_field, _ = HISTORY_OBJECTS[obj.name]
        self.create(OBJECTS[history], {parent_field: rec["Id"], "CreatedById": self.user_id, "Field": field_name,
                                       "OldValue": old, "NewValue": new, "IsDeleted": False},
                    now=soql.parse_datetime(rec["LastModifiedDate"]), trusted=True)

    def update(self, obj: ObjectDef, rec: Record, data: dict[str, Any]) -> Record:
        if obj.history_of is not None:
            raise _history_is_read_only(obj, "updated")
        values = self._validate(obj, data, creating=False)
        candidate = {**rec, **values}
        for name in obj.required:
            if name in values and values[name] in (None, ""):
                raise _missing([name])
        self._check_unique(obj, candidate)
        before = self._index_keys(obj, rec)
        tracked = {name: rec.get(name) for name in TRACKED_FIELDS.get(obj.name, ())}
        rec.update(values)
        if {"StartDate", "ContractTerm"} & values.keys():
            _contract_end(obj, rec)
        self._derive(obj, rec)
        self._touch(rec)
        self._reindex(obj, self._rid(obj, rec), rec, before)
        for name, old in tracked.items():
            # a save that leaves a value as it was records nothing for it (the reference speaks of
            # "changes"; that an unchanged value is no change is the emulator's reading)
            if rec.get(name) != old:
                self._track(obj, rec, name, old, rec.get(name))
        return rec

    def set_fields(self, obj: ObjectDef, rec: Record, fields: dict[str, Any]) -> Record:
        """Set any field, system ones included, without validation (admin/test back door)."""
        names = []
        for key in fields:
            f = obj.field(key)
            if f is None:
                raise ValueError(f"unknown field {key!r} on {obj.name}")
            names.append(f.name)
        rid = self._rid(obj, rec)
        before = self._index_keys(obj, rec)
        for name, value in zip(names, fields.values(), strict=True):
            rec[name] = value
        self._reindex(obj, rid, rec, before)
        return rec

    def _rid(self, obj: ObjectDef, rec: Record) -> str:
        """The table key of ``rec`` (its ``Id`` unless an admin rewrote that field)."""
        rid = rec.get("Id")
        table = self.records[obj.name]
        if isinstance(rid, str) and table.get(rid) is rec:
            return rid
        return next(k for k, r in table.items() if r is rec)

    def delete(self, obj: ObjectDef, rec: Record) -> None:
        if obj.history_of is not None:
            # "You can also enable delete() in API version 42.0 and later" (an org setting; off here)
            raise _history_is_read_only(obj, "deleted")
        rec["IsDeleted"] = True
        self._touch(rec)

    def upsert(self, obj: ObjectDef, ext_field: str, value: str, data: dict[str, Any]) -> tuple[Record, bool]:
        """Insert or update by external id. Returns (record, created)."""
        f = obj.field(ext_field)
        if f is None:
            raise ApiError(404, "NOT_FOUND", _NO_EXT_FIELD + ext_field)
        if not (f.external_id or f.name == "Id"):
            raise ApiError(400, "INVALID_FIELD", f"Field {f.name} is not an external ID or indexed field "
                                                 f"for {obj.name}", [f.name])
        matches = self.find_by_field(obj, f, value)
        if len(matches) > 1:
            raise ApiError(300, "MULTIPLE_CHOICES", "More than one record found for external id field",
                           [f.name])
        body = {k: v for k, v in data.items() if k.lower() != f.name.lower()}
        if matches:
            return self.update(obj, matches[0], body), False
        if f.name == "Id":
            raise ApiError(404, "NOT_FOUND", _NO_EXT_FIELD + "Id")
        body[f.name] = value
        return self.create(obj, body), True

    def _touch(self, rec: Record) -> None:
        stamp = soql.format_datetime(now_utc())
        rec["LastModifiedDate"] = stamp
        rec["SystemModstamp"] = stamp

    def _validate(self, obj: ObjectDef, data: dict[str, Any], creating: bool) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        out: dict[str, Any] = {}
        read_only: list[str] = []
        for key, raw in data.items():
            if key == "attributes":
                continue
            f = obj.field(key)
            if f is None and isinstance(raw, dict) and obj.relationship(key) is not None:
                # Documented ("Insert or Update (Upsert) a Record Using an External ID": a lookup set
                # through its relationship name and the parent's external id), not modelled here.
                raise ApiError(400, "INVALID_FIELD", f"Setting the relationship '{key}' of {obj.name} by an "
                               "external id is documented by Salesforce but not implemented by the m3sh "
                               "sandbox; set the lookup field to the parent's Id", [key])
            if f is None:
                raise _no_column(key, obj)
            if not (f.createable if creating else f.updateable):
                read_only.append(f.name)
                continue
            out[f.name] = self._coerce(obj, f, raw)
        if read_only:
            raise ApiError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                           f"Unable to create/update fields: {', '.join(read_only)}. Please check "
                           "the security settings of this field and verify that it is read/write for your "
                           "profile or permission set.", read_only)
        return out

    def _coerce(self, obj: ObjectDef, f: FieldDef, raw: Any) -> Any:
        if raw is None or raw == "":
            if not f.nillable:
                raise _missing([f.name])
            return None
        bad = ApiError(400, "JSON_PARSER_ERROR",
                       f"Cannot deserialize instance of {f.type} from value {raw!r} for field {f.name}",
                       [f.name])
        try:
            if f.type == "boolean":
                if not isinstance(raw, bool):
                    raise bad
                return raw
            if f.type in NUMBER_TYPES:
                if isinstance(raw, bool):
                    raise bad
                num = float(raw)
                return int(num) if f.type == "int" else num
            if f.type == "date":
                return dt.date.fromisoformat(str(raw)[:10]).isoformat()
            if f.type == "datetime":
                return soql.format_datetime(soql.parse_datetime(str(raw)))
        except (ValueError, TypeError):
            raise bad from None
        value = str(raw)
        if f.type == "reference":
            self._check_reference(f, value)
        elif f.picklist and f.name != "CurrencyIsoCode" and value not in f.picklist:
            raise ApiError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                           f"{f.name}: bad value for restricted picklist field: {value}", [f.name])
        return value

    def _check_reference(self, f: FieldDef, value: str) -> None:
        if not _ID_RE.match(value):
            raise ApiError(400, "MALFORMED_ID", f"{f.name}: id value of incorrect type: {value}", [f.name])
        target = get_object(f.reference_to or "")
        if target is None or value[:3] != target.prefix:
            raise ApiError(400, "FIELD_INTEGRITY_EXCEPTION", f"{f.name}: id value of incorrect type: {value}",
                           [f.name])
        if self.find(target, value) is None:
            raise ApiError(400, "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}",
                           [f.name])

    def _check_unique(self, obj: ObjectDef, rec: Record) -> None:
        for f in obj.fields.values():
            value = rec.get(f.name)
            if not f.unique or value is None:
                continue
            clash = [r for r in self.find_by_field(obj, f, value) if r["Id"] != rec["Id"]]
            if clash:
                raise ApiError(400, "DUPLICATE_VALUE",
                               f"duplicate value found: {f.name} duplicates value on record with id: "
                               f"{clash[0]['Id']}", [f.name])

    def _derive(self, obj: ObjectDef, rec: Record) -> None:
        """Fields Salesforce computes on save (formulas, roll-ups, auto-numbers)."""
        if obj.name == "Opportunity":
            stage = rec.get("StageName") or ""
            rec["IsClosed"] = stage.startswith("Closed")
            rec["IsWon"] = stage == "Closed Won"
        elif obj.name == "OpportunityLineItem":
            product = self.resolve("Product2", rec.get("Product2Id") or "")
            if product is not None:
                rec["ProductCode"] = product.get("ProductCode")
                rec["Name"] = product.get("Name")
            if rec.get("Quantity") is not None and rec.get("UnitPrice") is not None:
                rec["TotalPrice"] = round(float(rec["Quantity"]) * float(rec["UnitPrice"]), 2)
            opp = self.resolve("Opportunity", rec.get("OpportunityId") or "")
            if opp is not None:
                opp["HasOpportunityLineItem"] = True
        elif obj.name == "Contract":
            rec["StatusCode"] = {"Activated": "Activated", "In Approval Process": "InApproval"}.get(
                rec.get("Status") or "", "Draft")
            if rec.get("ContractNumber") is None:
                rec["ContractNumber"] = f"{next(self._contract_seq):08d}"
            if rec.get("Status") is None:
                rec["Status"] = "Draft"
        elif obj.name in ("Contact", "User"):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p)
        if obj.name_defaults_to_id and not rec.get("Name"):
            rec["Name"] = rec["Id"]

    # ----------------------------------------------------------------------------- replication
    def replicate(self, obj: ObjectDef, start_s: str | None, end_s: str | None, deleted: bool) -> dict[str, Any]:
        """``updated``/``deleted`` resources: seconds are ignored and the window is at most 30 days old."""
        now = now_utc()
        try:
            start = soql.parse_datetime(start_s or "").replace(second=0, microsecond=0)
            end = soql.parse_datetime(end_s or "").replace(second=0, microsecond=0)
        except ValueError:
            raise ApiError(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 datetimes") from None
        if end <= start or start < now - dt.timedelta(days=30):
            raise ApiError(400, "INVALID_REPLICATION_DATE",
                           "start must be before end and within the last 30 days")
        latest = min(end, now.replace(second=0, microsecond=0))
        hits = [r for r in self.records[obj.name].values()
                if bool(r.get("IsDeleted")) == deleted
                and start <= soql.parse_datetime(r["SystemModstamp"]) < latest]
        covered = soql.format_datetime(latest)
        if not deleted:
            return {"ids": [r["Id"] for r in hits], "latestDateCovered": covered}
        return {"deletedRecords": [{"id": r["Id"], "deletedDate": r["SystemModstamp"]} for r in hits],
                "earliestDateAvailable": soql.format_datetime(now - dt.timedelta(days=15)),
                "latestDateCovered": covered}

    # --------------------------------------------------------------------------------- queries
    def run_query(self, text: str, version: str, include_deleted: bool, batch: int | None) -> dict[str, Any]:
        """Evaluate once; the projected rows stay in the cursor that ``query_more`` pages through."""
        try:
            q = soql.compile_query(text)
        except soql.SoqlError as exc:
            raise ApiError(400, exc.error_code, exc.message) from None
        assert q.obj is not None
        obj = q.obj
        rows = self._matching(q, include_deleted)
        if q.count == "aggregate":
            # One result row: LIMIT/OFFSET apply to it, not to the records counted.
            assert q.count_field is not None
            n = sum(1 for r in rows if soql.field_value(r, q.count_field, self.resolve) is not None)
            result = [{"attributes": {"type": "AggregateResult"}, q.count_alias: n}][q.offset or 0:]
            result = result[:q.limit] if q.limit is not None else result
            return {"totalSize": len(result), "done": True, "records": result}
        if q.order:
            rows = soql.sort_records(rows, q.order, self.resolve)
        if q.offset:
            rows = rows[q.offset:]
        if q.limit is not None:
            rows = rows[:q.limit]
        if q.count == "count()":
            return {"totalSize": len(rows), "done": True, "records": []}
        plain = all(not ref.hops for ref in q.fields)
        names = [ref.names[-1] for ref in q.fields]
        projected = [self._project_plain(obj, r, names, version) if plain else self._project(obj, r, q, version)
                     for r in rows]
        size = min(max(batch or DEFAULT_BATCH, MIN_BATCH), DEFAULT_BATCH)
        endpoint = "queryAll" if include_deleted else "query"
        return self._page(Cursor(q, projected, size, endpoint), 0, version, new=True)

    def _matching(self, q: soql.Query, include_deleted: bool) -> list[Record]:
        assert q.obj is not None
        matches = soql.Evaluator(self.resolve, now_utc()).compile(q.where)
        return [r for r in self._candidates(q.obj, q.where)
                if (include_deleted or not r.get("IsDeleted")) and matches(r)]

    def select_records(self, q: soql.Query, include_deleted: bool) -> list[Record]:
        """The stored records a compiled, non-aggregate query selects, ordered and limited (Bulk API
        2.0 query jobs format them themselves)."""
        rows = self._matching(q, include_deleted)
        if q.order:
            rows = soql.sort_records(rows, q.order, self.resolve)
        if q.offset:
            rows = rows[q.offset:]
        return rows[:q.limit] if q.limit is not None else rows

    def _candidates(self, obj: ObjectDef, where: soql.Cond | None) -> Iterable[Record]:
        """The records a WHERE can match: an indexed ``=``/``IN`` conjunct narrows them (the
        fewest keys wins); otherwise all, in insertion order either way."""
        usable = [(len(keys), name, keys) for name, keys in soql.index_keys(where)
                  if name in self._index[obj.name]]
        if not usable:
            return self.records[obj.name].values()
        _, name, keys = min(usable, key=lambda u: u[0])
        return self._lookup(obj, name, keys)

    def query_more(self, locator: str, version: str) -> dict[str, Any]:
        cursor_id, _, offset_s = locator.rpartition("-")
        cursor = self.cursors.get(cursor_id)
        if cursor is None or not offset_s.isdigit() or int(offset_s) > len(cursor.records):
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        self.cursors.move_to_end(cursor_id)
        return self._page(cursor, int(offset_s), version, new=False, cursor_id=cursor_id)

    def _page(self, cursor: Cursor, offset: int, version: str, new: bool,
              cursor_id: str | None = None) -> dict[str, Any]:
        chunk = cursor.records[offset:offset + cursor.batch]
        end = offset + len(chunk)
        result: dict[str, Any] = {"totalSize": len(cursor.records), "done": end >= len(cursor.records)}
        if not result["done"]:
            if new:
                cursor_id = "01g" + secrets.token_hex(8).upper()[:15]
                self.cursors[cursor_id] = cursor
                while len(self.cursors) > MAX_CURSORS:
                    self.cursors.popitem(last=False)
            result["nextRecordsUrl"] = f"/services/data/v{version}/{cursor.endpoint}/{cursor_id}-{end}"
        elif cursor_id is not None:
            self.cursors.pop(cursor_id, None)
        result["records"] = chunk
        return result

    def _project(self, obj: ObjectDef, rec: Record, q: soql.Query, version: str) -> Record:
        out: Record = {"attributes": self.attributes(obj, rec["Id"], version)}
        for ref in q.fields:
            self._put(out, rec, ref, version)
        return out

    def _project_plain(self, obj: ObjectDef, rec: Record, names: list[str], version: str) -> Record:
        """:meth:`_project` for queries without relationship fields (the common, hot case)."""
        out: Record = {"attributes": self.attributes(obj, rec["Id"], version)}
        for name in names:
            out[name] = rec.get(name)
        return out

    def _put(self, out: Record, rec: Record, ref: soql.FieldRef, version: str) -> None:
        """Write ``ref``'s value into ``out``, nesting relationship fields the way the REST API does."""
        node, current = out, rec
        for hop, name in zip(ref.hops, ref.names, strict=False):
            target_id = current.get(hop.name) if current is not None else None
            target = self.resolve(hop.reference_to or "", target_id) if target_id else None
            if target is None:
                node.setdefault(name, None)
                return
            child = node.get(name)
            if child is None:
                target_obj = get_object(hop.reference_to or "")
                assert target_obj is not None
                child = {"attributes": self.attributes(target_obj, target["Id"], version)}
                node[name] = child
            node, current = child, target
        assert ref.target is not None
        node[ref.target.name] = current.get(ref.target.name)

    @staticmethod
    def attributes(obj: ObjectDef, record_id: str, version: str) -> dict[str, str]:
        return {"type": obj.name, "url": f"/services/data/v{version}/sobjects/{obj.name}/{record_id}"}

    def full_record(self, obj: ObjectDef, rec: Record, version: str,
                    fields: list[str] | None = None) -> Record:
        out: Record = {"attributes": self.attributes(obj, rec["Id"], version)}
        names = [f.name for f in obj.fields.values()]
        if fields:
            names = []
            for name in fields:
                f = obj.field(name.strip())
                if f is None:
                    raise _no_column(name, obj)
                names.append(f.name)
        for name in names:
            out[name] = rec.get(name)
        return out


def _contract_end(obj: ObjectDef, rec: Record) -> None:
    """A Contract's EndDate as Salesforce computes it on save: StartDate plus ContractTerm months,
    less one day (Salesforce Help 000384288: March 1, 2025 + 5 months -> July 31, 2025); a day past
    a shorter month's end is clamped to it (Apex Date.addMonths; not documented for EndDate). No
    StartDate or no term: no EndDate. Written apart from m3sh.crm.outbound on purpose."""
    if obj.name != "Contract":
        return
    start, term = rec.get("StartDate"), rec.get("ContractTerm")
    if not start or term is None:
        rec["EndDate"] = None
        return
    day = dt.date.fromisoformat(str(start)[:10])
    total = day.year * 12 + day.month - 1 + int(term)
    year, month = divmod(total, 12)
    month += 1
    next_first = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
    moved = dt.date(year, month, min(day.day, (next_first - dt.timedelta(days=1)).day))
    rec["EndDate"] = (moved - dt.timedelta(days=1)).isoformat()
