"""Record collection filtering: the ``q`` parameter of ``GET /services/rest/record/v1/{type}`` (issue 20).

NetSuite's "Record Collection Filtering" (help center section_1545222128.html) documents the
grammar in prose and a table only, no machine-readable spec: conditions ``field OPERATOR value``
joined with ``AND`` / ``OR``, ``()`` for precedence, string values in double quotes, the operators
allowed per field type, and that filtering runs on the N/query module "which uses a different date
format" than the record API's ISO datetimes. What the emulator implements of it is what the
published connector ``airbyte-source-netsuite`` sends (``lastModifiedDate AFTER "m/d/Y" AND
lastModifiedDate BEFORE "m/d/Y"``): the date/time operators on the records' date fields, plus
``EMPTY``/``EMPTY_NOT``. Every other documented operator is refused as documented-but-not-
implemented, anything else as invalid, both ``INVALID_PARAMETER`` with ``o:errorQueryParam: q``
(the wording of the details is modelled).

Choices where the prose is silent, all [modelled, unverified against an account]:

* A date value is written in the account's date format preference; the emulated accounts have the
  default ``M/D/YYYY`` (US English). Any other form (ISO dates, datetimes) is refused.
* A bare date means midnight of that date in the account's time zone (UTC in the emulator), and the
  operators compare instants: ``AFTER d`` is later than that midnight, ``BEFORE d`` earlier, ``ON d``
  within that day, ``ON_OR_AFTER d`` from that midnight, ``ON_OR_BEFORE d`` up to the next one. This
  is the reading airbyte-source-netsuite's authors give in its ``constraints.py`` (``AFTER
  "03/15/2026"`` means 2026-03-15T07:00:00Z on a US Pacific account); NetSuite does not say it.
* ``AND`` binds tighter than ``OR``, as in SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from m3sh.sandbox.netsuite.errors import NetSuiteApiError

ACCOUNT_DATE_FORMAT = "M/D/YYYY"
_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_DATE_OPS = {"AFTER", "BEFORE", "ON", "ON_OR_AFTER", "ON_OR_BEFORE"}
_IMPLEMENTED_OPS = _DATE_OPS | {f"{op}_NOT" for op in _DATE_OPS} | {"EMPTY", "EMPTY_NOT"}
# The documented operators of the other field types (the page's table): refused by name.
_DOCUMENTED_OPS = {
    "IS", "IS_NOT", "ANY_OF", "ANY_OF_NOT", "BETWEEN", "BETWEEN_NOT", "EQUAL", "EQUAL_NOT", "GREATER",
    "GREATER_NOT", "GREATER_OR_EQUAL", "GREATER_OR_EQUAL_NOT", "LESS", "LESS_NOT", "LESS_OR_EQUAL",
    "LESS_OR_EQUAL_NOT", "WITHIN", "WITHIN_NOT", "CONTAIN", "CONTAIN_NOT", "START_WITH", "START_WITH_NOT",
    "END_WITH", "END_WITH_NOT",
}
# The date fields of each record type that ``q`` can filter by (``x-ns-filterable`` in the metadata).
_COMMON_DATES = ("createdDate", "lastModifiedDate")
DATE_FIELDS: dict[str, tuple[str, ...]] = {"customer": (*_COMMON_DATES, "dateCreated"), "subsidiary": (),
                                           "currency": ()}
TRANSACTION_DATES = (*_COMMON_DATES, "tranDate", "dueDate")
_TOKEN = re.compile(r'\s*(?:(?P<lp>\()|(?P<rp>\))|"(?P<str>[^"]*)"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))')

Predicate = Callable[[dict[str, Any]], bool]


def filterable(record_type: str, transaction_types: set[str]) -> tuple[str, ...]:
    if record_type in transaction_types:
        return TRANSACTION_DATES
    return DATE_FIELDS.get(record_type, _COMMON_DATES)


def _invalid(detail: str) -> NetSuiteApiError:
    return NetSuiteApiError(400, "INVALID_PARAMETER", f"Invalid query parameter value: q. {detail}", query_param="q")


def _tokens(q: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "bad":
            raise _invalid(f"Unexpected character '{m.group('bad')}' at position {m.start('bad')} (string values "
                           "are written in double quotes).")
        out.append((kind, m.group(kind)))
    return out


def _midnight(value: str, field: str) -> dt.datetime:
    m = _DATE.match(value)
    if m is None:
        raise _invalid(f"The value \"{value}\" of the condition on {field} is not a date in the account's date "
                       f"format ({ACCOUNT_DATE_FORMAT}).")
    month, day, year = (int(g) for g in m.groups())
    try:
        return dt.datetime(year, month, day, tzinfo=dt.UTC)
    except ValueError:
        raise _invalid(f"The value \"{value}\" of the condition on {field} is not a valid date.") from None


def _instant(raw: Any) -> dt.datetime | None:
    """A record's date or datetime field as an instant (a date-only field: its midnight, UTC)."""
    if not raw:
        return None
    text = str(raw)
    if len(text) == 10:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _condition(field: str, op: str, value: str | None) -> Predicate:
    if op in ("EMPTY", "EMPTY_NOT"):
        want_empty = op == "EMPTY"
        return lambda rec: (rec.get(field) in (None, "")) == want_empty
    assert value is not None
    negate = op.endswith("_NOT")
    base = op.removesuffix("_NOT")
    start = _midnight(value, field)
    end = start + dt.timedelta(days=1)
    tests: dict[str, Callable[[dt.datetime], bool]] = {
        "AFTER": lambda t: t > start, "BEFORE": lambda t: t < start, "ON": lambda t: start <= t < end,
        "ON_OR_AFTER": lambda t: t >= start, "ON_OR_BEFORE": lambda t: t < end}
    test = tests[base]

    def predicate(rec: dict[str, Any]) -> bool:
        t = _instant(rec.get(field))
        if t is None:  # an empty field matches neither a condition nor its negation (SQL's NULL)
            return False
        return test(t) != negate

    return predicate


