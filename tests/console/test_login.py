"""OIDC login's pure parts: PKCE S256, the authorization URL, the callback's state, the ID token, the roles."""

from __future__ import annotations

import secrets
import time
import urllib.parse

from appliance.config import parse_config
from appliance.console import login
from appliance.console.login import AUDITOR, APPROVER, LoginRefused, Pending, Person
from appliance.identity.jwks import KeySet
from tests.identity.token_keys import jwks, rsa_key

ISSUER = "http://127.0.0.1:39180/realms/appliance"
SETTINGS = parse_config({"console": {"enabled": True, "issuer": ISSUER, "client_id": "appliance-console",
                                     "client_secret_file": "/etc/s", "redirect_uri": "http://127.0.0.1:19443/callback",
                                     "auditor_group": "kafka-auditors", "approver_group": "kafka-admins"}}).console
PENDING = Pending("the-state", "the-nonce", "the-verifier")
KEYS = KeySet.from_jwks(jwks(rsa_key()))


def id_token(now: float | None = None, key=None, **overrides) -> str:
    now = time.time() if now is None else now
    claims = {"iss": ISSUER, "aud": "appliance-console", "azp": "appliance-console", "sub": "u-1", "iat": now,
              "exp": now + 300, "nonce": "the-nonce", "preferred_username": "alice", "groups": ["kafka-admins"]}
    claims.update(overrides)
    return (key or rsa_key()).sign({k: v for k, v in claims.items() if v is not None})


def test_the_code_challenge_is_rfc_7636s_s256():
    # RFC 7636 appendix B
    assert login.code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_login_sends_the_browser_with_state_nonce_and_an_s256_challenge():
    pending, url = login.start_login(f"{ISSUER}/protocol/openid-connect/auth", SETTINGS, secrets.token_bytes)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["response_type"] == "code" and query["scope"] == "openid"
    assert query["client_id"] == "appliance-console" and query["redirect_uri"] == SETTINGS.redirect_uri
    assert query["state"] == pending.state and query["nonce"] == pending.nonce
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == login.code_challenge(pending.code_verifier)
    assert pending.code_verifier not in url
    assert len({pending.state, pending.nonce, pending.code_verifier}) == 3


def test_the_callback_needs_this_browsers_state():
    assert login.check_callback(PENDING, {"state": "the-state", "code": "c0de"}) == "c0de"
    wrong = login.check_callback(PENDING, {"state": "another", "code": "c0de"})
    assert isinstance(wrong, LoginRefused) and "state does not match" in wrong.reason
    lost = login.check_callback(None, {"state": "the-state", "code": "c0de"})
    assert isinstance(lost, LoginRefused) and "no login was started" in lost.reason
    refused = login.check_callback(PENDING, {"error": "access_denied", "error_description": "no"})
    assert isinstance(refused, LoginRefused) and refused.status == 403


def test_an_approvers_id_token_makes_a_person_who_may_vote():
    now = time.time()
    person = login.finish_login(PENDING, id_token(now), KEYS, SETTINGS, now)
    assert isinstance(person, Person)
    assert (person.name, person.roles, person.may_vote) == ("alice", (AUDITOR, APPROVER), True)
    assert person.until == now + SETTINGS.session_s
    assert Person.from_dict(person.as_dict(), now + 1) == person
    assert Person.from_dict(person.as_dict(), person.until) is None  # a login ends


def test_an_auditor_reads_and_anyone_else_is_refused_after_login():
    now = time.time()
    auditor = login.finish_login(PENDING, id_token(now, groups=["kafka-auditors"]), KEYS, SETTINGS, now)
    assert auditor.roles == (AUDITOR,) and not auditor.may_vote
    other = login.finish_login(PENDING, id_token(now, groups=["payments"]), KEYS, SETTINGS, now)
    assert isinstance(other, LoginRefused) and other.status == 403
    assert "alice is signed in but is in neither the auditor group (kafka-auditors) nor the approver group" \
        in other.reason


def test_an_id_token_that_is_not_this_logins_is_refused():
    now = time.time()
    cases = {
        "nonce": (id_token(now, nonce="another"), "nonce is not this login's"),
        "no nonce": (id_token(now, nonce=None), "no 'nonce' claim"),
        "issuer": (id_token(now, iss="http://evil/realms/x"), "wrong-issuer"),
        "audience": (id_token(now, aud="other-client"), "wrong-audience"),
        "azp": (id_token(now, azp="other-client"), "issued to client 'other-client'"),
        "expired": (id_token(now - 1000), "expired"),
        "signature": (id_token(now, key=rsa_key("rsa-1", 3072)), "bad-signature"),
        "operator": (id_token(now, preferred_username="operator:root"), "cannot be a console user's"),
        "missing": (None, "no id_token"),
    }
    for name, (token, words) in cases.items():
        refused = login.finish_login(PENDING, token, KEYS, SETTINGS, now)
        assert isinstance(refused, LoginRefused), name
        assert words in refused.reason, (name, refused.reason)
