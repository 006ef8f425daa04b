"""A small SuiteQL engine: enough SQL for reconciliation queries against the emulator's records.

Supported: ``SELECT [DISTINCT] * | expr [[AS] alias], ... FROM table [alias] [WHERE cond]
[GROUP BY col, ...] [ORDER BY expr [ASC|DESC], ...]`` with ``AND``/``OR``/``NOT``/parentheses,
comparisons, ``IN``, ``LIKE``, ``BETWEEN``, ``IS [NOT] NULL``; functions ``COUNT(*)``,
``COUNT/SUM/MIN/MAX/AVG(col)``, ``TO_CHAR(date, 'YYYY-MM-DD')``, ``TO_DATE('...', 'YYYY-MM-DD')``
(``'YYYY-MM-DD HH24:MI:SS'`` keeps the time: Oracle's DATE has one), ``BUILTIN.DF(col)`` (display
value), ``BUILTIN.CF(status)`` (the criteria form ``CustInvc:B``). Anything else is a NetSuite-style
400, so a query that works here uses only SQL NetSuite also understands, and SQL NetSuite understands
but the engine does not (joins, subqueries, UNION, CASE, arithmetic, NVL/COALESCE and other functions,
HAVING, TOP, FETCH FIRST) is refused by name, never evaluated differently. NULLs follow SQL's
three-valued logic (``NOT (x = 'A')`` and ``x NOT IN (...)`` are not true for a NULL ``x``), and a
selected column that is neither grouped nor aggregated is refused (Oracle's "not a GROUP BY
expression"), not taken from an arbitrary row. SuiteQL is Oracle-based SQL (NetSuite help, "SuiteQL
Syntax and Examples"); the refusals' wording is modelled on NetSuite's ``INVALID_PARAMETER`` "Invalid
search query" error, the "not implemented by the m3sh sandbox" part is the emulator's.

Date-time columns (``lastmodifieddate``, ``createddate``) compare to the second, against a date as
its midnight (Oracle semantics); date columns (``trandate``, ``duedate``) compare as dates.

Output follows SuiteQL over REST: lower-case column keys, unaliased expressions named ``expr1``,
``expr2``..., every value a string, ``NULL`` columns omitted, booleans as ``'T'``/``'F'`` and
dates in the account's date preference (``M/D/YYYY``; use ``TO_CHAR`` for ISO dates).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m3sh.sandbox.netsuite.errors import NetSuiteApiError

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op><=|>=|<>|!=|=|<|>|\(|\)|,|\*|\.|-|\+|/|\|\|)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))"
)
_AGGREGATES = {"COUNT", "SUM", "MIN", "MAX", "AVG"}
_FUNCTIONS = _AGGREGATES | {"TO_CHAR", "TO_DATE", "BUILTIN.DF", "BUILTIN.CF", "UPPER", "LOWER"}
# SQL that SuiteQL accepts and this engine does not: named in the refusal instead of "unexpected".
_UNSUPPORTED_WORDS = {"JOIN", "INNER", "LEFT", "RIGHT", "FULL", "OUTER", "CROSS", "ON", "UNION", "MINUS",
                      "INTERSECT", "EXCEPT", "HAVING", "CASE", "WHEN", "THEN", "ELSE", "END", "FETCH", "TOP",
                      "OVER", "PARTITION", "EXISTS", "WITH", "ESCAPE", "NULLS", "OFFSET", "ROWS", "ONLY",
                      "CONNECT", "START", "PRIOR"}
_SANDBOX = "is not implemented by the m3sh sandbox"
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "BETWEEN", "ORDER",
             "BY", "GROUP", "ASC", "DESC", "AS", "DISTINCT"}


def _search_error(msg: str) -> NetSuiteApiError:
    return NetSuiteApiError(
        400, "INVALID_PARAMETER",
        f"Invalid search query. Detailed unprocessed description follows. Search error occurred: {msg}",
        query_param="q",
    )


@dataclass
class Table:
    """Rows of one SuiteQL table; ``display`` holds BUILTIN.DF values per row id and column."""

    columns: list[str]
    rows: list[dict[str, Any]]
    display: dict[int, dict[str, str]] = field(default_factory=dict)


Node = tuple[Any, ...]


class _Parser:
    def __init__(self, sql: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = sql.strip().rstrip(";")
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise _search_error(f"Unexpected character near '{text[pos:pos + 20]}'")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("eof", "")

    def kw(self, *words: str) -> bool:
        kind, val = self.peek()
        return kind == "ident" and val.upper() in words

    def take_kw(self, word: str) -> None:
        if not self.kw(word):
            raise self.unexpected(f"Expected {word} near '{self.peek()[1]}'")
        self.i += 1

    def op(self, sym: str) -> bool:
        return self.peek() == ("op", sym)

    def take_op(self, sym: str) -> None:
        if not self.op(sym):
            raise self.unexpected(f"Expected '{sym}' near '{self.peek()[1]}'")
        self.i += 1

    def ident(self) -> str:
        kind, val = self.peek()
        if kind == "ident" and val.upper() == "SELECT":
            raise _search_error(f"Subqueries are not implemented by the m3sh sandbox (near '{val}')")
        if kind != "ident" or val.upper() in _KEYWORDS or val.upper() in _UNSUPPORTED_WORDS:
            raise self.unexpected(f"Expected a name near '{val}'")
        self.i += 1
        return val.lower()

    def unexpected(self, fallback: str) -> NetSuiteApiError:
        """The refusal for the current token: SQL the engine lacks is named, anything else is
        ``fallback``."""
        kind, val = self.peek()
        if kind == "ident" and val.upper() in _UNSUPPORTED_WORDS:
            return _search_error(f"{val.upper()} {_SANDBOX} (SuiteQL supports it; the sandbox's engine "
                                 "does not)")
        if kind == "op" and val in ("+", "-", "*", "/", "||"):
            return _search_error(f"The operator '{val}' {_SANDBOX}")
        if (kind, val) == ("op", "("):
            return _search_error(f"A subquery or parenthesised expression here {_SANDBOX}")
        return _search_error(fallback)

    def plain_ident(self) -> bool:
        """The current token can be an alias: a name, not a keyword or unsupported SQL word."""
        kind, val = self.peek()
        return kind == "ident" and val.upper() not in _KEYWORDS and val.upper() not in _UNSUPPORTED_WORDS

    # -- grammar ------------------------------------------------------------------------------
    def query(self) -> dict[str, Any]:
        self.take_kw("SELECT")
        distinct = False
        if self.kw("DISTINCT"):
            self.i += 1
            distinct = True
        select: list[tuple[Node, str | None]] | None
        if self.op("*"):
            self.i += 1
            select = None
        else:
            select = [self.select_item()]
            while self.op(","):
                self.i += 1
                select.append(self.select_item())
        self.take_kw("FROM")
        table = self.ident()
        alias = None
        if self.plain_ident():
            alias = self.ident()
        where = None
        if self.kw("WHERE"):
            self.i += 1
            where = self.expr()
        group: list[Node] = []
        if self.kw("GROUP"):
            self.i += 1
            self.take_kw("BY")
            group = [self.value()]
            while self.op(","):
                self.i += 1
                group.append(self.value())
        order: list[tuple[Node, bool]] = []
        if self.kw("ORDER"):
            self.i += 1
            self.take_kw("BY")
            order = [self.order_item()]
            while self.op(","):
                self.i += 1
                order.append(self.order_item())
        if self.peek()[0] != "eof":
            raise self.unexpected(f"Unexpected '{self.peek()[1]}'")
        return {"select": select, "table": table, "alias": alias, "where": where, "group": group,
                "order": order, "distinct": distinct}

    def select_item(self) -> tuple[Node, str | None]:
        node = self.value()
        alias = None
        if self.kw("AS"):
            self.i += 1
            alias = self.ident()
        elif self.plain_ident():
            alias = self.ident()
        return node, alias

    def order_item(self) -> tuple[Node, bool]:
        node = self.value()
        desc = False
        if self.kw("ASC", "DESC"):
            desc = self.peek()[1].upper() == "DESC"
            self.i += 1
        return node, desc

    def expr(self) -> Node:
        node = self.and_expr()
        while self.kw("OR"):
            self.i += 1
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.kw("AND"):
            self.i += 1
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.kw("NOT"):
            self.i += 1
            return ("not", self.not_expr())
        if self.op("("):
            self.i += 1
            node = self.expr()
            self.take_op(")")
            return node
        return self.predicate()

    def predicate(self) -> Node:
        left = self.value()
        negate = False
        if self.kw("NOT"):
            self.i += 1
            negate = True
        if self.kw("IN"):
            self.i += 1
            self.take_op("(")
            items = [self.value()]
            while self.op(","):
                self.i += 1
                items.append(self.value())
            self.take_op(")")
            node: Node = ("in", left, items)
        elif self.kw("LIKE"):
            self.i += 1
            node = ("like", left, self.value())
        elif self.kw("BETWEEN"):
            self.i += 1
            low = self.value()
            self.take_kw("AND")
            node = ("between", left, low, self.value())
        elif self.kw("IS"):
            self.i += 1
            if self.kw("NOT"):
                self.i += 1
                negate = not negate
            self.take_kw("NULL")
            node = ("isnull", left)
        else:
            kind, sym = self.peek()
            if kind != "op" or sym not in ("=", "!=", "<>", "<", "<=", ">", ">="):
                raise self.unexpected(f"Expected a comparison near '{sym}'")
            self.i += 1
            node = ("cmp", sym, left, self.value())
        return ("not", node) if negate else node

    def value(self) -> Node:
        kind, val = self.peek()
        if kind == "num":
            self.i += 1
            return ("lit", float(val) if "." in val else int(val))
        if self.op("-") and self.peek(1)[0] == "num":
            self.i += 2
            num = self.tokens[self.i - 1][1]
            return ("lit", -(float(num) if "." in num else int(num)))
        if kind == "str":
            self.i += 1
            return ("lit", val[1:-1].replace("''", "'"))
        if kind == "ident" and val.upper() == "NULL":
            self.i += 1
            return ("lit", None)
        if self.op("("):
            raise _search_error(f"Parenthesised expressions and subqueries in a value {_SANDBOX}")
        name = self.ident()
        if self.op(".") and self.peek(1)[0] == "ident":
            self.i += 1
            second = self.ident()
            if name == "builtin" and self.op("("):
                return self.call(f"builtin.{second}")
            return ("col", second, name)
        if self.op("("):
            return self.call(name)
        return ("col", name, None)

    def call(self, name: str) -> Node:
        if name.upper() not in _FUNCTIONS:
            # NVL, COALESCE, ROUND, SUBSTR, BUILTIN.CONSOLIDATE...: real SuiteQL, absent here. Refused
            # at parse time, so an empty table or a short-circuited AND cannot hide it.
            raise _search_error(f"The function {name.upper()} {_SANDBOX}")
        self.take_op("(")
        args: list[Node] = []
        if self.op("*"):
            self.i += 1
            args.append(("star",))
        elif not self.op(")"):
            args.append(self.value())
            while self.op(","):
                self.i += 1
                args.append(self.value())
        self.take_op(")")
        return ("func", name.upper(), args)


def _grouped(node: Node, group: list[Node]) -> bool:
    """Whether a select item is legal in an aggregate query: an aggregate, a literal, a GROUP BY
    expression, or a function of those."""
    if node[0] == "lit" or node in group or (node[0] == "func" and node[1] in _AGGREGATES):
        return True
    if node[0] == "col":
        return any(g[0] == "col" and g[1] == node[1] for g in group)
    return node[0] == "func" and all(_grouped(a, group) for a in node[2])


def _shown(node: Node) -> str:
    if node[0] == "col":
        return f"{node[2]}.{node[1]}" if node[2] else node[1]
    if node[0] == "func":
        return f"{node[1]}(...)"
    return str(node[1]) if len(node) > 1 else node[0]


def _has_aggregate(node: Node) -> bool:
    if node[0] == "func":
        return node[1] in _AGGREGATES or any(_has_aggregate(a) for a in node[2])
    return False


def _to_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _to_datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    text = str(value).strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d", "%m/%d/%Y"):
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _coerce(a: Any, b: Any) -> tuple[Any, Any]:
    """Oracle-like implicit conversion: numbers and dates win over strings."""
    if isinstance(a, bool) or isinstance(b, bool):
        a = ("T" if a else "F") if isinstance(a, bool) else a
        b = ("T" if b else "F") if isinstance(b, bool) else b
        return a, b
    if isinstance(a, dt.datetime) or isinstance(b, dt.datetime):
        ta, tb = _to_datetime(a), _to_datetime(b)
        if ta is None or tb is None:
            raise _search_error(f"Cannot compare date with '{b if ta else a}'")
        return ta, tb
    if isinstance(a, dt.date) or isinstance(b, dt.date):
        da, db = _to_date(a), _to_date(b)
        if da is None or db is None:
            raise _search_error(f"Cannot compare date with '{b if da else a}'")
        return da, db
    if isinstance(a, int | float) or isinstance(b, int | float):
        try:
            return float(a), float(b)
        except (TypeError, ValueError):
            return str(a), str(b)
    return a, b


def _like(value: str, pattern: str) -> bool:
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


_DATE_FMT = [("YYYY", "%Y"), ("MM", "%m"), ("DD", "%d"), ("HH24", "%H"), ("MI", "%M"), ("SS", "%S")]


def _oracle_format(fmt: str) -> str:
    for ora, py in _DATE_FMT:
        fmt = fmt.replace(ora, py)
    return fmt


class _Evaluator:
    def __init__(self, table_name: str, table: Table, alias: str | None) -> None:
        self.table_name = table_name
        self.table = table
        self.alias = alias

    def column(self, name: str, prefix: str | None) -> str:
        if prefix is not None and prefix not in (self.alias, self.table_name):
            raise _search_error(f"Unknown table alias '{prefix}'")
        if name not in self.table.columns:
            raise _search_error(f"Field '{name}' for record '{self.table_name}' was not found.")
        return name

    def check(self, node: Node) -> None:
        """Validate column names up front so an empty table still reports unknown fields."""
        if node[0] == "col":
            self.column(node[1], node[2])
        elif node[0] == "func":
            for a in node[2]:
                self.check(a)
        elif node[0] in ("and", "or"):
            self.check(node[1])
            self.check(node[2])
        elif node[0] in ("not", "isnull"):
            self.check(node[1])
        elif node[0] == "cmp":
            self.check(node[2])
            self.check(node[3])
        elif node[0] == "in":
            self.check(node[1])
            for a in node[2]:
                self.check(a)
        elif node[0] in ("like", "between"):
            for a in node[1:]:
                self.check(a)

    def value(self, node: Node, row: dict[str, Any], group: list[dict[str, Any]] | None = None) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "col":
            return row.get(self.column(node[1], node[2]))
        if kind != "func":
            raise _search_error("Unsupported expression")
        name, args = node[1], node[2]
        if name in _AGGREGATES:
            rows = group if group is not None else [row]
            if args and args[0][0] == "star":
                return len(rows) if name == "COUNT" else _raise(f"{name}(*) is not valid")
            if len(args) != 1:
                raise _search_error(f"{name} takes one argument")
            vals = [v for v in (self.value(args[0], r) for r in rows) if v is not None]
            if name == "COUNT":
                return len(vals)
            if not vals:
                return None
            if name == "SUM":
                return round(sum(float(v) for v in vals), 6)
            if name == "AVG":
                return round(sum(float(v) for v in vals) / len(vals), 6)
            return min(vals) if name == "MIN" else max(vals)
        evaluated = [self.value(a, row, group) for a in args]
        if name == "TO_CHAR":
            if not evaluated:
                raise _search_error("TO_CHAR needs an argument")
            v = evaluated[0]
            if v is None:
                return None
            if isinstance(v, dt.date) and len(evaluated) > 1:
                return v.strftime(_oracle_format(str(evaluated[1])))
            return _render(v)
        if name == "TO_DATE":
            if not evaluated or evaluated[0] is None:
                return None
            fmt = _oracle_format(str(evaluated[1])) if len(evaluated) > 1 else "%Y-%m-%d"
            try:
                parsed = dt.datetime.strptime(str(evaluated[0]), fmt)
                return parsed if any(t in fmt for t in ("%H", "%M", "%S")) else parsed.date()
            except ValueError:
                raise _search_error(f"Invalid date '{evaluated[0]}' for format '{evaluated[1]}'") from None
        if name == "BUILTIN.DF":
            if len(args) != 1 or args[0][0] != "col":
                raise _search_error("BUILTIN.DF takes one column")
            col = self.column(args[0][1], args[0][2])
            shown = self.table.display.get(id(row), {}).get(col)
            return shown if shown is not None else row.get(col)
        if name == "BUILTIN.CF":
            if len(args) != 1 or args[0][0] != "col":
                raise _search_error("BUILTIN.CF takes one column")
            col = self.column(args[0][1], args[0][2])
            value = row.get(col)
            # A transaction's status in criteria form is "<type>:<letter>" (CustInvc:B).
            if col == "status" and value is not None and row.get("type"):
                return f"{row['type']}:{value}"
            return value
        if name in ("UPPER", "LOWER"):
            v = evaluated[0] if evaluated else None
            return None if v is None else (str(v).upper() if name == "UPPER" else str(v).lower())
        raise _search_error(f"Unknown function {name}")

    def truth(self, node: Node, row: dict[str, Any]) -> bool | None:
        """SQL's three-valued logic: None is UNKNOWN (a comparison with NULL), and only True keeps a
        row, so ``NOT (x = 'A')`` drops a row whose ``x`` is NULL, as Oracle does."""
        kind = node[0]
        if kind == "cmp":  # the hot case first
            a = self.value(node[2], row)
            if a is None:
                return None
            b = self.value(node[3], row)
            return None if b is None else _compare(node[1], a, b)
        if kind in ("and", "or"):
            decisive = kind == "or"  # True decides OR, False decides AND
            left = self.truth(node[1], row)
            if left is decisive:  # short-circuit: functions are checked at parse time, nothing is hidden
                return decisive
            right = self.truth(node[2], row)
            if right is decisive:
                return decisive
            return None if left is None or right is None else not decisive
        if kind == "in":
            left = self.value(node[1], row)
            if left is None:
                return None
            saw_null = False
            for item in node[2]:
                value = self.value(item, row)
                if value is None:
                    saw_null = True
                elif _compare("=", left, value):
                    return True
            return None if saw_null else False
        if kind == "not":
            inner = self.truth(node[1], row)
            return None if inner is None else not inner
        if kind == "isnull":
            return self.value(node[1], row) is None
        if kind == "like":
            left, pattern = self.value(node[1], row), self.value(node[2], row)
            if left is None or pattern is None:
                return None
            return _like(_render(left), str(pattern))
        if kind == "between":
            v, low, high = (self.value(n, row) for n in node[1:])
            if v is None or low is None or high is None:
                return None
            return _compare(">=", v, low) and _compare("<=", v, high)
        raise _search_error("Unsupported condition")


def _raise(msg: str) -> Any:
    raise _search_error(msg)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    a, b = _coerce(a, b)
    try:
        return _OPS[op](a, b)
    except TypeError:
        return _OPS[op](str(a), str(b))


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, dt.datetime):
        return f"{value.month}/{value.day}/{value.year}"
    if isinstance(value, dt.date):
        return f"{value.month}/{value.day}/{value.year}"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    """NULLs last (Oracle ascending default); numbers, dates and strings each order naturally."""
    if value is None:
        return (3, "")
    if isinstance(value, bool):
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, dt.date):
        return (1, value.toordinal())
    return (2, str(value))


def execute(sql: str, tables: dict[str, Table]) -> list[dict[str, str]]:
    """Run ``sql`` and return all result rows in SuiteQL's output form (paging is the caller's)."""
    if not sql or not sql.strip():
        raise _search_error("The query is empty.")
    if not sql.strip().upper().startswith("SELECT"):
        raise _search_error("Only SELECT queries are supported.")
    q = _Parser(sql).query()
    table = tables.get(q["table"])
    if table is None:
        raise _search_error(f"Record '{q['table']}' was not found.")
    ev = _Evaluator(q["table"], table, q["alias"])
    select: list[tuple[Node, str | None]] = q["select"] or [(("col", c, None), None) for c in table.columns]
    for node, _ in select:
        ev.check(node)
    for node in q["group"]:
        ev.check(node)
    if q["where"] is not None:
        ev.check(q["where"])

    rows = [r for r in table.rows if q["where"] is None or ev.truth(q["where"], r) is True]
    names: list[str] = []
    n_expr = 0
    for node, alias in select:
        if alias:
            names.append(alias)
        elif node[0] == "col":
            names.append(node[1])
        else:
            n_expr += 1
            names.append(f"expr{n_expr}")

    aggregate = bool(q["group"]) or any(_has_aggregate(n) for n, _ in select)
    if aggregate:
        for node, _ in select:
            if not _grouped(node, q["group"]):
                raise _search_error(f"not a GROUP BY expression: {_shown(node)} is neither grouped nor aggregated")
    out: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]] | None]] = []
    if aggregate:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in rows:
            gkey = tuple(_sort_key(ev.value(g, r)) for g in q["group"])
            groups.setdefault(gkey, []).append(r)
        if not q["group"] and not groups:
            groups[()] = []
        for members in groups.values():
            first = members[0] if members else {}
            vals = {name: ev.value(node, first, members)
                    for (node, _), name in zip(select, names, strict=True)}
            out.append((vals, first, members))
    else:
        for r in rows:
            vals = {name: ev.value(node, r) for (node, _), name in zip(select, names, strict=True)}
            out.append((vals, r, None))

    if aggregate:
        for node, _ in q["order"]:
            positional = node[0] == "lit" and isinstance(node[1], int)
            if not (positional or _grouped(node, q["group"]) or (node[0] == "col" and node[1] in names)):
                raise _search_error(f"not a GROUP BY expression: ORDER BY {_shown(node)} is neither grouped nor "
                                    "aggregated")
    if q["order"]:
        for node, desc in reversed(q["order"]):
            def key(item: tuple[dict[str, Any], dict[str, Any], Any], node: Node = node) -> tuple[int, Any]:
                vals, src, members = item
                if node[0] == "lit" and isinstance(node[1], int) and 1 <= node[1] <= len(names):
                    return _sort_key(vals[names[node[1] - 1]])
                if node[0] == "col" and node[1] in vals and node[1] not in table.columns:
                    return _sort_key(vals[node[1]])
                return _sort_key(ev.value(node, src, members))
            out.sort(key=key, reverse=desc)

    result: list[dict[str, str]] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for vals, _, _ in out:
        rendered = {k: _render(v) for k, v in vals.items() if v is not None}
        if q["distinct"]:
            sig = tuple(sorted(rendered.items()))
            if sig in seen:
                continue
            seen.add(sig)
        result.append(rendered)
    return result