class _Parser:
    def __init__(self, q: str, fields: tuple[str, ...]) -> None:
        self.toks = _tokens(q)
        self.pos = 0
        self.fields = fields

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _invalid("The filter ends unexpectedly.")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.disjunction()
        if self.peek() is not None:
            raise _invalid(f"Unexpected '{self.peek()[1]}' (expected AND, OR or the end of the filter).")  # type: ignore[index]
        return pred

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while (tok := self.peek()) is not None and tok == ("word", "OR"):
            self.pos += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda rec: any(p(rec) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.primary()]
        while (tok := self.peek()) is not None and tok == ("word", "AND"):
            self.pos += 1
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else (lambda rec: all(p(rec) for p in parts))

    def primary(self) -> Predicate:
        kind, text = self.take()
        if kind == "lp":
            inner = self.disjunction()
            if self.take()[0] != "rp":
                raise _invalid("A '(' is not closed.")
            return inner
        if kind != "word":
            raise _invalid(f"Expected a field name, found '{text}'.")
        field = text
        kind, op = self.take()
        if kind != "word":
            raise _invalid(f"Expected an operator after {field}, found '{op}'.")
        if op in _DOCUMENTED_OPS:
            raise _invalid(f"The operator {op} is documented by NetSuite but not implemented by the m3sh sandbox "
                           f"(it implements {', '.join(sorted(_IMPLEMENTED_OPS))}).")
        if op not in _IMPLEMENTED_OPS:
            raise _invalid(f"Unknown operator '{op}'.")
        if field not in self.fields:
            raise _invalid(f"The field '{field}' cannot be filtered in the m3sh sandbox (it filters by "
                           f"{', '.join(self.fields)}).")
        if op in ("EMPTY", "EMPTY_NOT"):
            return _condition(field, op, None)
        kind, value = self.take()
        if kind != "str":
            raise _invalid(f"The value of the condition on {field} must be a date in double quotes, found '{value}'.")
        return _condition(field, op, value)


def compile_filter(q: str, fields: tuple[str, ...]) -> Predicate:
    """The predicate of a ``q`` filter over records of a type whose filterable fields are ``fields``."""
    if not q.strip():
        raise _invalid("The filter is empty.")
    return _Parser(q, fields).parse()
