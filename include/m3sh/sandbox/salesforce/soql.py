"""A SOQL subset: tokenizer, recursive-descent parser, schema binding and evaluation.

Hand-written because no SOQL parser is available offline (and the Python ones that exist target
query *building*, not evaluation). The subset is what billing integrations send:

    SELECT f, Rel.f, COUNT() | COUNT(f) [alias] FROM Obj
    [WHERE cond {AND|OR} cond ...]   -- =, !=, <>, <, <=, >, >=, [NOT] IN (...), LIKE, NOT, ( )
    [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]

Values: 'quoted strings' (backslash escapes), numbers, true/false, null, dates ``2026-01-01``,
datetimes ``2026-01-01T00:00:00Z`` / ``+0000`` / ``+00:00`` with up to 6 fractional digits (the
SOQL reference shows none; tap-salesforce sends its bookmark as ``...T23:00:00.000000Z`` on every
incremental sync, so Salesforce accepts microseconds), and the date-range literals TODAY,
YESTERDAY, TOMORROW, LAST_MONTH, THIS_MONTH, NEXT_MONTH, LAST_N_DAYS:n, NEXT_N_DAYS:n.

The emulator is deliberately as strict as Salesforce where integrations commonly go wrong:
quoting a datetime, comparing a date field with a datetime, or mixing AND and OR without
parentheses is rejected the way the real API rejects it, so those bugs show up in tests, not in
production. Anything outside the subset is a ``MALFORMED_QUERY`` that says so and names the
token (a function, a date literal, a clause, an object alias), never a silently different answer:
a duplicate field, a second aggregate or an ORDER BY on an aggregate query are refused as Salesforce
refuses them, and LIMIT/OFFSET of an aggregate query count result rows, not input records.
The grammar and literals follow the SOQL and SOSL Reference (https://developer.salesforce.com/docs/
atlas.en-us.soql_sosl.meta/soql_sosl/, "SOQL SELECT Syntax", "Date Formats and Date Literals",
"Aggregate Functions"); the exact wording of each refusal is modelled on the API's
``<query> ^ ERROR at Row:1:Column:n <reason>`` form, not copied from a published example.
"""

from __future__ import annotations

import calendar
import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from m3sh.sandbox.salesforce.schema import NUMBER_TYPES, FieldDef, ObjectDef, get_object


class SoqlError(Exception):
    """A query Salesforce would reject; ``error_code`` is Salesforce's (MALFORMED_QUERY, INVALID_FIELD...)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


# --------------------------------------------------------------------------------------- tokens
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<nrange>[A-Za-z_][A-Za-z0-9_]*:\d+)
  | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)

KEYWORDS = frozenset({
    "select", "from", "where", "and", "or", "not", "in", "like", "order", "by", "asc", "desc",
    "nulls", "first", "last", "limit", "offset", "true", "false", "null", "count", "group",
    "having", "with", "for", "using", "includes", "excludes", "typeof", "update",
})


@dataclass(frozen=True)
class Token:
    kind: str  # string|datetime|date|nrange|number|ident|op|punct|eof
    text: str
    pos: int

    def kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.lower() in words


def tokenize(soql: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(soql):
        m = _TOKEN_RE.match(soql, pos)
        if m is None:
            raise SoqlError("MALFORMED_QUERY", _at(soql, pos, f"unexpected token: '{soql[pos]}'"))
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("eof", "<EOF>", len(soql)))
    return tokens


_SANDBOX = "is not supported by the m3sh Salesforce sandbox"
# SOQL's date literals (SOQL and SOSL Reference, "Date Formats and Date Literals"). The ones in
# _RANGES/_N_RANGES are implemented; any other is refused by name, not taken for a field.
_DATE_LITERALS = frozenset({
    "YESTERDAY", "TODAY", "TOMORROW", "LAST_WEEK", "THIS_WEEK", "NEXT_WEEK", "LAST_MONTH", "THIS_MONTH",
    "NEXT_MONTH", "LAST_90_DAYS", "NEXT_90_DAYS", "THIS_QUARTER", "LAST_QUARTER", "NEXT_QUARTER",
    "THIS_YEAR", "LAST_YEAR", "NEXT_YEAR", "THIS_FISCAL_QUARTER", "LAST_FISCAL_QUARTER",
    "NEXT_FISCAL_QUARTER", "THIS_FISCAL_YEAR", "LAST_FISCAL_YEAR", "NEXT_FISCAL_YEAR",
})
_N_DATE_LITERALS = frozenset({
    "LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO", "NEXT_N_WEEKS", "LAST_N_WEEKS", "N_WEEKS_AGO",
    "NEXT_N_MONTHS", "LAST_N_MONTHS", "N_MONTHS_AGO", "NEXT_N_QUARTERS", "LAST_N_QUARTERS",
    "N_QUARTERS_AGO", "NEXT_N_YEARS", "LAST_N_YEARS", "N_YEARS_AGO", "NEXT_N_FISCAL_QUARTERS",
    "LAST_N_FISCAL_QUARTERS", "N_FISCAL_QUARTERS_AGO", "NEXT_N_FISCAL_YEARS", "LAST_N_FISCAL_YEARS",
    "N_FISCAL_YEARS_AGO",
})


def _at(soql: str, pos: int, message: str) -> str:
    """Salesforce's error text style: the query, a caret, row/column, then the reason."""
    return f"\n{soql}\n{' ' * pos}^\nERROR at Row:1:Column:{pos + 1}\n{message}"


