"""Canned answers for the recording transports: minimal, but what each client needs to carry on.

Answers are chosen by the operation the request performs (the same classifier the coverage check
uses), never by matching URLs here: lists hold one entity, gets return the asked id, creates and
updates echo the body with an id (and m3ter's ``version``), NetSuite writes answer 204 with a
``Location``, the Salesforce SOAP login names an instance host. A few sample values switch a branch
on purpose (an m3ter code ``missing-*`` is absent from lists, a HubSpot property ``missing_*``
answers 404, an S3 key under ``missing/`` answers NoSuchKey) so both sides of find-or-create run.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.wiring.contracts import Recorded
from tests.wiring.operations import Operation, Unclassified, classify_recorded
from tests.wiring.transports import Canned

M3TER_TOKEN = "m3ter-wired-access-token"
SALESFORCE_INSTANCE = "acme.my.salesforce.com"
SALESFORCE_SESSION = "00D000000000001!AQwired.session"
NOW = "2026-11-02T10:00:00Z"
# What generateUploadUrl answers: an S3 pre-signed PUT URL (query-string SigV4). m3ter does not
# document its bucket's name; this one stands for it.
M3TER_UPLOAD_BUCKET = "m3ter-measurement-uploads"
_PRESIGNED = ("?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAM3TERWIRED%2F20261102%2Fus-east-1%2Fs3"
              "%2Faws4_request&X-Amz-Date=20261102T100000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=content-type%3Bhost"
              "&X-Amz-Signature=" + "0" * 64)
M3TER_UPLOAD_URL = f"https://{M3TER_UPLOAD_BUCKET}.s3.amazonaws.com/org/m3sh-wired-p0000.json{_PRESIGNED}"


def respond(rec: Recorded) -> Canned:
    try:
        op = classify_recorded(rec)
    except Unclassified as exc:
        # Answered with an error the client raises, so the scenario stops here and the suite's
        # classification check names the request.
        return Canned(599, {"message": f"wiring suite: unclassified request: {exc}"})
    return {"m3ter": _m3ter, "hubspot": _hubspot, "netsuite": _netsuite, "salesforce": _salesforce,
            "aws": _aws}[op.system](rec, op)


def _uuid(seed: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))


# ----------------------------------------------------------------------------------------- m3ter
def _m3ter(rec: Recorded, op: Operation) -> Canned:
    template = op.id.split(" ", 1)[1]
    if template == "/oauth/token":
        return Canned(200, {"access_token": M3TER_TOKEN, "token_type": "Bearer", "expires_in": 18000})
    query = dict(rec.query)
    segments = rec.path.rstrip("/").split("/")
    if template.endswith("/getdownloadurl"):
        return Canned(200, {"url": "https://m3ter-exports.s3.amazonaws.com/export.csv", "expirationTime": NOW})
    if template.endswith("/generateUploadUrl"):
        return Canned(200, {"jobId": _uuid("upload"), "url": M3TER_UPLOAD_URL,
                            "headers": {"Content-Type": "application/json"}})
    if template.endswith("/jobs/{id}/original"):
        return Canned(200, {"jobId": _uuid("download"), "url": M3TER_UPLOAD_URL.replace("60", "300", 1)})
    if template.endswith("/transactions/summary"):
        return Canned(200, {"totalCreditAmount": 100.0, "totalDebitAmount": 0.0})
    if template.endswith("/measurements"):
        return Canned(200, {"result": "accepted"})
    if template.endswith("/usage/query"):
        return Canned(200, {"data": [{"accountCode": "acme", "quantity_sum": 5.0}]})
    if template.endswith("/bills/approve"):
        return Canned(200, {"message": "approved"})
    if template.endswith("/billjobs/recalculate"):
        return Canned(200, {"id": _uuid("billjob"), "status": "PENDING", "version": 1})
    if template.endswith("/enable"):
        return Canned(200, {"id": segments[-2], "enabled": True, "version": 2})
    if template.endswith("/customfields"):
        return Canned(200, {"id": _uuid("customfields"), "version": 1, "organization": {}, "product": {},
                            "plan": {}, "planTemplate": {}, "account": {"lifecycle": ""},
                            "accountPlan": {}, "aggregation": {}, "compoundAggregation": {}, "meter": {},
                            "contract": {}})
    if template.endswith("/dataexports/adhoc"):
        return Canned(200, {"id": _uuid("export"), "status": "PENDING"})
    if rec.method == "GET" and template.endswith("}") and "/external/" not in template \
            and "/externalid/" not in template:
        entity_id = unquote(segments[-1])
        entity = _m3ter_entity(entity_id, template)
        if entity_id in _STALE:  # re-read after a version conflict: the newer version
            entity |= _STALE[entity_id] | {"version": 2}
        return Canned(200, entity)
    if rec.method == "GET":  # a list: one entity, and no nextToken (the last page)
        codes = [c for c in query.get("codes", "").split(",") if c]
        code = codes[0] if codes else "wired"
        items = [] if code.startswith("missing-") else [_m3ter_entity(_uuid(rec.path + code), template, code=code)]
        return Canned(200, {"data": items})
    body = rec.json() or {}
    marker = str(body.get("code") or body.get("externalId") or "")
    if rec.method == "PUT" and marker.startswith("conflict-") and body.get("version") == 1:
        # m3ter refuses a stale version (400; the status is not documented, api-notes m3ter.md 2.2);
        # the hook re-reads the entity (its GET operation) and applies the change again.
        _STALE[segments[-1]] = {k: v for k, v in body.items() if k != "version"}
        return Canned(400, {"message": "Version 1 is out of date: the entity is at version 2"})
    entity = {**body, "id": segments[-1] if rec.method == "PUT" else _uuid(rec.url + rec.body.decode()),
              "version": int(body.get("version") or 0) + 1, "dtCreated": NOW, "dtLastModified": NOW}
    return Canned(200, entity)


# Entities whose update was refused as stale once (id -> their fields): a re-read returns version 2.
_STALE: dict[str, dict[str, Any]] = {}


def _m3ter_entity(entity_id: str, template: str, code: str = "wired") -> dict[str, Any]:
    """An entity as m3ter's GET would return it: the fields its PUT requires are all there (the hook
    builds a full PUT body from what it read), ids are UUIDs."""
    entity: dict[str, Any] = {"id": entity_id, "code": code, "name": f"Wired {code}", "version": 1,
                              "dtCreated": NOW, "dtLastModified": NOW}
    account, plan = _uuid("account"), _uuid("plan")
    collection = template.split("/organizations/{orgId}/", 1)[-1]
    shapes: dict[str, dict[str, Any]] = {
        "accounts": {"emailAddress": "ap@acme.example", "currency": "USD", "customFields": {}},
        "contracts": {"accountId": account, "startDate": "2026-01-01", "endDate": "2027-01-01"},
        "accountplans": {"accountId": account, "planId": plan, "startDate": NOW},
        "balances": {"accountId": account, "currency": "USD", "amount": 100.0, "startDate": NOW,
                     "endDate": "2027-11-02T10:00:00Z"},
        "plans": {"planTemplateId": _uuid("plantemplate"), "productId": _uuid("product")},
        "meters": {"dataFields": [], "derivedFields": []},
        "notifications/configurations": {"description": "m3sh rule", "eventName": "billing.balance.updated",
                                         "calculation": "new.amount < 100", "active": True,
                                         "alwaysFireEvent": False},
        "integrationdestinations/webhooks": {"description": "m3sh receiver", "active": True,
                                             "url": "https://airflow.acme.example/m3sh/webhook",
                                             "credentials": {"type": "M3TER_SIGNED_REQUEST", "apiKey": "k",
                                                             "secret": "s"}},
        "externalmappings": {"externalSystem": "NetSuite", "externalTable": "Customer", "externalId": "1001",
                             "m3terEntity": "Account", "m3terId": account},
        "bills": {"accountId": account, "status": "APPROVED", "currency": "USD", "billDate": "2026-11-01",
                  "lineItems": []},
        "dataexports/jobs": {"status": "SUCCEEDED"},
        "fileuploads/measurements/jobs": {"status": "succeeded", "fileName": "m3sh-wired-p0000.json",
                                          "contentLength": 2, "totalRows": 0, "processedRows": 0, "failedRows": 0},
    }
    for prefix, shape in shapes.items():
        if collection == prefix or collection.startswith(prefix + "/"):
            entity |= shape
            break
    return entity


# --------------------------------------------------------------------------------------- HubSpot
def _hs_object(object_id: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": object_id, "properties": properties or {"name": "Acme"}, "createdAt": NOW, "updatedAt": NOW,
            "archived": False}


def _hubspot(rec: Recorded, op: Operation) -> Canned:
    template = op.id.split(" ", 1)[1]
    body = rec.json() if rec.body else None
    if "/crm/v3/properties/" in template:
        name = unquote(rec.path.rstrip("/").rsplit("/", 1)[-1]) if rec.method == "GET" else (body or {}).get("name")
        if rec.method == "GET" and str(name).startswith("missing_"):
            return Canned(404, {"status": "error", "message": "property not found", "category": "OBJECT_NOT_FOUND",
                                "correlationId": _uuid("hs-404")})
        return Canned(201 if rec.method == "POST" else 200, {
            "name": name, "label": str(name), "type": "string", "fieldType": "text", "groupName": "companyinformation",
            "description": "", "options": [], "createdAt": NOW, "updatedAt": NOW, "hasUniqueValue": False,
            "hidden": False, "formField": False, "calculated": False, "externalOptions": False,
            "modificationMetadata": {"archivable": True, "readOnlyDefinition": False, "readOnlyValue": False}})
    if template.startswith("/crm/v4/associations/") and template.endswith("/batch/read"):
        kind = {"category": "HUBSPOT_DEFINED", "typeId": 6, "label": None}
        links = [{"toObjectId": 2002, "associationTypes": [kind]}]
        return Canned(200, {"status": "COMPLETE", "startedAt": NOW, "completedAt": NOW, "results": [
            {"from": {"id": str(i["id"])}, "to": links} for i in (body or {}).get("inputs", [])]})
    if template == "/oauth/v2/private-apps/get/access-token-info":
        return Canned(200, {"userId": 1, "hubId": 62515, "appId": 2, "scopes": ["crm.objects.companies.read"]})
    if template.endswith("/search"):
        return Canned(200, {"total": 1, "results": [_hs_object("1001")]})
    if template.endswith("/batch/read"):
        return Canned(200, {"status": "COMPLETE", "startedAt": NOW, "completedAt": NOW,
                            "results": [_hs_object(str(i["id"])) for i in (body or {}).get("inputs", [])]})
    if template.endswith(("/batch/upsert", "/batch/update")):
        results = [{**_hs_object(str(i["id"]) if template.endswith("update") else str(1000 + n), i.get("properties")),
                    "objectWriteTraceId": i.get("objectWriteTraceId")} | (
                        {"new": True} if template.endswith("upsert") else {})
                   for n, i in enumerate((body or {}).get("inputs", []))]
        return Canned(200, {"status": "COMPLETE", "startedAt": NOW, "completedAt": NOW, "results": results})
    if rec.method == "GET" and template.endswith("}") and template.count("{") >= 1 and \
            not template.endswith("{objectType}"):
        return Canned(200, _hs_object(unquote(rec.path.rsplit("/", 1)[-1])))
    if rec.method == "GET":
        return Canned(200, {"results": [_hs_object("1001")]})
    return Canned(404, {"status": "error", "message": f"wiring suite: no canned HubSpot answer for {op.id}",
                        "category": "OBJECT_NOT_FOUND", "correlationId": _uuid("hs")})


# -------------------------------------------------------------------------------------- NetSuite
def _netsuite(rec: Recorded, op: Operation) -> Canned:
    if op.id.endswith("/suiteql"):
        query = (rec.json() or {}).get("q", "")
        row: dict[str, Any] = {"links": [], "id": "1"}
        if "FROM currency" in query:
            row |= {"symbol": "USD"}
        elif "FROM transaction" in query:
            row |= {"externalid": "bill-1", "foreigntotal": "100.00"}
        else:
            row |= {"name": "Wired"}
        return Canned(200, {"links": [], "count": 1, "hasMore": False, "offset": int(dict(rec.query).get("offset", 0)),
                            "totalResults": 1, "items": [row]})
    record_type = rec.path.split("/services/rest/record/v1/")[1].split("/")[0]
    location = f"https://{rec.host}/services/rest/record/v1/{record_type}/4242"
    if rec.method == "GET":
        last = unquote(rec.path.rsplit("/", 1)[-1])
        return Canned(200, {"links": [], "id": "4242", "externalId": last.removeprefix("eid:"), "total": 100.0})
    return Canned(204, None, {"Location": location})


# ------------------------------------------------------------------------------------ Salesforce
def _salesforce(rec: Recorded, op: Operation) -> Canned:
    if op.id.startswith("POST /services/Soap/u/"):
        version = rec.path.rsplit("/", 1)[-1]
        xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
               '"http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body>'
               "<loginResponse><result>"
               f"<metadataServerUrl>https://{SALESFORCE_INSTANCE}/services/Soap/m/{version}/00D000000000001"
               "</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
               f"<serverUrl>https://{SALESFORCE_INSTANCE}/services/Soap/u/{version}/00D000000000001</serverUrl>"
               f"<sessionId>{SALESFORCE_SESSION}</sessionId><userId>005000000000001AAA</userId>"
               "</result></loginResponse></soapenv:Body></soapenv:Envelope>")
        return Canned(200, xml, {"Content-Type": "text/xml;charset=UTF-8"})
    version = re.search(r"/services/data/v([\d.]+)/", rec.path)
    base = f"/services/data/v{version.group(1) if version else '0'}"
    if "/query" in op.id:
        first = "{queryLocator}" not in op.id
        record = {"attributes": {"type": "Account", "url": f"{base}/sobjects/Account/001000000000001AAA"},
                  "Id": "001000000000001AAA" if first else "001000000000002AAA", "Name": "Acme",
                  "SystemModstamp": "2026-11-01T10:00:00.000+0000"}
        page: dict[str, Any] = {"totalSize": 2, "done": not first, "records": [record]}
        if first:
            page["nextRecordsUrl"] = f"{base}/query/01g000000000001AAA-2000"
        return Canned(200, page)
    sobject = op.id.split("/sobjects/")[1].split("/")[0]
    if op.id.endswith("/describe"):
        return Canned(200, {"name": sobject, "fields": [
            {"name": "Id", "type": "id", "createable": False, "updateable": False, "externalId": False},
            {"name": "M3ter_Bill_Id__c", "type": "string", "createable": True, "updateable": True,
             "externalId": True}]})
    if rec.method == "GET":
        return Canned(200, {"attributes": {"type": sobject}, "Id": rec.path.rsplit("/", 1)[-1], "Name": "Acme"})
    if rec.method == "POST":
        return Canned(201, {"id": "a01000000000001AAA", "success": True, "errors": []})
    if op.id.endswith("{value}"):  # upsert: created
        return Canned(201, {"id": "a01000000000002AAA", "success": True, "errors": [], "created": True})
    return Canned(204)


# ------------------------------------------------------------------------------------------- AWS
def _aws(rec: Recorded, op: Operation) -> Canned:
    name = op.id.split(":", 1)[1]
    xml = {"Content-Type": "application/xml"}
    key = unquote(urlsplit(rec.url).path)
    if name == "GetObject":
        if "/missing/" in key:
            return Canned(404, "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
                               "</Error>", xml)
        body = _s3_object(key)
        return Canned(200, body, {"ETag": '"etag-1"', "Content-Type": "application/octet-stream",
                                  "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"})
    if name == "HeadObject":
        return Canned(200, b"", {"ETag": '"etag-1"', "Content-Length": "64",
                                 "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"})
    if name == "PutObject":
        return Canned(200, b"", {"ETag": '"etag-2"'})
    if name == "CopyObject":
        return Canned(200, '<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult><ETag>"etag-3"</ETag>'
                           "<LastModified>2026-11-02T10:00:00.000Z</LastModified></CopyObjectResult>", xml)
    if name == "DeleteObject":
        return Canned(204, b"")
    if name == "DeleteObjects":
        keys = re.findall(rb"<Key>([^<]*)</Key>", rec.body)
        deleted = "".join(f"<Deleted><Key>{k.decode()}</Key></Deleted>" for k in keys)
        return Canned(200, f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult>{deleted}</DeleteResult>', xml)
    if name == "ListObjectsV2":
        prefix = dict(rec.query).get("prefix", "")
        contents = "" if "missing/" in prefix else (
            f"<Contents><Key>{prefix}usage-2026-11-01.csv</Key><LastModified>2026-11-02T10:00:00.000Z</LastModified>"
            '<ETag>"etag-1"</ETag><Size>64</Size><StorageClass>STANDARD</StorageClass></Contents>')
        return Canned(200, '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                           f"<Name>bucket</Name><Prefix>{prefix}</Prefix><KeyCount>{1 if contents else 0}</KeyCount>"
                           f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>", xml)
    if name == "ReceiveMessage":
        body = {"Body": json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {
            "bucket": {"name": "m3sh-usage"}, "object": {"key": "usage/2026-11-01.csv"}}}]}),
            "MessageId": _uuid("sqs"), "ReceiptHandle": "receipt-1", "MD5OfBody": "x"}
        return Canned(200, {"Messages": [body]}, {"Content-Type": "application/x-amz-json-1.0"})
    if name == "DeleteMessageBatch":
        entries = (json.loads(rec.body) or {}).get("Entries", [])
        return Canned(200, {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []},
                      {"Content-Type": "application/x-amz-json-1.0"})
    if name == "Publish":
        return Canned(200, '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
                           f"<MessageId>{_uuid('sns')}</MessageId></PublishResult></PublishResponse>", xml)
    return Canned(400, f"<Error><Code>WiringSuite</Code><Message>no canned answer for {op.id}</Message></Error>", xml)


def _s3_object(key: str) -> bytes:
    """Object bodies m3sh can parse: JSON state, JSON lines, a usage CSV."""
    if key.endswith("/_manifest.json"):  # an analytics partition's manifest (m3sh.analytics.partition)
        from m3sh.analytics.schemas import SCHEMA_VERSION

        return json.dumps({"schema_version": SCHEMA_VERSION, "rows": 1,
                           "files": [{"key": "wired/part-0.parquet", "etag": "etag-1"}]}).encode()
    if key.endswith(".parquet"):
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({"x": [1]}), buf)
        return buf.getvalue()
    if key.endswith(".jsonl"):
        return b'{"uid": "u-1", "account": "acme"}\n'
    if key.endswith(".json"):
        return json.dumps({"wired": True}).encode()
    if key.endswith(".csv"):
        return b"event_id,account,meter,ts,quantity,region\ne-1,acme,api_calls,2026-11-01T10:00:00Z,5,us-east-1\n"
    return b"wired"


def query_of(rec: Recorded) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(rec.url).query))
