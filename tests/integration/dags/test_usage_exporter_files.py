"""Usage files as spreadsheets and BI tools export them, through whole ``m3sh_usage_ingest`` runs.

Excel's "CSV UTF-8" (a byte-order mark, CRLF), its "Unicode text" (UTF-16 with a BOM, tab-separated),
a ``;``-separated export, JSONL with a BOM, gzipped BOM CSV, empty and header-only files, epoch
second and millisecond timestamps: each lands in m3ter exactly once, read back through m3ter's usage
query (per account and hour); invalid rows are read back from the dead letters in S3. A file whose
header does not fit the feed's delimiter fails alone, by name, and lands once it is fixed.

One module-scoped run covers the files that must succeed (the sandbox state each test needs is
read back right after it, so a test resetting the sandbox cannot disturb the others).
"""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.aws_seed import s3_client

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-usage"
ROOT = "usage/exporters/"
COMMA, SEMI, UNICODE, EPOCH_S, EPOCH_MS = (f"{ROOT}{p}/" for p in ("comma", "semicolon", "unicode", "epoch_s",
                                                                   "epoch_ms"))
FEEDS = ["platform_files", "excel_semicolon", "excel_unicode", "epoch_s_files", "epoch_ms_files"]
MEASUREMENT_POSTS = "POST /organizations/{id}/measurements"


def _feed(name: str, prefix: str, extra: str = "", meter_extra: str = "") -> str:
    return (f"    - name: {name}\n      type: s3\n      conn_id: aws_default\n      bucket: {BUCKET}\n"
            f"      prefix: {prefix}\n{extra}      meters:\n        - code: api_calls\n"
            f"          measures: {{quantity: quantity}}\n{meter_extra}")


EXTRA_FEEDS = (_feed("excel_semicolon", SEMI, '      delimiter: ";"\n')
               + _feed("excel_unicode", UNICODE, "      delimiter: tab\n")
               + _feed("epoch_s_files", EPOCH_S, "", "          timestamp_format: epoch_s\n")
               + _feed("epoch_ms_files", EPOCH_MS, "", "          timestamp_format: epoch_ms\n"))
FAST_RETRIES = "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 1}\n"


def config_text() -> str:
    from m3sh.config import DEFAULT_CONFIG_PATH

    text = DEFAULT_CONFIG_PATH.read_text()
    for old, new in {"prefix: usage/\n": f"prefix: {COMMA}\n",
                     "    - name: platform_api": EXTRA_FEEDS + "    - name: platform_api"}.items():
        assert old in text, f"demo config has no {old!r}"
        text = text.replace(old, new)
    return text + FAST_RETRIES


# ------------------------------------------------------------------------------------------ files
HOUR = dt.timedelta(hours=1)


def _now_hour() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: list[str], rows: list[list[Any]], delimiter: str = ",", newline: str = "\r\n") -> str:
    return "".join(delimiter.join(str(v) for v in r) + newline for r in [header, *rows])


def _excel_csv(header: list[str], rows: list[list[Any]], delimiter: str = ",") -> bytes:
    """Excel's "CSV UTF-8": a UTF-8 byte-order mark and CRLF line ends."""
    return codecs.BOM_UTF8 + _table(header, rows, delimiter).encode()


HEADER = ["event_id", "account", "meter", "ts", "quantity"]
ACCOUNT_FIRST = ["account", "event_id", "meter", "ts", "quantity"]  # a BOM glued to it: every row dead


def _account_first(rows: list[list[Any]]) -> list[list[Any]]:
    return [[r[1], r[0], *r[2:]] for r in rows]


def _rows(prefix: str, account: str, quantities: list[int], base: dt.datetime) -> list[list[Any]]:
    return [[f"{prefix}{i}", account, "api_calls", _iso(base - (i % 3 + 1) * HOUR), q]
            for i, q in enumerate(quantities, start=1)]


