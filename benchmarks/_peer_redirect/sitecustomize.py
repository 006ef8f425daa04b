"""Loaded by a published connector's interpreter (``benchmarks/peers.py`` puts this folder on its
``PYTHONPATH``): sends its requests for the vendor's production hosts to the sandbox, and logs each one.

The hosts: ``https://api.hubapi.com`` (``$M3SH_PEER_HUBSPOT_URL``), and any given in
``$M3SH_PEER_REDIRECTS``, a JSON object of production origin -> sandbox base URL (Salesforce:
``https://login.salesforce.com``, where the OAuth token request goes, and the org's My Domain
instance host that the token response's ``instance_url`` names).

NetSuite's requests are signed (OAuth 1.0 TBA: the signature covers the URL's scheme, host and
path), so for the origins listed in ``$M3SH_PEER_KEEP_HOST`` (a JSON list) the request goes on as
through a TLS-terminating reverse proxy: its ``Host`` header keeps the production host and
``X-Forwarded-Proto`` its scheme (uvicorn trusts that header from 127.0.0.1), so the emulator sees
the URL the connector signed and builds its record links on the production host.

Transport level only, nothing of the connector is touched: ``requests``' ``HTTPAdapter.send`` (what
every ``requests`` session, ``requests_cache``'s included, sends through) gets the prepared request
with its URL's scheme and host rewritten. A request to any other host is refused (the peer must not
leave the machine). Each request is appended to ``$M3SH_PEER_LOG`` (method, path, status, and the
answer's first 600 bytes when it is an error), so a failed run names the endpoint and the answer.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

REDIRECTS = {"https://api.hubapi.com": os.environ.get("M3SH_PEER_HUBSPOT_URL", ""),
             **json.loads(os.environ.get("M3SH_PEER_REDIRECTS") or "{}")}
KEEP_HOST = set(json.loads(os.environ.get("M3SH_PEER_KEEP_HOST") or "[]"))


def _install() -> None:
    try:
        from requests.adapters import HTTPAdapter
        from requests.exceptions import ConnectionError as RequestsConnectionError
    except ImportError:  # a peer without requests: nothing to redirect
        return
    original = HTTPAdapter.send
    log_path = os.environ.get("M3SH_PEER_LOG", "")

    def send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        url = str(request.url)
        for prefix, target in REDIRECTS.items():
            if target and (url == prefix or url.startswith(prefix + "/") or url.startswith(prefix + "?")):
                request.url = target + url[len(prefix):]
                if prefix in KEEP_HOST:
                    scheme, host = prefix.split("://", 1)
                    request.headers["Host"] = host
                    request.headers["X-Forwarded-Proto"] = scheme
                break
        else:
            raise RequestsConnectionError(f"m3sh peer redirect: {url.split('?', 1)[0]} is not a sandboxed host")
        started = time.perf_counter()
        response = original(self, request, *args, **kwargs)
        if log_path:
            entry = {"method": request.method, "url": url, "status": response.status_code,
                     "seconds": round(time.perf_counter() - started, 4)}
            if response.status_code >= 400:
                entry["answer"] = response.content[:600].decode("utf-8", "replace")
                body = request.body
                if body:
                    entry["request_body"] = (body if isinstance(body, str) else body.decode("utf-8", "replace"))[:600]
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return response

    HTTPAdapter.send = send  # type: ignore[method-assign]


_install()