# ------------------------------------------------------------------------------------------ AST
@dataclass(frozen=True)
class Literal:
    kind: str  # string|number|boolean|null|date|datetime|daterange
    value: Any
    pos: int


@dataclass
class FieldRef:
    path: tuple[str, ...]
    pos: int
    # filled in by bind(): the lookup fields traversed and the final field
    hops: list[FieldDef] = field(default_factory=list)
    target: FieldDef | None = None
    names: tuple[str, ...] = ()  # canonical spelling, for output keys


@dataclass
class Compare:
    field: FieldRef
    op: str
    value: Literal


@dataclass
class InList:
    field: FieldRef
    negate: bool
    values: list[Literal]


@dataclass
class Like:
    field: FieldRef
    pattern: Literal


@dataclass
class BoolOp:
    op: str  # and|or
    items: list[Cond]


@dataclass
class Not:
    item: Cond


Cond = Compare | InList | Like | BoolOp | Not


@dataclass
class OrderItem:
    field: FieldRef
    desc: bool = False
    nulls_first: bool = True


@dataclass
class Query:
    text: str
    sobject: str
    fields: list[FieldRef]
    count: str | None = None  # None | "count()" | "aggregate"
    count_field: FieldRef | None = None
    count_alias: str = "expr0"
    where: Cond | None = None
    order: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    obj: ObjectDef | None = None


