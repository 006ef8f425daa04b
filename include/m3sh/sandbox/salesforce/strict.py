"""What the Salesforce emulator's REST routes implement, and a refusal for everything else.

An emulator that ignores a parameter it does not understand answers a different question than the
one asked, and a client built against it passes every test (issue 20: a HubSpot search body with
an unknown key got unfiltered results). So each route names the query parameters it acts on and
refuses any other with a 400 in Salesforce's error shape, a JSON *list*
``[{"message", "errorCode", "fields"}]`` (REST API Developer Guide, "Status Codes and Error
Responses": https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm).

Stricter than production on purpose: Salesforce ignores a query parameter it does not know. The
refusal's ``errorCode`` (``INVALID_OPERATION``, one of the API's ``ExceptionCode`` values) and its
wording are the emulator's, resting on no published example: Salesforce publishes no machine-
readable spec of its REST API, so what each route accepts rests on the Developer Guide's prose
for that resource (cited at each entry below). A documented parameter the emulator does not
implement (``explain`` on ``query``) is refused saying so, never silently ignored.

Unknown sObject fields in write bodies are refused by the store (``INVALID_FIELD``, "No such column
'X' on sobject of type Account", the API's own text), unknown SOQL by the parser (``soql.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from m3sh.sandbox.salesforce.store import ApiError

NOT_IMPLEMENTED_CODE = "INVALID_OPERATION"

# Resource -> the query parameters its route implements (Developer Guide, "Resources" reference).
QUERY = frozenset({"q"})  # Query / QueryAll: "q" (and "explain", below)
RECORD = frozenset({"fields"})  # sObject Rows (GET) and sObject Rows by External ID (GET): "fields"
REPLICATION = frozenset({"start", "end"})  # sObject Get Updated / Get Deleted: "start", "end"
NONE: frozenset[str] = frozenset()
# The next page of a query (nextRecordsUrl): the locator alone picks the page. Clients that re-send
# the first request's params on every page (tap-salesforce's REST ``_sync_records`` passes
# ``{"q": query}`` with each nextRecordsUrl, and runs against production that way) get that page, the
# repeated ``q`` ignored. Anything else is refused. No Salesforce document states this; the published
# connector's behaviour in production is the evidence.
QUERY_MORE = frozenset({"q"})

# Documented parameters the emulator does not implement: refused, saying what they are.
DOCUMENTED = {
    "explain": "Query resource's 'explain' (query plan feedback)",
    "updateOnly": "upsert's 'updateOnly'",
}

# REST resources Salesforce serves under /services/data/vXX.X/ that the emulator does not: a request
# for one says so, instead of the generic "does not exist" (Developer Guide, "List Available REST
# Resources"). simple-salesforce reaches several of them (``bulk``/``bulk2`` -> jobs, ``search``,
# ``quick_search``, ``toolingexecute``, composite via ``restful``). Under ``jobs`` only Bulk API 2.0
# query jobs (``jobs/query/{id}``, ``bulk2.py``) are implemented: ingest jobs and the list of query
# jobs reach this refusal.
UNIMPLEMENTED_RESOURCES = (
    "composite", "jobs", "search", "parameterizedSearch", "tooling", "recent", "analytics", "actions",
    "process", "quickActions", "connect", "chatter", "ui-api", "async-queries", "appMenu", "consent",
    "support", "theme", "licensing", "scheduling", "smartdatadiscovery", "sobjectRelationships",
)


# sObject sub-resources (Developer Guide: "sObject Describe Layouts", "List Views", "sObject Quick
# Actions", "Platform Event Schema by Event Name"): they would otherwise be taken for a record id or
# an external-id field and answer "does not exist".
SOBJECT_SUB_RESOURCES = frozenset({"listviews", "quickActions", "eventSchema", "describe", "layouts"})


def check_params(names: Iterable[str], allowed: frozenset[str], what: str) -> None:
    """Refuse the first query parameter of a request that ``allowed`` lacks (``what``: the route,
    for the message)."""
    for name in names:
        if name in allowed:
            continue
        implemented = ", ".join(sorted(allowed)) or "none"
        if name in DOCUMENTED:
            message = (f"{DOCUMENTED[name]} is documented by Salesforce but not implemented by the m3sh "
                       f"sandbox ({what}; implemented: {implemented})")
        else:
            message = (f"Query parameter '{name}' is not implemented by the m3sh sandbox for {what} "
                       f"(implemented: {implemented}); Salesforce would ignore it, the sandbox refuses it "
                       "so a client relying on it fails here rather than in production")
        raise ApiError(400, NOT_IMPLEMENTED_CODE, message, [name])


def unimplemented_resource(resource: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"The REST resource '{resource}' exists in Salesforce but is not "
                                      "implemented by the m3sh sandbox")