def build_files(accounts: list[str]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The exporter files, by key, and what m3ter must hold afterwards."""
    now = _now_hour()
    a = dict(zip(["bom", "bom_account_first", "jsonl_bom", "crlf", "gz_bom", "semicolon", "unicode", "epoch_s",
                  "epoch_ms"], accounts, strict=False))
    files: dict[str, bytes] = {}
    # Excel "CSV UTF-8", then the same events x4..x6 again in a later export: the id column must be
    # found in both (with the BOM glued to it, every row would fall back to a per-file uid: 12 rows).
    q = {f"x{i}": i for i in range(1, 10)}
    first = [[f"x{i}", a["bom"], "api_calls", _iso(now - HOUR), q[f"x{i}"]] for i in range(1, 7)]
    again = [[f"x{i}", a["bom"], "api_calls", _iso(now - HOUR), q[f"x{i}"]] for i in range(4, 10)]
    files[COMMA + "excel_bom.csv"] = _excel_csv(HEADER, first)
    files[COMMA + "excel_bom_reexport.csv"] = _excel_csv(HEADER, again)
    # The account as the first column: with the BOM glued to it every row used to be dead-lettered.
    files[COMMA + "excel_account_first.csv"] = _excel_csv(
        ACCOUNT_FIRST, [[a["bom_account_first"], f"af{i}", "api_calls", _iso(now - 2 * HOUR), 10] for i in range(4)])
    # JSONL with a BOM: the first row used to be dead-lettered as invalid JSON.
    jl = [{"event_id": f"j{i}", "account": a["jsonl_bom"], "meter": "api_calls", "ts": _iso(now - HOUR),
           "quantity": 100 + i} for i in range(3)]
    files[COMMA + "bom.jsonl"] = codecs.BOM_UTF8 + "".join(json.dumps(r) + "\n" for r in jl).encode()
    # CRLF without a BOM, CSV and JSONL.
    files[COMMA + "crlf.csv"] = _table(HEADER, _rows("c", a["crlf"], [1, 2, 3], now)).encode()
    crlf_jl = [{"event_id": f"cj{i}", "account": a["crlf"], "meter": "api_calls", "ts": _iso(now - HOUR),
                "quantity": 5} for i in range(2)]
    files[COMMA + "crlf.jsonl"] = "".join(json.dumps(r) + "\r\n" for r in crlf_jl).encode()
    # A gzipped Excel CSV: the BOM is inside the compressed stream.
    files[COMMA + "excel_bom.csv.gz"] = gzip.compress(
        _excel_csv(ACCOUNT_FIRST, _account_first(_rows("g", a["gz_bom"], [7] * 5, now))))
    # A quiet hour: a zero-byte export and a header-only one (as Excel saves an empty sheet).
    files[COMMA + "quiet_hour.csv"] = b""
    files[COMMA + "quiet_hour.jsonl"] = b""
    files[COMMA + "header_only.csv"] = _excel_csv(HEADER, [])
    # A ';'-separated export (the default in locales with a decimal comma).
    files[SEMI + "excel_de.csv"] = _excel_csv(ACCOUNT_FIRST, _account_first(_rows("s", a["semicolon"], [2] * 4, now)),
                                              ";")
    # Excel "Unicode text": UTF-16 little-endian with a BOM, tab-separated, CRLF.
    unicode_rows = [[f"u{i}", a["unicode"], "api_calls", _iso(now - HOUR), 3, "São Paulo"] for i in range(4)]
    files[UNICODE + "excel_unicode.txt"] = codecs.BOM_UTF16_LE + _table([*HEADER, "region"], unicode_rows,
                                                                         "\t").encode("utf-16-le")
    # Epoch seconds (integers and a decimal) and milliseconds (JSON numbers and a string); one row of
    # each in the other unit, and a non-number, go to the dead letters.
    s_hours = [now - 2 * HOUR, now - 5 * HOUR, now - 7 * HOUR]
    s_rows = [[f"es{i}", a["epoch_s"], "api_calls", int(t.timestamp()) + 61, 1] for i, t in enumerate(s_hours[:2])]
    s_rows.append(["es2", a["epoch_s"], "api_calls", f"{int(s_hours[2].timestamp()) + 1799}.999", 1])
    s_rows += [["es-ms", a["epoch_s"], "api_calls", int(s_hours[0].timestamp()) * 1000, 1],  # line 5
               ["es-iso", a["epoch_s"], "api_calls", _iso(s_hours[0]), 1]]  # line 6
    files[EPOCH_S + "epoch_s.csv"] = _table(HEADER, s_rows, newline="\n").encode()
    ms_hours = [now - HOUR, now - 3 * HOUR, now - 3 * HOUR]
    ms = [{"event_id": f"ems{i}", "account": a["epoch_ms"], "meter": "api_calls",
           "ts": int(t.timestamp() * 1000) + 59_999, "quantity": 4} for i, t in enumerate(ms_hours)]
    ms[2]["ts"] = str(ms[2]["ts"])  # a string is fine too
    ms.append({"event_id": "ems-s", "account": a["epoch_ms"], "meter": "api_calls",
               "ts": int(ms_hours[0].timestamp()), "quantity": 4})  # line 4: seconds in an epoch_ms meter
    files[EPOCH_MS + "epoch_ms.jsonl"] = "".join(json.dumps(r) + "\n" for r in ms).encode()

    def hours(ts: list[dt.datetime]) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in ts:
            out[_iso(t)] = out.get(_iso(t), 0) + 1
        return out

    expected = {
        "accounts": a,
        "totals": {a["bom"]: (9, float(sum(q.values()))), a["bom_account_first"]: (4, 40.0),
                   a["jsonl_bom"]: (3, 303.0), a["crlf"]: (5, 16.0), a["gz_bom"]: (5, 35.0),
                   a["semicolon"]: (4, 8.0), a["unicode"]: (4, 12.0), a["epoch_s"]: (3, 3.0),
                   a["epoch_ms"]: (3, 12.0)},
        "hours": {a["epoch_s"]: hours(s_hours), a["epoch_ms"]: hours(ms_hours)},
    }
    return files, expected


# ---------------------------------------------------------------------------------- read-backs
def usage_by_account_hour(hook: Any) -> dict[str, dict[str, tuple[int, float]]]:
    """m3ter's usage query for api_calls: account -> hour -> (count, sum of quantity)."""
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}, {"groupType": "TIME", "frequency": "HOUR"}],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                              "function": f} for f in ("SUM", "COUNT")]}
    out: dict[str, dict[str, tuple[int, float]]] = {}
    for r in hook.query_usage(body)["data"]:
        out.setdefault(r["accountCode"], {})[r["timeGroup"]] = (int(r["quantity_count"]), float(r["quantity_sum"]))
    return out


