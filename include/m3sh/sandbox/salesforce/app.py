"""The Salesforce emulator: SOAP login, REST query/sObject/describe/limits routes, daily API limit.

simple-salesforce (through Airflow's ``SalesforceHook``) is the judge: it must run unchanged
against this app once its https URLs are routed here (see ``m3sh.hooks.salesforce``). So paths,
trailing slashes, status codes and the JSON-array error body follow what the client sends and
parses (crm-erp.md C.2/C.3), not what would be convenient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3sh.sandbox.common import ASGIApp, Emulator, HostGate
from m3sh.sandbox.salesforce import auth, bulk2, strict
from m3sh.sandbox.salesforce.schema import OBJECTS, ObjectDef, get_object, redefine_field, restore_schema
from m3sh.sandbox.salesforce.seed import seed_demo
from m3sh.sandbox.salesforce.store import ApiError, Store

DEFAULT_DAILY_LIMIT = 15000  # Developer Edition; enough headroom for a demo day of hourly syncs
_VERSION_RE = re.compile(r"^(\d{2})\.0$")
_BATCH_RE = re.compile(r"batchSize\s*=\s*(\d+)", re.IGNORECASE)
_ERROR_CODES = {
    400: "BAD_REQUEST", 401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 429: "REQUEST_LIMIT_EXCEEDED", 503: "SERVER_UNAVAILABLE",
}
_NOT_FOUND = "The requested resource does not exist"
_HEADER_CASE = {b"content-type": b"Content-Type", b"content-length": b"Content-Length",
                b"sforce-locator": b"Sforce-Locator", b"sforce-numberofrecords": b"Sforce-NumberOfRecords",
                b"sforce-limit-info": b"Sforce-Limit-Info"}
_NO_EXT_FIELD = "Provided external ID field does not exist or is not accessible: "

Handler = Callable[..., Awaitable[Response]]


def _login_host_operation(method: str, path: str) -> bool:
    return ((method == "POST" and (path.startswith("/services/Soap/u/") or path == "/services/oauth2/token"))
            or path.rstrip("/") == "/services/data")


class SalesforceOrg:
    """One org's data, sessions and daily API allowance. The org's REST app is built on it; the
    emulator's lock, limits switch and schema (metadata) are shared by every org of the process."""

    def __init__(self, emu: SalesforceEmulator, login: auth.OrgLogin) -> None:
        self.emu = emu
        self.login = login
        self.lock = emu.lock
        self.store = Store(login.user_id)
        self.query_jobs = bulk2.QueryJobs()
        self.sessions: set[str] = set()
        self.daily_max = DEFAULT_DAILY_LIMIT
        self.api_used = 0

    def error_body(self, status: int, message: str) -> Any:
        return self.emu.error_body(status, message)

    def authorize(self, request: Request) -> None:
        """Session check, then the daily API allowance (each authenticated call counts, as in Salesforce)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        with self.lock:
            if scheme.lower() not in ("bearer", "oauth") or token.strip() not in self.sessions:
                raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
            if self.emu.limits_enabled and self.api_used >= self.daily_max:
                raise ApiError(403, "REQUEST_LIMIT_EXCEEDED",
                               f"TotalRequests Limit exceeded. ({self.daily_max})")
            self.api_used += 1

    def limit_header(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.daily_max}"}

    def json(self, status: int, body: Any) -> JSONResponse:
        return _FastJSONResponse(body, status_code=status, headers=self.limit_header(),
                                 media_type="application/json;charset=UTF-8")

    def snapshot(self) -> dict[str, Any]:
        return {
            "objects": {name: list(table.values()) for name, table in self.store.records.items()},
            "api_usage": {"used": self.api_used, "max": self.daily_max},
            "sessions": len(self.sessions),
            "open_cursors": len(self.store.cursors),
        }


class SalesforceEmulator(Emulator):
    """Salesforce orgs: Northwind Cloud's (accounts, contracts, opportunities and invoices; the
    default) and a second, initially empty org ``acme``, each with its own user and instance host.

    Admin actions that touch data take ``"org": "acme"`` to act on the second org (default: the
    first); ``/_sandbox/state`` shows the first org at the top level and every other under ``orgs``.
    """

    name = "salesforce"
    # The instance hosts answer Bulk API 2.0 results with "Content-Type" capitalised (see
    # query_job_results), which only uvicorn's h11 protocol sends as spelled.
    case_preserving_roles = frozenset({"instance", "instance_acme"})

    def __init__(self) -> None:
        super().__init__()
        self.orgs = {login.name: SalesforceOrg(self, login) for login in auth.ORGS}
        self.admin_actions["daily_limit"] = self._admin_daily_limit
        self.admin_actions["expire_sessions"] = self._admin_expire_sessions
        self.admin_actions["insert"] = self._admin_insert
        self.admin_actions["set_fields"] = self._admin_set_fields
        self.admin_actions["drop_field"] = self._admin_drop_field
        self.admin_actions["field_type"] = self._admin_field_type
        restore_schema()
        # The main port stands in for login.salesforce.com: it logs in (SOAP, any org's user) and
        # lists API versions, nothing else; each ``instance`` listener is an org's My Domain host
        # that the login response's serverUrl names, where every REST call goes (and login works too).
        self.instance_apps = {name: cast("ASGIApp", _build_app(self, org)) for name, org in self.orgs.items()}
        self.app = HostGate(self.instance_apps["default"], _login_host_operation, 404, [{
            "errorCode": "NOT_FOUND",
            "message": f"The login host serves login only; REST calls go to the instance in the login "
                       f"response's serverUrl (https://{auth.INSTANCE_HOST})"}])
        self.instance_app = self.instance_apps["default"]

    def listener_apps(self) -> dict[str, Any]:
        return {"instance" if name == "default" else f"instance_{name}": app
                for name, app in self.instance_apps.items()}

    @property
    def default(self) -> SalesforceOrg:
        return self.orgs["default"]

    @property
    def store(self) -> Store:
        return self.default.store

    def org_of(self, body: dict[str, Any]) -> SalesforceOrg:
        name = str(body.get("org") or "default")
        if name not in self.orgs:
            raise ValueError(f"unknown org {name!r}; known: {sorted(self.orgs)}")
        return self.orgs[name]

    def login(self, body: str) -> SalesforceOrg | None:
        """The org whose integration user the SOAP login envelope names, with a correct password."""
        return next((org for org in self.orgs.values() if auth.check_login(body, org.login)), None)

    # ------------------------------------------------------------------------- Emulator API
    def reset(self, seed: str = "empty") -> None:
        if seed not in ("demo", "empty"):
            raise ValueError(f"unknown seed {seed!r}; use 'demo' or 'empty'")
        with self.lock:
            restore_schema()
            for org in self.orgs.values():
                org.store = Store(org.login.user_id)
                org.query_jobs = bulk2.QueryJobs()
                org.sessions.clear()
                org.api_used = 0
                org.daily_max = DEFAULT_DAILY_LIMIT
            if seed == "demo":  # the demo is Northwind's org; the second org starts empty
                seed_demo(self.default.store)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.default.snapshot(),
                    "orgs": {name: org.snapshot() for name, org in self.orgs.items() if name != "default"}}

    def error_body(self, status: int, message: str) -> Any:
        code = _ERROR_CODES.get(status, "UNKNOWN_EXCEPTION" if status >= 500 else "BAD_REQUEST")
        return [{"message": message, "errorCode": code}]

    # ----------------------------------------------------------------------- admin actions
    def _admin_daily_limit(self, body: dict[str, Any]) -> dict[str, int]:
        """``{"max": n, "used": m?, "org"?}``: shrink the daily API allowance so tests can hit it quickly."""
        org = self.org_of(body)
        if "max" in body:
            org.daily_max = int(body["max"])
        if "used" in body:
            org.api_used = int(body["used"])
        return {"max": org.daily_max, "used": org.api_used}

    def _admin_expire_sessions(self, body: dict[str, Any]) -> dict[str, int]:
        """Invalidate every session of every org, as a server-side timeout would; clients must log in again."""
        n = sum(len(org.sessions) for org in self.orgs.values())
        for org in self.orgs.values():
            org.sessions.clear()
        return {"expired": n}

    def _admin_insert(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"sobject": name, "records": [...], "org"?}``: bulk-create through the normal write rules."""
        store = self.org_of(body).store
        try:
            obj = _object_or_error(str(body.get("sobject", "")))
            ids = [store.create(obj, rec)["Id"] for rec in body.get("records", [])]
        except ApiError as exc:
            raise ValueError(f"{exc.error_code}: {exc.message}") from None
        return {"ids": ids}

    def _admin_set_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"sobject", "id", "fields", "org"?}``: set any field, system ones included (e.g. a past
        ``SystemModstamp`` for backfill tests). Bypasses validation on purpose."""
        store = self.org_of(body).store
        obj = get_object(str(body.get("sobject", "")))
        if obj is None:
            raise ValueError(f"unknown sobject {body.get('sobject')!r}")
        rec = store.find(obj, str(body.get("id", "")), include_deleted=True)
        if rec is None:
            raise ValueError(f"no {obj.name} with id {body.get('id')!r}")
        return store.set_fields(obj, rec, dict(body.get("fields", {})))

    def _admin_drop_field(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"sobject", "field"}``: delete a field from the org's metadata (until the next reset),
        e.g. to plant a custom field an integration needs but the org lacks."""
        obj = redefine_field(str(body.get("sobject", "")), str(body.get("field", "")), None)
        return {"sobject": obj.name, "fields": sorted(obj.fields)}

    def _admin_field_type(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"sobject", "field", "type"}``: change a field's type (until the next reset), e.g. a
        date field created as text."""
        type_ = str(body.get("type", ""))
        if not type_:
            raise ValueError("field_type needs 'type' (a describe type such as 'string' or 'date')")
        obj = redefine_field(str(body.get("sobject", "")), str(body.get("field", "")), type_)
        return {"sobject": obj.name, "field": body.get("field"), "type": type_}


class _FastJSONResponse(JSONResponse):
    """orjson encodes a 2,000-record query page several times faster than the stdlib encoder;
    same compact UTF-8 JSON. Anything orjson refuses (an int beyond 64 bits set by an admin
    action) falls back to the stdlib."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError
            return super().render(content)