# --------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def fail(self, message: str | None = None, tok: Token | None = None) -> SoqlError:
        t = tok or self.tok
        return SoqlError("MALFORMED_QUERY", _at(self.soql, t.pos, message or f"unexpected token: {t.text}"))

    def expect_kw(self, word: str) -> Token:
        if not self.tok.kw(word):
            raise self.fail()
        return self.advance()

    def expect_punct(self, ch: str) -> Token:
        if self.tok.kind != "punct" or self.tok.text != ch:
            raise self.fail()
        return self.advance()

    def ident(self) -> Token:
        t = self.tok
        if t.kw("typeof"):
            raise self.fail(f"TYPEOF {_SANDBOX}")
        if t.kind != "ident" or t.text.lower() in KEYWORDS:
            raise self.fail()
        nxt = self.tokens[self.i + 1]
        if nxt.kind == "punct" and nxt.text == "(":
            # FORMAT(), toLabel(), convertCurrency(), CALENDAR_YEAR(), MAX(), FIELDS()... would
            # otherwise fail as "unexpected token: (", hiding which feature is missing.
            raise self.fail(f"function {t.text}() {_SANDBOX}")
        return self.advance()

    def parse(self) -> Query:
        self.expect_kw("select")
        q = Query(text=self.soql, sobject="", fields=[])
        self._select_list(q)
        self.expect_kw("from")
        q.sobject = self.ident().text
        if self.tok.kind == "ident" and self.tok.text.lower() not in KEYWORDS:
            raise self.fail(f"an alias of the object in FROM ('{self.tok.text}') {_SANDBOX}")
        if self.tok.kw("using"):
            raise self.fail(f"USING SCOPE {_SANDBOX}")
        if self.tok.kw("where"):
            self.advance()
            q.where = self._condition()
        if self.tok.kw("group", "having", "with", "for", "using"):
            raise self.fail(f"{self.tok.text.upper()} is not supported by the m3sh Salesforce sandbox")
        if self.tok.kw("order"):
            self.advance()
            self.expect_kw("by")
            q.order.append(self._order_item())
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.advance()
                q.order.append(self._order_item())
        if self.tok.kw("limit"):
            self.advance()
            q.limit = self._int()
        if self.tok.kw("offset"):
            self.advance()
            q.offset = self._int()
            if q.offset > 2000:
                raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000")
        if self.tok.kw("for", "update"):
            raise self.fail(f"{self.tok.text.upper()} (FOR VIEW/REFERENCE/UPDATE, UPDATE TRACKING/VIEWSTAT) "
                            f"{_SANDBOX}")
        if self.tok.kind != "eof":
            raise self.fail()
        if q.count == "aggregate" and q.order:
            item = q.order[0]
            raise SoqlError("MALFORMED_QUERY", _at(self.soql, item.field.pos, "Ordered field must be grouped or "
                                                   f"aggregated: {'.'.join(item.field.path)}"))
        return q

    def _int(self) -> int:
        t = self.tok
        if t.kind != "number" or not t.text.isdigit():
            raise self.fail()
        self.advance()
        return int(t.text)

    def _select_list(self, q: Query) -> None:
        while True:
            t = self.tok
            if t.kw("count"):
                if q.count is not None:
                    raise self.fail(f"more than one aggregate in SELECT {_SANDBOX}", t)
                self.advance()
                self.expect_punct("(")
                if self.tok.kind == "punct" and self.tok.text == ")":
                    self.advance()
                    q.count = "count()"
                else:
                    q.count = "aggregate"
                    q.count_field = FieldRef(tuple(self.ident().text.split(".")), t.pos)
                    self.expect_punct(")")
                    if self.tok.kind == "ident" and self.tok.text.lower() not in KEYWORDS:
                        q.count_alias = self.advance().text
            elif t.kind == "punct" and t.text == "(":
                raise self.fail("parent-to-child subqueries are not supported by the m3sh Salesforce sandbox")
            else:
                it = self.ident()
                q.fields.append(FieldRef(tuple(it.text.split(".")), it.pos))
            if self.tok.kind == "punct" and self.tok.text == ",":
                self.advance()
                continue
            break
        if q.count and q.fields:
            raise self.fail("Field must be grouped or aggregated", t)

    def _order_item(self) -> OrderItem:
        it = self.ident()
        item = OrderItem(FieldRef(tuple(it.text.split(".")), it.pos))
        if self.tok.kw("asc", "desc"):
            item.desc = self.advance().text.lower() == "desc"
        if self.tok.kw("nulls"):
            self.advance()
            if not self.tok.kw("first", "last"):
                raise self.fail()
            item.nulls_first = self.advance().text.lower() == "first"
        return item

    # cond := unary ((AND unary)* | (OR unary)*)  -- mixing needs parentheses, as in SOQL
    def _condition(self) -> Cond:
        items = [self._unary()]
        op: str | None = None
        while self.tok.kw("and", "or"):
            word = self.tok.text.lower()
            if op is not None and word != op:
                raise self.fail()
            op = word
            self.advance()
            items.append(self._unary())
        return items[0] if op is None else BoolOp(op, items)

    def _unary(self) -> Cond:
        if self.tok.kw("not"):
            self.advance()
            return Not(self._unary())
        if self.tok.kind == "punct" and self.tok.text == "(":
            self.advance()
            inner = self._condition()
            self.expect_punct(")")
            return inner
        it = self.ident()
        ref = FieldRef(tuple(it.text.split(".")), it.pos)
        t = self.tok
        if t.kind == "op":
            self.advance()
            return Compare(ref, "!=" if t.text == "<>" else t.text, self._value())
        if t.kw("like"):
            self.advance()
            val = self._value()
            if val.kind != "string":
                raise self.fail(tok=t)
            return Like(ref, val)
        negate = False
        if t.kw("not"):
            self.advance()
            negate = True
        if self.tok.kw("in"):
            self.advance()
            self.expect_punct("(")
            if self.tok.kw("select"):
                raise self.fail("semi-join subqueries are not supported by the m3sh Salesforce sandbox")
            values = [self._value()]
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.advance()
                values.append(self._value())
            self.expect_punct(")")
            return InList(ref, negate, values)
        if t.kw("includes", "excludes"):
            raise self.fail("INCLUDES/EXCLUDES are not supported by the m3sh Salesforce sandbox")
        raise self.fail()

    def _value(self) -> Literal:
        t = self.advance()
        if t.kind == "string":
            return Literal("string", _unescape(t.text[1:-1]), t.pos)
        if t.kind == "number":
            return Literal("number", float(t.text) if "." in t.text else int(t.text), t.pos)
        if t.kind == "datetime":
            return Literal("datetime", parse_datetime(t.text), t.pos)
        if t.kind == "date":
            try:
                return Literal("date", dt.date.fromisoformat(t.text), t.pos)
            except ValueError:
                raise self.fail(tok=t) from None
        if t.kind == "nrange":
            name, _, n = t.text.partition(":")
            if name.upper() in _N_DATE_LITERALS - _N_RANGES:
                raise self.fail(f"date literal {name.upper()}:n {_SANDBOX}", t)
            if name.upper() not in _N_RANGES:
                raise self.fail(tok=t)
            return Literal("daterange", (name.upper(), int(n)), t.pos)
        if t.kind == "ident":
            word = t.text.lower()
            if word in ("true", "false"):
                return Literal("boolean", word == "true", t.pos)
            if word == "null":
                return Literal("null", None, t.pos)
            if t.text.upper() in _RANGES:
                return Literal("daterange", (t.text.upper(), 0), t.pos)
            if t.text.upper() in _DATE_LITERALS:
                raise self.fail(f"date literal {t.text.upper()} {_SANDBOX}", t)
        raise self.fail(tok=t)


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}


