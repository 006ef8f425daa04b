"""The NetSuite emulator's per-request look-ups that replaced scans: the external-id index of
:class:`~m3sh.sandbox.netsuite.state.AccountState` and the verifier's front-pruned nonces. Both must
answer exactly what the scans answered (no server: the state and verifier are called directly)."""

from __future__ import annotations

import pytest
import requests

from m3sh.hooks.netsuite import TbaAuth
from m3sh.sandbox import credentials as cred
from m3sh.sandbox.netsuite.auth import SignedRequest, TbaVerifier
from m3sh.sandbox.netsuite.emulator import NetSuiteEmulator
from m3sh.sandbox.netsuite.errors import NetSuiteApiError


def test_external_id_lookups_follow_writes_deletes_and_direct_edits() -> None:
    emu = NetSuiteEmulator()
    emu.reset("demo")
    acct = next(iter(emu.accounts.values()))
    cid, created = acct.write("customer", {"companyName": "A"}, external_id="C1")
    assert created and acct.find("customer", "eid:C1")["id"] == cid  # type: ignore[index]
    # An update that changes the external id moves the entry.
    rid, created = acct.write("customer", {"externalId": "C2"}, existing=acct.get("customer", cid))
    assert (rid, created) == (cid, False)
    assert acct.find("customer", "eid:C1") is None
    assert acct.find("customer", "eid:C2")["id"] == cid  # type: ignore[index]
    # Records added or removed without write/delete (a seed, a test) are seen too.
    acct.records["customer"]["9999"] = {"id": "9999", "externalId": "C3", "companyName": "X"}
    assert acct.find("customer", "eid:C3")["id"] == "9999"  # type: ignore[index]
    del acct.records["customer"]["9999"]
    assert acct.find("customer", "eid:C3") is None
    acct.delete("customer", cid)
    assert acct.find("customer", "eid:C2") is None
    # A second record can take a freed external id; one already taken is still refused.
    new_id, _ = acct.write("customer", {"companyName": "B"}, external_id="C2")
    assert acct.find("customer", "eid:C2")["id"] == new_id  # type: ignore[index]
    with pytest.raises(NetSuiteApiError, match="already exists"):
        acct.write("customer", {"companyName": "C", "externalId": "C2"})


def _signed(nonce: str, ts: float) -> SignedRequest:
    creds = cred.NETSUITE["default"]
    auth = TbaAuth(creds.consumer_key, creds.consumer_secret, creds.token_id, creds.token_secret,
                   realm=creds.account_id.upper().replace("-", "_"), nonce=lambda: nonce, clock=lambda: ts)
    p = requests.PreparedRequest()
    p.prepare(method="GET", url="http://127.0.0.1:8000/services/rest/record/v1/customer/1", auth=auth)
    return SignedRequest(method="GET", scheme="http", host="127.0.0.1:8000",
                         raw_path="/services/rest/record/v1/customer/1", query_string="",
                         authorization=p.headers["Authorization"])  # type: ignore[arg-type]


def test_nonces_are_refused_within_the_window_and_forgotten_after_it() -> None:
    verifier = TbaVerifier(cred.NETSUITE, window_s=10)
    first = _signed("n1", 1000)
    account = verifier.account_for(first)
    verifier.verify(account, first, now=1000)
    verifier.verify(account, _signed("n2", 1004), now=1004)
    with pytest.raises(NetSuiteApiError):
        verifier.verify(account, first, now=1005)  # a replay inside the window
    assert verifier.failures[-1]["reason"] == "nonce already used"
    # 21 s later (over two windows after n1, not after n2) a new request prunes n1 only.
    verifier.verify(account, _signed("n3", 1021), now=1021)
    assert list(verifier._nonces[account]) == ["n2", "n3"]