def _object_or_error(name: str) -> ObjectDef:
    obj = get_object(name)
    if obj is None:
        raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
    return obj


def _check_version(version: str) -> str:
    m = _VERSION_RE.match(version)
    if m is None or not 20 <= int(m.group(1)) <= 62:
        raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
    return version


def _params(request: Request, allowed: frozenset[str], what: str) -> None:
    strict.check_params(request.query_params.keys(), allowed, what)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character in request body: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "JSON_PARSER_ERROR",
                       "Cannot deserialize instance of sObject from a non-object value")
    return data


def _build_app(emu: SalesforceEmulator, org: SalesforceOrg) -> FastAPI:
    app = FastAPI(title="m3sh Salesforce sandbox", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    base = "/services/data/v{version}"

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return org.json(exc.status, exc.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = _NOT_FOUND if exc.status_code == 404 else str(exc.detail)
        return org.json(exc.status_code, emu.error_body(exc.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return org.json(400, [{"message": str(exc.errors()[:1]), "errorCode": "BAD_REQUEST"}])

    # ------------------------------------------------------------------------------ login
    @app.post("/services/Soap/u/{version}")
    async def soap_login(version: str, request: Request) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        user_org = emu.login(body)
        if user_org is None:
            return Response(auth.login_fault(), status_code=500, media_type="text/xml;charset=UTF-8")
        session_id = auth.new_session_id(user_org.login)
        with emu.lock:
            user_org.sessions.add(session_id)
        return Response(auth.login_response(session_id, version, user_org.login),
                        media_type="text/xml;charset=UTF-8")

    @app.post("/services/oauth2/token")
    async def oauth_token(request: Request) -> Response:
        """OAuth 2.0 refresh token flow (``auth.refresh_token_grant``); the access token it issues
        is a session of the org whose user granted the refresh token."""
        try:
            if request.query_params:
                raise auth.OAuthError("invalid_request", "the m3sh sandbox takes the token request's "
                                                         "parameters in the form-encoded body only")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise auth.OAuthError("invalid_request", "the token request must be application/x-www-form-urlencoded")
            form = parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)
            app_ = auth.refresh_token_grant(form, request.headers.get("authorization", ""))
        except auth.OAuthError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        token_org = emu.orgs[app_.org]
        session_id = auth.new_session_id(token_org.login)
        with emu.lock:
            token_org.sessions.add(session_id)
        return JSONResponse(auth.token_response(session_id, app_, token_org.login))

    @app.get("/services/data")
    @app.get("/services/data/")
    async def versions() -> Response:
        return JSONResponse([{"label": f"v{v}.0", "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
                             for v in range(50, 63)])

    # ------------------------------------------------------------------------ resources
    @app.get(base)
    @app.get(base + "/")
    async def resources(version: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        root = f"/services/data/v{v}"
        _params(request, strict.NONE, "GET /")
        return org.json(200, {"sobjects": f"{root}/sobjects", "query": f"{root}/query",
                              "queryAll": f"{root}/queryAll", "limits": f"{root}/limits"})

    @app.get(base + "/limits")
    @app.get(base + "/limits/")
    async def limits(version: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        _params(request, strict.NONE, "limits")
        with emu.lock:
            remaining = max(0, org.daily_max - org.api_used)
            return org.json(200, {
                "DailyApiRequests": {"Max": org.daily_max, "Remaining": remaining},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": max(0, 10000 - org.query_jobs.created)},
                "DataStorageMB": {"Max": 1024, "Remaining": 1000},
                "SingleEmailMessages": {"Max": 5000, "Remaining": 5000},
            })

    @app.get(base + "/sobjects")
    @app.get(base + "/sobjects/")
    async def describe_global(version: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        _params(request, strict.NONE, "sobjects (describe global)")
        return org.json(200, {"encoding": "UTF-8", "maxBatchSize": 200,
                              "sobjects": [o.summary(v) for o in OBJECTS.values()]})

    # ---------------------------------------------------------------------------- query
    async def _query(version: str, request: Request, include_deleted: bool) -> Response:
        org.authorize(request)
        v = _check_version(version)
        _params(request, strict.QUERY, "queryAll" if include_deleted else "query")
        q = request.query_params.get("q")
        if not q:
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        m = _BATCH_RE.search(request.headers.get("sforce-query-options", ""))
        with emu.lock:
            result = org.store.run_query(q, v, include_deleted, int(m.group(1)) if m else None)
        return org.json(200, result)

    async def _query_more(version: str, locator: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        _params(request, strict.QUERY_MORE, "the next page of a query (nextRecordsUrl)")
        with emu.lock:
            return org.json(200, org.store.query_more(locator, v))

    @app.get(base + "/query")
    @app.get(base + "/query/")
    async def query(version: str, request: Request) -> Response:
        return await _query(version, request, include_deleted=False)

    @app.get(base + "/queryAll")
    @app.get(base + "/queryAll/")
    async def query_all(version: str, request: Request) -> Response:
        return await _query(version, request, include_deleted=True)

    @app.get(base + "/query/{locator}")
    @app.get(base + "/queryAll/{locator}")
    async def query_more(version: str, locator: str, request: Request) -> Response:
        return await _query_more(version, locator, request)

    # ------------------------------------------------------------------------- sobjects
    @app.get(base + "/sobjects/{sobject}")
    @app.get(base + "/sobjects/{sobject}/")
    async def sobject_info(version: str, sobject: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "sobjects/{sobject} (basic information)")
        return org.json(200, {"objectDescribe": obj.summary(v), "recentItems": []})

    @app.post(base + "/sobjects/{sobject}")
    @app.post(base + "/sobjects/{sobject}/")
    async def create(version: str, sobject: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "POST sobjects/{sobject} (create)")
        data = await _json_body(request)
        with emu.lock:
            rec = org.store.create(obj, data)
        return org.json(201, {"id": rec["Id"], "success": True, "errors": []})

    @app.get(base + "/sobjects/{sobject}/describe")
    @app.get(base + "/sobjects/{sobject}/describe/")
    async def describe(version: str, sobject: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "sobjects/{sobject}/describe")
        return org.json(200, obj.describe(v))

    @app.get(base + "/sobjects/{sobject}/updated")
    @app.get(base + "/sobjects/{sobject}/updated/")
    async def updated(version: str, sobject: str, request: Request) -> Response:
        """Replication API: ids changed in [start, end) (minute precision, last 30 days)."""
        org.authorize(request)
        _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.REPLICATION, "sobjects/{sobject}/updated")
        with emu.lock:
            return org.json(200, org.store.replicate(obj, request.query_params.get("start"),
                                                     request.query_params.get("end"), deleted=False))

    @app.get(base + "/sobjects/{sobject}/deleted")
    @app.get(base + "/sobjects/{sobject}/deleted/")
    async def deleted(version: str, sobject: str, request: Request) -> Response:
        """Replication API: records deleted in [start, end), from the recycle bin."""
        org.authorize(request)
        _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.REPLICATION, "sobjects/{sobject}/deleted")
        with emu.lock:
            return org.json(200, org.store.replicate(obj, request.query_params.get("start"),
                                                     request.query_params.get("end"), deleted=True))

    @app.get(base + "/sobjects/{sobject}/{record_id}")
    async def get_record(version: str, sobject: str, record_id: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        obj = _object_or_error(sobject)
        if record_id in strict.SOBJECT_SUB_RESOURCES:
            raise strict.unimplemented_resource(f"sobjects/{obj.name}/{record_id}")
        _params(request, strict.RECORD, "GET sobjects/{sobject}/{id}")
        fields = request.query_params.get("fields")
        with emu.lock:
            rec = org.store.find(obj, record_id)
            if rec is None:
                raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
            return org.json(200, org.store.full_record(obj, rec, v, fields.split(",") if fields else None))

    @app.patch(base + "/sobjects/{sobject}/{record_id}")
    async def update(version: str, sobject: str, record_id: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "PATCH sobjects/{sobject}/{id} (update)")
        data = await _json_body(request)
        with emu.lock:
            rec = org.store.find(obj, record_id, include_deleted=True)
            if rec is None:
                raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
            if rec.get("IsDeleted"):
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
            org.store.update(obj, rec, data)
        return Response(status_code=204, headers=org.limit_header())

    @app.delete(base + "/sobjects/{sobject}/{record_id}")
    async def delete(version: str, sobject: str, record_id: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "DELETE sobjects/{sobject}/{id}")
        with emu.lock:
            rec = org.store.find(obj, record_id, include_deleted=True)
            if rec is None:
                raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
            if rec.get("IsDeleted"):
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
            org.store.delete(obj, rec)
        return Response(status_code=204, headers=org.limit_header())

    @app.get(base + "/sobjects/{sobject}/{ext_field}/{value:path}")
    async def get_by_external_id(version: str, sobject: str, ext_field: str, value: str,
                                 request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        obj = _object_or_error(sobject)
        if ext_field in strict.SOBJECT_SUB_RESOURCES:
            raise strict.unimplemented_resource(f"sobjects/{obj.name}/{ext_field}/{value}")
        f = obj.field(ext_field)
        if f is None or not (f.external_id or f.name == "Id"):
            raise ApiError(404, "NOT_FOUND", _NO_EXT_FIELD + ext_field)
        # "fields" is documented for this resource too ("sObject Rows by External ID").
        _params(request, strict.RECORD, "GET sobjects/{sobject}/{field}/{value}")
        fields = request.query_params.get("fields")
        with emu.lock:
            matches = org.store.find_by_field(obj, f, value)
            if not matches:
                raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
            if len(matches) > 1:
                return org.json(300, [org.store.attributes(obj, r["Id"], v)["url"] for r in matches])
            return org.json(200, org.store.full_record(obj, matches[0], v, fields.split(",") if fields else None))

    @app.patch(base + "/sobjects/{sobject}/{ext_field}/{value:path}")
    async def upsert(version: str, sobject: str, ext_field: str, value: str, request: Request) -> Response:
        """201 when created; 200 with ``created: false`` when updated (API v46.0+), 204 before v46."""
        org.authorize(request)
        v = _check_version(version)
        obj = _object_or_error(sobject)
        _params(request, strict.NONE, "PATCH sobjects/{sobject}/{field}/{value} (upsert)")
        data = await _json_body(request)
        with emu.lock:
            rec, created = org.store.upsert(obj, ext_field, value, data)
        body = {"id": rec["Id"], "success": True, "errors": [], "created": created}
        if created:
            return org.json(201, body)
        if float(v) < 46:
            return Response(status_code=204, headers=org.limit_header())
        return org.json(200, body)

    # --------------------------------------------------------------- Bulk API 2.0 query jobs
    jobs = base + "/jobs/query"

    @app.post(jobs)
    async def create_query_job(version: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        _params(request, strict.NONE, "POST jobs/query (create a query job)")
        body = await _json_body(request)
        with emu.lock:
            job = org.query_jobs.create(org.store, body, v, org.login.user_id)
        return org.json(200, job.info())

    @app.get(jobs + "/{job_id}")
    async def query_job_info(version: str, job_id: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        _params(request, strict.NONE, "jobs/query/{id} (job information)")
        with emu.lock:
            return org.json(200, org.query_jobs.info(job_id))

    @app.patch(jobs + "/{job_id}")
    async def abort_query_job(version: str, job_id: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        _params(request, strict.NONE, "PATCH jobs/query/{id} (abort)")
        body = await _json_body(request)
        with emu.lock:
            return org.json(200, org.query_jobs.abort(job_id, body))

    @app.delete(jobs + "/{job_id}")
    async def delete_query_job(version: str, job_id: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        _params(request, strict.NONE, "DELETE jobs/query/{id}")
        with emu.lock:
            org.query_jobs.delete(job_id)
        return Response(status_code=204, headers=org.limit_header())

    @app.get(jobs + "/{job_id}/results")
    async def query_job_results(version: str, job_id: str, request: Request) -> Response:
        org.authorize(request)
        v = _check_version(version)
        _params(request, bulk2.RESULTS_PARAMS, "jobs/query/{id}/results")
        with emu.lock:
            content, headers = org.query_jobs.results(job_id, v, request.query_params.get("locator"),
                                                      request.query_params.get("maxRecords"))
        response = Response(content, media_type="text/csv", headers={**headers, **org.limit_header()})
        # Header names as Salesforce spells them ("Content-Type", "Sforce-Locator"): HTTP says case
        # does not matter, but airbyte-cdk's ResponseToFileExtractor looks up "content-type" in a
        # plain dict of the headers, so its CSV download works only when the name is capitalised.
        response.raw_headers = [(_HEADER_CASE.get(k, k), v) for k, v in response.raw_headers]
        return response

    async def unimplemented(version: str, request: Request) -> Response:
        org.authorize(request)
        _check_version(version)
        resource = request.url.path.split("/")[4]
        raise strict.unimplemented_resource(resource)

    # Registered last: real resources the sandbox lacks say so, instead of "does not exist".
    for resource in strict.UNIMPLEMENTED_RESOURCES:
        for path in (f"{base}/{resource}", f"{base}/{resource}/{{rest:path}}"):
            app.add_api_route(path, unimplemented, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                              include_in_schema=False)

    return app