def _unescape(raw: str) -> str:
    """Resolve backslash escapes; ``\\%``/``\\_`` stay escaped so LIKE can tell them from wildcards."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse(soql: str) -> Query:
    return _Parser(soql.strip()).parse()


@lru_cache(maxsize=256)
def compile_query(soql: str) -> Query:
    """Parsed and bound, cached by text: a poller re-sending one query parses it once.

    The cached :class:`Query` is shared, so nothing may change it after :func:`bind`."""
    return bind(parse(soql))


# ---------------------------------------------------------------------------------- date values
_RANGES = {"TODAY", "YESTERDAY", "TOMORROW", "LAST_MONTH", "THIS_MONTH", "NEXT_MONTH"}
_N_RANGES = {"LAST_N_DAYS", "NEXT_N_DAYS"}


@lru_cache(maxsize=65536)
def parse_datetime(text: str) -> dt.datetime:
    """SOQL literal or stored value (``...Z``, ``+0000``, ``+00:00``, optional millis) to aware UTC."""
    t = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    return dt.datetime.fromisoformat(t).astimezone(dt.UTC)


def format_datetime(value: dt.datetime) -> str:
    """Salesforce's REST datetime format: millisecond precision, ``+0000`` offset."""
    v = value.astimezone(dt.UTC)
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}+0000"


def _month_range(year: int, month: int) -> tuple[dt.date, dt.date]:
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, 1), dt.date(year, month, last)