def totals(usage: dict[str, dict[str, tuple[int, float]]]) -> dict[str, tuple[int, float]]:
    return {acc: (sum(c for c, _ in hrs.values()), sum(s for _, s in hrs.values())) for acc, hrs in usage.items()}


def dead_letters(s3: Any) -> list[dict[str, Any]]:
    out = []
    for obj in s3.list_objects_v2(Bucket="m3sh-archive", Prefix="m3sh/dead-letter/usage/").get("Contents", []):
        body = s3.get_object(Bucket="m3sh-archive", Key=obj["Key"])["Body"].read().decode()
        out += [json.loads(line) for line in body.splitlines() if line.strip()]
    return out


def manifest(s3: Any, feed: str, key: str) -> dict[str, Any] | None:
    from m3sh.config import get_config
    from m3sh.storage import Storage
    from m3sh.usage.ingest import manifest_key

    state = Storage.from_config(get_config().storage)
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    return state.get_json(manifest_key(state, feed, key, etag))  # type: ignore[no-any-return]


def run_ingest(mp: pytest.MonkeyPatch, feeds: list[str]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """A whole DAG run; also returns each file's result as the ingest task produced it, by key."""
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag
    from m3sh.usage import ingest

    real = ingest.ingest_s3_object
    results: dict[str, dict[str, Any]] = {}

    def recording(**kwargs: Any) -> Any:
        result = real(**kwargs)
        results[result.key] = result.to_dict()
        return result

    mp.setattr(ingest, "ingest_s3_object", recording)
    try:
        run = build_usage_ingest_dag().test(run_conf={"feeds": feeds, "scan_all": True})
    finally:
        mp.setattr(ingest, "ingest_s3_object", real)
    return run, results


# ------------------------------------------------------------------------------ the shared run
@pytest.fixture(scope="module")
def exported(sandbox: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from m3sh.hooks.m3ter import M3terHook

    sandbox.reset("demo")
    path = tmp_path_factory.mktemp("exporters") / "m3sh.yaml"
    path.write_text(config_text())
    mp = pytest.MonkeyPatch()
    mp.setenv("M3SH_CONFIG", str(path))
    try:
        hook = M3terHook()
        accounts = sorted(a["code"] for a in hook.list_accounts())[:9]
        files, expected = build_files(accounts)
        s3 = s3_client(sandbox.url("moto"))
        for key, body in files.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        run, results = run_ingest(mp, FEEDS)
        feed_of = {COMMA: "platform_files", SEMI: "excel_semicolon", UNICODE: "excel_unicode",
                   EPOCH_S: "epoch_s_files", EPOCH_MS: "epoch_ms_files"}
        snapshot: dict[str, Any] = {
            "expected": expected, "files": files, "state": run.state, "results": results,
            "usage": usage_by_account_hour(hook), "dead": dead_letters(s3),
            "manifests": {k: manifest(s3, feed_of[k.rsplit("/", 1)[0] + "/"], k) for k in files},
        }
        # A re-run finds every file's manifest (the empty ones' too) and sends nothing.
        posts = sandbox.stats("m3ter")["counts"].get(MEASUREMENT_POSTS, 0)
        rerun, rerun_results = run_ingest(mp, FEEDS)
        snapshot |= {"rerun_state": rerun.state, "rerun_results": rerun_results,
                     "rerun_posts": sandbox.stats("m3ter")["counts"].get(MEASUREMENT_POSTS, 0) - posts,
                     "rerun_usage": usage_by_account_hour(hook)}
        yield snapshot
    finally:
        mp.undo()


def _account(exported: dict[str, Any], case: str) -> str:
    return exported["expected"]["accounts"][case]  # type: ignore[no-any-return]


def _assert_landed(exported: dict[str, Any], case: str) -> None:
    acc = _account(exported, case)
    assert totals(exported["usage"]).get(acc) == exported["expected"]["totals"][acc], case


def test_the_run_succeeds_and_every_file_is_complete(exported: dict[str, Any]) -> None:
    assert exported["state"] == "success"
    assert set(exported["results"]) == set(exported["files"])
    assert {k: r["status"] for k, r in exported["results"].items()} == dict.fromkeys(exported["files"], "complete")
    # only the epoch files hold invalid rows; nothing else was dead-lettered
    assert {d["file"].rsplit("/", 1)[1] for d in exported["dead"]} == {"epoch_s.csv", "epoch_ms.jsonl"}
    # every account holds exactly what its files carry, nothing more
    assert totals(exported["usage"]) == exported["expected"]["totals"]


def test_excel_csv_utf8_with_bom_finds_the_id_column_so_a_reexport_is_not_double_counted(
        exported: dict[str, Any]) -> None:
    _assert_landed(exported, "bom")  # 9 distinct events over two files sharing three, not 12
    first = exported["results"][COMMA + "excel_bom.csv"]
    again = exported["results"][COMMA + "excel_bom_reexport.csv"]
    assert (first["accepted"], again["accepted"], first["rejected"], again["rejected"]) == (6, 6, 0, 0)


def test_excel_csv_utf8_with_bom_and_the_account_first(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "bom_account_first")
    assert exported["results"][COMMA + "excel_account_first.csv"]["rejected"] == 0


def test_jsonl_with_bom_keeps_its_first_row(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "jsonl_bom")
    result = exported["results"][COMMA + "bom.jsonl"]
    assert (result["rows_read"], result["accepted"], result["rejected"]) == (3, 3, 0)


def test_crlf_csv_and_jsonl(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "crlf")
    for name, n in (("crlf.csv", 3), ("crlf.jsonl", 2)):
        assert exported["results"][COMMA + name]["accepted"] == n


def test_gzipped_csv_with_bom(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "gz_bom")
    assert exported["results"][COMMA + "excel_bom.csv.gz"]["accepted"] == 5


def test_semicolon_delimiter_configured(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "semicolon")
    assert exported["results"][SEMI + "excel_de.csv"]["accepted"] == 4


def test_utf16_tab_separated_excel_unicode_text(exported: dict[str, Any]) -> None:
    _assert_landed(exported, "unicode")
    assert exported["results"][UNICODE + "excel_unicode.txt"]["accepted"] == 4


@pytest.mark.parametrize("name", ["quiet_hour.csv", "quiet_hour.jsonl", "header_only.csv"])
def test_zero_byte_and_header_only_files_are_no_rows_with_a_manifest(exported: dict[str, Any], name: str) -> None:
    key = COMMA + name
    result = exported["results"][key]
    assert (result["status"], result["rows_read"], result["error"]) == ("complete", 0, None)
    m = exported["manifests"][key]
    assert m is not None and (m["status"], m["rows_read"], m["key"]) == ("complete", 0, key)
    assert exported["rerun_results"][key]["status"] == "skipped"  # the re-run skips it by its manifest


def test_a_rerun_skips_every_file_and_sends_nothing(exported: dict[str, Any]) -> None:
    assert exported["rerun_state"] == "success"
    assert {r["status"] for r in exported["rerun_results"].values()} == {"skipped"}
    assert exported["rerun_posts"] == 0
    assert exported["rerun_usage"] == exported["usage"]


@pytest.mark.parametrize("case", ["epoch_s", "epoch_ms"])
def test_epoch_timestamps_land_in_their_hours(exported: dict[str, Any], case: str) -> None:
    acc = _account(exported, case)
    _assert_landed(exported, case)
    got = {hour: count for hour, (count, _) in exported["usage"][acc].items()}
    assert got == exported["expected"]["hours"][acc]


def test_invalid_epoch_values_are_dead_lettered_with_file_line_field_and_reason(exported: dict[str, Any]) -> None:
    dead = sorted((d["file"].rsplit("/", 1)[1], d["line"], d["field"], d["reason"]) for d in exported["dead"])
    assert [d[:3] for d in dead] == [("epoch_ms.jsonl", 4, "ts"), ("epoch_s.csv", 5, "ts"), ("epoch_s.csv", 6, "ts")]
    assert "epoch seconds? set the meter's timestamp_format: epoch_s" in dead[0][3]
    assert "epoch milliseconds? set the meter's timestamp_format: epoch_ms" in dead[1][3]
    assert "not a number of epoch seconds" in dead[2][3]
    assert all(d["file"].startswith(f"s3://{BUCKET}/{ROOT}epoch_") and d["row"]["event_id"] for d in exported["dead"])


# ------------------------------------------------------------------------- delimiter mismatch
def test_a_file_that_does_not_fit_the_delimiter_fails_alone_by_name_and_lands_once_fixed(
        fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m3sh.hooks.m3ter import M3terHook

    path = tmp_path / "m3sh.yaml"
    path.write_text(config_text())
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    hook = M3terHook()
    good, stray, right = sorted(a["code"] for a in hook.list_accounts())[:3]
    now = _now_hour()
    s3 = s3_client(fresh_sandbox.url("moto"))
    wrong_key = SEMI + "exported_with_commas.csv"
    files = {COMMA + "good.csv": _excel_csv(HEADER, _rows("g", good, [1, 1, 1], now)),
             wrong_key: _excel_csv(HEADER, _rows("w", stray, [5, 5, 5], now), ","),  # in the ';' feed
             SEMI + "right.csv": _excel_csv(HEADER, _rows("r", right, [2, 2], now), ";")}
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    run, results = run_ingest(monkeypatch, ["platform_files", "excel_semicolon"])
    assert run.state == "failed"  # the run fails so the alert names the file...
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["summarize"] == "failed" and states["plan_files"] == "success"
    failed = results[wrong_key]
    assert (failed["status"], failed["rows_read"], failed["rows_sent"]) == ("failed", 0, 0)
    assert f"s3://{BUCKET}/{wrong_key}" in failed["error"]
    assert "configured delimiter semicolon (';')" in failed["error"]
    assert "seems to use comma (',')" in failed["error"]
    # ...while every other file, in its feed and in the other, landed
    assert results[COMMA + "good.csv"]["status"] == results[SEMI + "right.csv"]["status"] == "complete"
    assert totals(usage_by_account_hour(hook)) == {good: (3, 3.0), right: (2, 4.0)}
    assert manifest(s3, "excel_semicolon", wrong_key) is None  # not marked done: the next run tries again

    # Re-exported with the feed's delimiter (a new ETag), the file lands; the others are not re-sent.
    s3.put_object(Bucket=BUCKET, Key=wrong_key, Body=_excel_csv(HEADER, _rows("w", stray, [5, 5, 5], now), ";"))
    run, results = run_ingest(monkeypatch, ["platform_files", "excel_semicolon"])
    assert run.state == "success"
    assert {k: r["status"] for k, r in results.items()} == {COMMA + "good.csv": "skipped",
                                                            SEMI + "right.csv": "skipped", wrong_key: "complete"}
    assert totals(usage_by_account_hour(hook)) == {good: (3, 3.0), right: (2, 4.0), stray: (3, 15.0)}
