"""Recording transports: every request m3sh's clients send is recorded and answered from a canned
responder, at the lowest layer each client library offers for it, so the clients build, sign and
parse exactly as in production and nothing leaves the process.

* httpx (the m3ter SDK, sync and async, and M3terHook's own token fetch):
  ``HTTPTransport.handle_request`` / ``AsyncHTTPTransport.handle_async_request``.
* urllib3 (hubspot-api-client's REST client): ``PoolManager.urlopen``.
* requests (NetSuiteHook, simple-salesforce under the provider's SalesforceHook):
  ``HTTPAdapter.send``.
* botocore and aiobotocore (the Amazon provider's S3, SQS and SNS hooks): a ``before-send`` handler
  on every client, which botocore documents as able to answer in place of the network.

Underneath, :func:`no_network` makes any socket connection or DNS look-up fail *and* records it,
so a client that retries connection errors (and would swallow the failure) still fails the suite.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from tests.wiring.contracts import Recorded


@dataclass
class Canned:
    """A canned answer: status, JSON-able body (or bytes/str) and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()

    def header_items(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.body is not None and not isinstance(self.body, bytes | str):
            headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = str(len(self.content()))
        return headers


Responder = Callable[[Recorded], Canned]


class NetworkUsed(AssertionError):
    """Something tried a real connection while the wiring suite ran."""


class Recorder:
    """Install with :meth:`installed`; ``records`` then holds every request in the order sent."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.records: list[Recorded] = []
        self.network_attempts: list[str] = []
        self._lock = threading.Lock()

    def _answer(self, method: str, url: str, headers: Any, body: Any, channel: str) -> Canned:
        if body is None:
            raw = b""
        elif isinstance(body, bytes | bytearray):
            raw = bytes(body)
        elif isinstance(body, str):
            raw = body.encode()
        elif hasattr(body, "read"):  # botocore hands file-like bodies (put_object)
            pos = body.tell() if hasattr(body, "tell") else None
            raw = body.read()
            raw = raw.encode() if isinstance(raw, str) else raw
            if pos is not None and hasattr(body, "seek"):
                body.seek(pos)
        else:
            raw = bytes(body)
        rec = Recorded(method.upper(), str(url), {_text(k).lower(): _text(v) for k, v in dict(headers or {}).items()},
                       raw, channel)
        with self._lock:
            self.records.append(rec)
        return self.respond(rec)

    # -- httpx ---------------------------------------------------------------------------------
    def _httpx_sync(self, transport: Any, request: Any) -> Any:
        import httpx

        canned = self._answer(request.method, request.url, request.headers, request.read(), "httpx")
        return httpx.Response(canned.status, headers=canned.header_items(), content=canned.content(),
                              request=request)

    async def _httpx_async(self, transport: Any, request: Any) -> Any:
        import httpx

        canned = self._answer(request.method, request.url, request.headers, await request.aread(), "httpx")
        return httpx.Response(canned.status, headers=canned.header_items(), content=canned.content(),
                              request=request)

    # -- urllib3 -------------------------------------------------------------------------------
    def _urllib3(self, pool: Any, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        import urllib3

        canned = self._answer(method, url, kw.get("headers"), kw.get("body"), "urllib3")
        return urllib3.HTTPResponse(body=io.BytesIO(canned.content()), headers=canned.header_items(),
                                    status=canned.status, reason="canned",
                                    preload_content=kw.get("preload_content", True), decode_content=True)

    # -- requests ------------------------------------------------------------------------------
    def _requests(self, adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        import requests
        from requests.structures import CaseInsensitiveDict

        canned = self._answer(request.method, request.url, request.headers, request.body, "requests")
        resp = requests.Response()
        resp.status_code = canned.status
        resp.headers = CaseInsensitiveDict(canned.header_items())
        resp._content = canned.content()
        resp.url = request.url
        resp.request = request
        resp.reason = "canned"
        resp.encoding = "utf-8"
        return resp

    # -- botocore ------------------------------------------------------------------------------
    def _botocore_handler(self, is_async: bool) -> Callable[..., Any]:
        from botocore.awsrequest import AWSResponse

        def before_send(request: Any, **_: Any) -> Any:
            canned = self._answer(request.method, request.url, request.headers, request.body, "botocore")
            if is_async:
                from aiobotocore.awsrequest import AioAWSResponse

                return AioAWSResponse(request.url, canned.status, canned.header_items(), _AsyncRaw(canned.content()))
            return AWSResponse(request.url, canned.status, canned.header_items(), _Raw(canned.content()))

        return before_send

    @contextmanager
    def installed(self) -> Iterator[Recorder]:
        import botocore.client
        import httpx
        import requests.adapters
        import urllib3

        recorder = self
        original_init = botocore.client.BaseClient.__init__

        def client_init(client: Any, *args: Any, **kwargs: Any) -> None:
            original_init(client, *args, **kwargs)
            from aiobotocore.client import AioBaseClient

            client.meta.events.register("before-send", recorder._botocore_handler(isinstance(client, AioBaseClient)))

        def sync_send(transport: Any, request: Any) -> Any:
            return recorder._httpx_sync(transport, request)

        async def async_send(transport: Any, request: Any) -> Any:
            return await recorder._httpx_async(transport, request)

        def pool_urlopen(pool: Any, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
            return recorder._urllib3(pool, method, url, redirect, **kw)

        def adapter_send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            return recorder._requests(adapter, request, *args, **kwargs)

        with ExitStack() as stack:
            stack.enter_context(no_network(self.network_attempts))
            stack.enter_context(mock.patch.object(httpx.HTTPTransport, "handle_request", sync_send))
            stack.enter_context(mock.patch.object(httpx.AsyncHTTPTransport, "handle_async_request", async_send))
            stack.enter_context(mock.patch.object(urllib3.PoolManager, "urlopen", pool_urlopen))
            stack.enter_context(mock.patch.object(requests.adapters.HTTPAdapter, "send", adapter_send))
            stack.enter_context(mock.patch.object(botocore.client.BaseClient, "__init__", client_init))
            yield self


def _text(value: Any) -> str:
    """Header names and values as text (botocore keeps some as bytes)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


class _Raw(io.BytesIO):
    """What botocore reads a response body from (``stream()`` for parsed bodies, ``read()`` for
    streaming ones such as S3 GetObject)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


class _AsyncRaw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self) -> bytes:
        return self._data


@contextmanager
def no_network(attempts: list[str]) -> Iterator[None]:
    """Every TCP connect and DNS look-up fails with :class:`NetworkUsed` and is appended to ``attempts``."""

    def refuse(what: str) -> NetworkUsed:
        attempts.append(what)
        return NetworkUsed(f"the production-wiring suite tried a real network call: {what}")

    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise refuse(f"connect {address}")
        return real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(f"getaddrinfo {host}")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(f"create_connection {address}")

    with mock.patch.object(socket.socket, "connect", connect), \
            mock.patch.object(socket, "getaddrinfo", getaddrinfo), \
            mock.patch.object(socket, "create_connection", create_connection):
        yield