def date_range(name: str, n: int, today: dt.date) -> tuple[dt.date, dt.date]:
    """Inclusive (start, end) of a date-range literal, evaluated in UTC (the org's time zone here)."""
    if name == "TODAY":
        return today, today
    if name == "YESTERDAY":
        d = today - dt.timedelta(days=1)
        return d, d
    if name == "TOMORROW":
        d = today + dt.timedelta(days=1)
        return d, d
    if name == "LAST_N_DAYS":
        return today - dt.timedelta(days=n), today
    if name == "NEXT_N_DAYS":
        return today + dt.timedelta(days=1), today + dt.timedelta(days=n)
    offset = {"LAST_MONTH": -1, "THIS_MONTH": 0, "NEXT_MONTH": 1}[name]
    month_index = today.year * 12 + today.month - 1 + offset
    return _month_range(month_index // 12, month_index % 12 + 1)


# -------------------------------------------------------------------------------------- binding
def bind(q: Query) -> Query:
    """Resolve object and field names against the schema; reject wrongly typed filter values."""
    obj = get_object(q.sobject)
    if obj is None:
        raise SoqlError("INVALID_TYPE", _at(
            q.text, q.text.lower().find(q.sobject.lower()),
            f"sObject type '{q.sobject}' is not supported. If you are attempting to use a custom object, "
            "be sure to append the '__c' after the entity name."))
    q.obj = obj
    seen: set[tuple[str, ...]] = set()
    for ref in q.fields:
        _bind_field(q, obj, ref)
        key = tuple(n.lower() for n in ref.names)
        if key in seen:  # Salesforce: "duplicate field selected: Name"
            raise SoqlError("MALFORMED_QUERY", _at(q.text, ref.pos,
                                                   f"duplicate field selected: {'.'.join(ref.names)}"))
        seen.add(key)
    if q.count_field is not None:
        _bind_field(q, obj, q.count_field)
    for item in q.order:
        _bind_field(q, obj, item.field)
    if q.where is not None:
        _bind_cond(q, obj, q.where)
    return q


def _bind_field(q: Query, obj: ObjectDef, ref: FieldRef) -> None:
    current = obj
    names: list[str] = []
    for i, part in enumerate(ref.path):
        last = i == len(ref.path) - 1
        if last:
            f = current.field(part)
            if f is None:
                raise _invalid_field(q, ref, part, current)
            ref.target = f
            names.append(f.name)
        else:
            rel = current.relationship(part)
            if rel is None or rel.reference_to is None:
                raise SoqlError("INVALID_FIELD", _at(
                    q.text, ref.pos,
                    f"Didn't understand relationship '{part}' in field path. If you are attempting to use "
                    "a custom relationship, be sure to append the '__r' after the custom relationship name."))
            ref.hops.append(rel)
            names.append(rel.relationship_name or part)
            nxt = get_object(rel.reference_to)
            assert nxt is not None
            current = nxt
    ref.names = tuple(names)


def _invalid_field(q: Query, ref: FieldRef, part: str, obj: ObjectDef) -> SoqlError:
    return SoqlError("INVALID_FIELD", _at(
        q.text, ref.pos,
        f"No such column '{part}' on entity '{obj.name}'. If you are attempting to use a custom field, be "
        "sure to append the '__c' after the custom field name."))


_EXPECTED = {"date": "date", "datetime": "dateTime", "boolean": "boolean"}


def _bind_filter(q: Query, obj: ObjectDef, ref: FieldRef) -> None:
    """Bind a WHERE field; a field describe marks not filterable (anyType: a field history's
    OldValue/NewValue) is refused with the API's INVALID_FIELD."""
    _bind_field(q, obj, ref)
    assert ref.target is not None
    if not ref.target.filterable:
        raise SoqlError("INVALID_FIELD", _at(q.text, ref.pos,
                                             f"field '{ref.target.name}' can not be filtered in a query call"))


def _bind_cond(q: Query, obj: ObjectDef, cond: Cond) -> None:
    if isinstance(cond, BoolOp):
        for item in cond.items:
            _bind_cond(q, obj, item)
    elif isinstance(cond, Not):
        _bind_cond(q, obj, cond.item)
    elif isinstance(cond, Compare):
        _bind_filter(q, obj, cond.field)
        _check_value(q, cond.field, cond.value, cond.op)
    elif isinstance(cond, InList):
        _bind_filter(q, obj, cond.field)
        for v in cond.values:
            _check_value(q, cond.field, v, "=")
    else:
        _bind_filter(q, obj, cond.field)
        assert cond.field.target is not None
        if _kind(cond.field.target) != "string":
            raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", _at(
                q.text, cond.field.pos, f"invalid operator on field '{cond.field.target.name}': LIKE"))


def _kind(f: FieldDef) -> str:
    if f.type in ("date", "datetime", "boolean"):
        return f.type
    if f.type in NUMBER_TYPES:
        return "number"
    return "string"


def _check_value(q: Query, ref: FieldRef, value: Literal, op: str) -> None:
    assert ref.target is not None
    kind = _kind(ref.target)
    ok = value.kind in ("null", kind) or (value.kind == "daterange" and kind in ("date", "datetime"))
    if value.kind == "null" and op not in ("=", "!="):
        ok = False
    if not ok:
        if kind in _EXPECTED:
            message = (f"value of filter criterion for field '{ref.target.name}' must be of type "
                       f"{_EXPECTED[kind]} and should not be enclosed in quotes")
        else:
            message = f"value of filter criterion for field '{ref.target.name}' must be of type {kind}"
        raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", _at(q.text, value.pos, message))


