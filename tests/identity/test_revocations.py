"""Revocations: the file `appliance revoke` writes and `serve` reads, and what each kind covers."""

from __future__ import annotations

import json
import os
import stat

import pytest

from appliance.identity.binding import Proof
from appliance.identity.revocations import Revocation, RevocationError, Revocations, RevocationStore

TOKEN = Proof("token", "OAUTHBEARER", "orders", ("payments",), subject="sub-1", issuer="https://idp",
              client_id="orders-client", jti="jti-1", issued_at=0, expires_at=100)
STATIC = Proof("static", "PLAIN", "legacy", (), username="legacy-plain")


@pytest.mark.parametrize("kind, value, covers_token, covers_static", [
    ("subject", "sub-1", True, False),
    ("jti", "jti-1", True, False),
    ("client_id", "orders-client", True, False),
    ("identity", "orders", True, False),
    ("identity", "legacy", False, True),
    ("subject", "sub-2", False, False),
])
def test_each_kind_covers_what_it_names(kind, value, covers_token, covers_static):
    revocation = Revocation(kind, value, at=10, by="root (uid 0)", reason="r")
    assert revocation.covers(TOKEN, "orders", now=20) is covers_token
    assert revocation.covers(STATIC, "legacy", now=20) is covers_static


def test_an_identity_revocation_covers_sessions_without_a_proof_too():
    assert Revocations((Revocation("identity", "orders", 0, "root", "r"),)).covering(None, "orders", 5) is not None


def test_a_revocation_lapses_at_until():
    revocation = Revocation("jti", "jti-1", at=10, by="root", reason="r", until=50)
    assert revocation.covers(TOKEN, "orders", now=49) and not revocation.covers(TOKEN, "orders", now=50)


def test_the_store_keeps_revocations_root_only_drops_lapsed_ones_and_withdraws(tmp_path):
    store = RevocationStore(tmp_path / "revocations.json")
    assert store.load().entries == () and store.stamp() == 0
    store.revoke("jti", "old", by="root", reason="r", until=105, now=100)
    store.revoke("subject", "sub-1", by="alice (uid 0)", reason="laptop stolen", until=None, now=200)
    loaded = store.load().entries
    assert [(r.kind, r.value, r.by, r.reason) for r in loaded] == [("subject", "sub-1", "alice (uid 0)", "laptop stolen")]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.withdraw("subject", "sub-1") == 1 and store.load().entries == ()
    assert store.withdraw("subject", "sub-1") == 0


@pytest.mark.parametrize("kind, value, until, message", [
    ("password", "x", None, "not something that can be revoked"),
    ("subject", "", None, "1-1024 characters"),
    ("subject", "s", 50.0, "in the past"),
])
def test_bad_revocations_are_refused_naming_why(tmp_path, kind, value, until, message):
    with pytest.raises(RevocationError, match=message):
        RevocationStore(tmp_path / "r.json").revoke(kind, value, by="root", reason="r", until=until, now=100)


@pytest.mark.parametrize("text, message", [
    ("{", "damaged"),
    (json.dumps({"revocations": [{"kind": "subject"}]}), "damaged"),
    (json.dumps({"revocations": [{"kind": "token", "value": "x", "at": 1, "by": "b", "reason": "r"}]}),
     "unknown revocation kind 'token'"),
])
def test_a_damaged_file_is_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "revocations.json"
    path.write_text(text)
    with pytest.raises(RevocationError, match=message) as caught:
        RevocationStore(path).load()
    assert str(path) in str(caught.value)
