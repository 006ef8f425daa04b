"""The NetSuite hook's own TBA signer (:class:`m3sh.hooks.netsuite.TbaAuth`) against oauthlib's.

The hook signs with a lean HMAC-SHA256 signer for CPU; these tests pin that it produces exactly the
signature and header parameters ``requests_oauthlib.OAuth1`` (oauthlib) produces for the same nonce
and timestamp, on the URLs NetSuite calls take (external ids with reserved characters, repeated and
blank query parameters, default and explicit ports), and that the sandbox's verifier accepts it.
"""

from __future__ import annotations

import pytest
import requests
from oauthlib.oauth1.rfc5849 import utils as oauth_utils
from requests_oauthlib import OAuth1

from m3sh.hooks.netsuite import NetSuiteHook, TbaAuth
from m3sh.sandbox import credentials as cred
from m3sh.sandbox.netsuite.auth import SignedRequest, TbaVerifier

KEYS = ("ck-0a1b", "cs&secret/+=", "tk-2c3d", "ts é~secret", "1234567_SB1")
NONCE, TIMESTAMP = "4f1c0de0a7b9e6c2d3f4a5b6c7d8e9f0", 1_764_680_000


def _prepare(url: str, method: str = "PUT", params: dict[str, str] | None = None, auth: object = None,
             body: object = None) -> requests.PreparedRequest:
    p = requests.PreparedRequest()
    p.prepare(method=method, url=url, params=params, json=body, auth=auth,  # type: ignore[arg-type]
              headers={"Accept": "application/json", "Content-Type": "application/json"})
    return p


def _oauth_params(p: requests.PreparedRequest) -> dict[str, str]:
    header = p.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header  # requests_oauthlib sets bytes
    return {k: oauth_utils.unescape(v) if k.startswith("oauth_") else v
            for k, v in oauth_utils.parse_authorization_header(header)}


@pytest.mark.parametrize(("method", "url", "params"), [
    ("PUT", "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/invoice/"
            f"{NetSuiteHook._eid('BILL/2030 ü&x=1')}", {"replace": "item"}),
    ("POST", "http://127.0.0.1:19653/services/rest/query/v1/suiteql", {"limit": "1000", "offset": "0"}),
    ("GET", "https://HOST.example.com:443/services/rest/record/v1/customer/eid:a~b?fields=id,companyName&x=&x=a b",
     None),
    ("DELETE", "http://127.0.0.1:80/services/rest/record/v1/customer/42", None),
])
def test_signature_matches_oauthlib(method: str, url: str, params: dict[str, str] | None) -> None:
    ck, cs, tk, ts, realm = KEYS
    ours = _prepare(url, method, params, TbaAuth(ck, cs, tk, ts, realm, nonce=lambda: NONCE,
                                                 clock=lambda: TIMESTAMP + 0.9), {"q": "x"})
    theirs = _prepare(url, method, params, OAuth1(ck, cs, tk, ts, realm=realm, signature_method="HMAC-SHA256",
                                                  nonce=NONCE, timestamp=str(TIMESTAMP)), {"q": "x"})
    assert ours.url == theirs.url
    assert _oauth_params(ours) == _oauth_params(theirs)
    assert _oauth_params(ours)["realm"] == realm


def test_each_request_gets_a_fresh_nonce_and_a_form_body_is_refused() -> None:
    auth = TbaAuth(*KEYS)
    url = "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/customer/1"
    first, second = (_oauth_params(_prepare(url, "GET", auth=auth))["oauth_nonce"] for _ in range(2))
    assert first != second
    form = requests.PreparedRequest()
    with pytest.raises(ValueError, match="form-encoded"):
        form.prepare(method="POST", url=url, data={"a": "1"}, auth=auth)


def test_the_sandbox_verifier_accepts_it() -> None:
    creds = cred.NETSUITE["default"]
    verifier = TbaVerifier(cred.NETSUITE)
    auth = TbaAuth(creds.consumer_key, creds.consumer_secret, creds.token_id, creds.token_secret,
                   realm=creds.account_id.upper().replace("-", "_"))
    p = _prepare("http://127.0.0.1:8000/services/rest/record/v1/invoice/eid:BILL%2F1", params={"replace": "item"},
                 auth=auth, body={"memo": "x"})
    path, _, query = str(p.url).partition("?")
    body = p.body.encode() if isinstance(p.body, str) else p.body or b""
    signed = SignedRequest(method="PUT", scheme="http", host="127.0.0.1:8000", raw_path=path.split("8000", 1)[1],
                           query_string=query, authorization=p.headers["Authorization"], body=body)
    account = verifier.account_for(signed)
    verifier.verify(account, signed)  # raises a 401 NetSuiteApiError on any mismatch
    assert not verifier.failures