# ----------------------------------------------------------------------------------- evaluation
# A query is compiled once into closures (per-field value getters, literals converted up front,
# IN lists as sets) and then run over the records: a 200-value ``IN`` costs one set lookup per
# record rather than 200 comparisons, which is what keeps 10k-record orgs fast.
Record = dict[str, Any]
Resolver = Callable[[str, str], Record | None]  # (sobject, id) -> stored record
Predicate = Callable[[Record], bool]
Getter = Callable[[Record], Any]


def field_value(record: Record, ref: FieldRef, resolve: Resolver) -> Any:
    """Follow the lookups of ``ref`` from ``record``; a null lookup yields None."""
    current: Record | None = record
    for hop in ref.hops:
        assert current is not None and hop.reference_to is not None
        target_id = current.get(hop.name)
        current = resolve(hop.reference_to, target_id) if target_id else None
        if current is None:
            return None
    assert ref.target is not None
    return current.get(ref.target.name) if current is not None else None


def _id15(value: Any) -> str:
    return str(value)[:15]  # 15- and 18-char forms of one id are equal


def _folded(value: Any) -> str:
    return str(value).lower()


@cache
def converter(f: FieldDef) -> Callable[[Any], Any]:
    """The non-null half of :func:`comparable` for ``f``'s type, looked up once per field."""
    if f.type == "datetime":
        return parse_datetime
    if f.type == "date":
        return dt.date.fromisoformat
    if f.type in NUMBER_TYPES:
        return float
    if f.type == "boolean":
        return bool
    if f.type in ("id", "reference"):
        return _id15
    return _folded


def comparable(f: FieldDef, value: Any) -> Any:
    """Normalise a stored value for comparison: SOQL text comparisons are case-insensitive."""
    return None if value is None else converter(f)(value)


def raw_getter(ref: FieldRef, resolve: Resolver) -> Getter:
    """The stored value of ``ref`` for a record; plain fields skip the lookup walk."""
    assert ref.target is not None
    if ref.hops:
        return lambda r: field_value(r, ref, resolve)
    name = ref.target.name
    return lambda r: r.get(name)


def comparable_getter(ref: FieldRef, resolve: Resolver) -> Getter:
    """:func:`comparable` of ``ref``'s value for a record (one call deep for plain fields)."""
    assert ref.target is not None
    conv = converter(ref.target)
    if ref.hops:
        def walk(r: Record) -> Any:
            v = field_value(r, ref, resolve)
            return None if v is None else conv(v)

        return walk
    name = ref.target.name

    def get(r: Record) -> Any:
        v = r.get(name)
        return None if v is None else conv(v)

    return get


def _literal(f: FieldDef, lit: Literal) -> Any:
    if lit.kind == "string":
        return comparable(f, lit.value)
    if lit.kind == "number":
        return float(lit.value)
    return lit.value


def _plain(lit: Literal) -> bool:
    """A literal that compares by value (not null, not a date range): usable as a hash key."""
    return lit.kind not in ("null", "daterange")


def index_keys(cond: Cond | None) -> list[tuple[str, frozenset[Any]]]:
    """Top-level ``field = value`` / ``field IN (...)`` conjuncts on plain fields, as (field, keys).

    Every match of the whole condition has, in that field, a :func:`comparable` value among the
    keys, so a hash index on the field narrows the records to check (they are still checked)."""
    if cond is None:
        return []
    conjuncts = cond.items if isinstance(cond, BoolOp) and cond.op == "and" else [cond]
    out: list[tuple[str, frozenset[Any]]] = []
    for c in conjuncts:
        if isinstance(c, Compare) and c.op == "=" and not c.field.hops and _plain(c.value):
            values = [c.value]
        elif isinstance(c, InList) and not c.negate and not c.field.hops and all(map(_plain, c.values)):
            values = c.values
        else:
            continue
        f = c.field.target
        assert f is not None
        out.append((f.name, frozenset(_literal(f, v) for v in values)))
    return out


def _always(record: Record) -> bool:
    return True


def _all_of(parts: list[Predicate]) -> Predicate:
    if len(parts) == 2:  # the usual window (``>= start AND < end``): no loop per record
        first, second = parts
        return lambda r: first(r) and second(r)

    def all_of(r: Record) -> bool:
        return all(p(r) for p in parts)

    return all_of


def _any_of(parts: list[Predicate]) -> Predicate:
    def any_of(r: Record) -> bool:
        return any(p(r) for p in parts)

    return any_of


class Evaluator:
    """Compiles a bound WHERE clause into a predicate; ``now`` anchors TODAY, LAST_N_DAYS:n..."""

    def __init__(self, resolve: Resolver, now: dt.datetime) -> None:
        self.resolve = resolve
        self.now = now

    def compile(self, cond: Cond | None) -> Predicate:
        if cond is None:
            return _always
        if isinstance(cond, BoolOp):
            parts = [self.compile(c) for c in cond.items]
            return _all_of(parts) if cond.op == "and" else _any_of(parts)
        if isinstance(cond, Not):
            inner = self.compile(cond.item)
            return lambda r: not inner(r)
        f = cond.field.target
        assert f is not None
        value_of = comparable_getter(cond.field, self.resolve)
        if isinstance(cond, Compare) and _plain(cond.value):  # the hot case: no nested test call
            other, compare, is_ne = _literal(f, cond.value), _OPS[cond.op], cond.op == "!="

            def compare_plain(r: Record) -> bool:
                v = value_of(r)
                return is_ne if v is None else compare(v, other)

            return compare_plain
        if isinstance(cond, Compare):
            test = self._test(f, cond.op, cond.value)
            return lambda r: test(value_of(r))
        if isinstance(cond, InList):
            return self._in_list(f, cond, value_of)
        regex = _like_regex(str(cond.pattern.value))

        def like(r: Record) -> bool:
            v = value_of(r)
            return v is not None and regex.match(str(v)) is not None

        return like

    def _in_list(self, f: FieldDef, cond: InList, value_of: Getter) -> Predicate:
        """``=`` against each value, ORed: a set lookup for plain values, date ranges one by one."""
        keys = frozenset(_literal(f, v) for v in cond.values if _plain(v))
        ranges = [self._test(f, "=", v) for v in cond.values if v.kind == "daterange"]
        has_null, negate = any(v.kind == "null" for v in cond.values), cond.negate

        def member(r: Record) -> bool:
            v = value_of(r)
            if v is None:
                return has_null != negate
            return (v in keys or any(t(v) for t in ranges)) != negate

        return member

    def _test(self, f: FieldDef, op: str, lit: Literal) -> Callable[[Any], bool]:
        if lit.kind == "null":
            want_null = op == "="
            return lambda v: (v is None) == want_null
        if lit.kind == "daterange":
            return self._in_range(f, op, lit)
        other, compare, is_ne = _literal(f, lit), _OPS[op], op == "!="
        return lambda v: is_ne if v is None else compare(v, other)

    def _in_range(self, f: FieldDef, op: str, lit: Literal) -> Callable[[Any], bool]:
        name, n = lit.value
        start, end = date_range(name, n, self.now.astimezone(dt.UTC).date())
        is_datetime = f.type == "datetime"
        within: Callable[[dt.date], bool] = {
            "=": lambda d: start <= d <= end, "!=": lambda d: not start <= d <= end,
            "<": lambda d: d < start, "<=": lambda d: d <= end, ">": lambda d: d > end, ">=": lambda d: d >= start,
        }[op]
        is_ne = op == "!="
        return lambda v: is_ne if v is None else within(v.date() if is_datetime else v)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    """LIKE: ``%`` any run, ``_`` one char, ``\\%``/``\\_`` literal; case-insensitive."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def sort_records(records: list[Record], order: list[OrderItem], resolve: Resolver) -> list[Record]:
    """Stable multi-key sort; nulls first unless NULLS LAST (SOQL's default)."""
    out = list(records)
    for item in reversed(order):
        out.sort(key=_sort_part(item, resolve), reverse=item.desc)
    return out


def _sort_part(item: OrderItem, resolve: Resolver) -> Callable[[Record], tuple[int, Any]]:
    f = item.field.target
    assert f is not None
    null_rank = 0 if item.nulls_first != item.desc else 2
    # ids sort case-sensitively on the stored value; everything else on its comparable form
    get = raw_getter(item.field, resolve) if f.type == "id" else comparable_getter(item.field, resolve)

    def key(r: Record) -> tuple[int, Any]:
        v = get(r)
        return (null_rank, 0) if v is None else (1, v)

    return key
