"""The workload's SASL, answered by the proxy (pure): tokens and static credentials, bound to the enrolment.

Tokens are minted by a test key and validated for real (`appliance.identity.tokens`); the shell's part,
fetching keys, is replaced by handing the session the validation result as the shell would.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import scramp
from kio.schema.errors import ErrorCode

from appliance.audit.records import Authentication, SessionClosed
from appliance.identity.binding import AuthMode, Binding
from appliance.identity.jwks import KeySet
from appliance.identity.revocations import Revocation, Revocations
from appliance.identity.sasl import format_oauthbearer
from appliance.identity.static_credentials import load_static_credentials
from appliance.identity.tokens import TokenRules, validate
from appliance.identity.workloads import WorkloadIdentity
from appliance.kafka import apis, codec
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Pattern, Principal
from appliance.policy.parser import parse_policy
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, SendToClient, SendToUpstream, VerifyToken
from appliance.proxy.session import Session
from tests.identity.token_keys import AUDIENCE, ISSUER, rsa_key
from tests.proxy.test_session import PLAIN, authenticate, handshake_ok, metadata, of
from tests.proxy.test_session_hostile import request

NOW = 1_800_000_000.0
KEY = rsa_key()
RULES = TokenRules(issuer=ISSUER, audiences=(AUDIENCE,))
POLICY = parse_policy("""
version: 1
deny_static_credentials: [legacy-only-tokens]
rules:
  - name: everything
    identities: ["*"]
    operations: [produce, consume, describe]
    topics: ["*"]
""", source="test")


def token(sub="orders-svc", groups=("payments",), lifetime=300.0, **extra) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": int(NOW), "exp": int(NOW + lifetime),
              "groups": list(groups), "azp": "orders-client", "jti": "jti-1", **extra}
    return KEY.sign(claims)


def verified(raw: str, now: float = NOW):
    return validate(raw, KeySet.from_jwks({"keys": [KEY.jwk()]}), RULES, now)


def session(mode=AuthMode.CGROUP_TOKEN, identity="orders", groups=("team",), accepts=(), statics=None,
            revocations=None, max_lifetime_s=3600.0):
    binding = Binding(identity, groups, mode, tuple(Pattern.parse(a) for a in accepts))

    class Configured:  # the shell's providers: configured, verification done by the test
        configured = True

    workloads = WorkloadIdentity(statics=statics, revocations=revocations, max_lifetime_s=max_lifetime_s,
                                 policy=lambda: POLICY)
    workloads.providers = Configured()
    enforcer_for = lambda principal: Enforcer(principal, lambda: POLICY)  # noqa: E731
    s = Session("s1", PLAIN, None if mode.requires_proof else enforcer_for(binding.principal),
                max_frame_bytes=1 << 20, now=NOW, workload_sasl=workloads.sasl_for(binding), enforcer_for=enforcer_for)
    s.handle(ev.UpstreamConnected(), NOW)
    s.handle(ev.UpstreamData(handshake_ok()), NOW)
    assert not of(s.handle(ev.UpstreamData(authenticate()), NOW), CloseConnection)
    return s


def handshake(mechanism="OAUTHBEARER", correlation_id=10):
    return request(apis.SASL_HANDSHAKE, 1, correlation_id=correlation_id, mechanism=mechanism)


def sasl_authenticate(auth_bytes: bytes, correlation_id=11, version=2):
    return request(apis.SASL_AUTHENTICATE, version, correlation_id=correlation_id, auth_bytes=auth_bytes)


def answers(out, key, version):
    data = b"".join(c.data for c in of(out, SendToClient))
    found = []
    while data:
        size = int.from_bytes(data[:4], "big")
        found.append(codec.decode_response(data[:4 + size], key, version))
        data = data[4 + size:]
    return found


def login(s, raw: str, now=NOW, version=2):
    """Handshake and authenticate with a token; the verification result handed in as the shell would."""
    s.handle(ev.ClientData(handshake()), now)
    out = s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw), version=version)), now)
    [asked] = of(out, VerifyToken)
    assert asked.token == raw and raw not in repr(asked)  # a credential never lands in a log line
    return s.handle(ev.TokenVerified(verified(raw, now)), now)


def authentications(out) -> list[Authentication]:
    return [a.record for a in of(out, Audit) if isinstance(a.record, Authentication)]


def closed(out) -> SessionClosed | None:
    return next((a.record for a in of(out, Audit) if isinstance(a.record, SessionClosed)), None)


def test_a_token_agreeing_with_the_enrolment_authenticates_and_the_session_lifetime_is_the_tokens():
    s = session(accepts=("orders-svc",))
    out = login(s, token(lifetime=300))
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.none
    assert answer.session_lifetime == datetime.timedelta(seconds=300)
    [auth] = authentications(out)
    assert (auth.outcome, auth.kind, auth.method, auth.identity, auth.subject, auth.client_id, auth.jti) == (
        "ok", "initial", "token", "orders", "orders-svc", "orders-client", "jti-1")
    assert auth.groups == '["payments", "team"]'  # the enrolment's groups and the token's
    assert s.enforcer.principal == Principal("orders", frozenset({"team", "payments"}))
    assert of(s.handle(ev.ClientData(metadata()), NOW), SendToUpstream)


def test_the_session_lifetime_is_capped_by_the_configured_maximum():
    s = session(accepts=("orders-svc",), max_lifetime_s=60)
    [answer] = answers(login(s, token(lifetime=3600)), apis.SASL_AUTHENTICATE, 2)
    assert answer.session_lifetime == datetime.timedelta(seconds=60) and s.reauthenticate_by == NOW + 60


def test_a_valid_token_from_the_wrong_cgroup_is_a_mismatch_refused_and_closed():
    s = session(identity="billing", accepts=("billing-svc",))
    out = login(s, token(sub="orders-svc"))
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert "identity mismatch" in answer.error_message and "enrolled as 'billing'" in answer.error_message
    [auth] = authentications(out)
    assert auth.outcome == "refused" and "mismatch" in auth.reason
    assert "SASL authentication failed: identity mismatch" in closed(out).close_reason
    assert of(out, CloseConnection)


def test_token_mode_takes_the_tokens_identity_and_refuses_requests_before_authentication():
    s = session(mode=AuthMode.TOKEN, identity="ci-pool")
    out = s.handle(ev.ClientData(metadata()), NOW)
    assert not of(out, SendToUpstream)
    assert "arrived before the workload authenticated" in closed(out).close_reason
    s = session(mode=AuthMode.TOKEN, identity="ci-pool")
    api_versions = request(apis.API_VERSIONS, 3, correlation_id=9, client_software_name="t",
                           client_software_version="1")
    assert of(s.handle(ev.ClientData(api_versions), NOW), SendToUpstream)  # ApiVersions is allowed first
    login(s, token(sub="ci-build-7", groups=("ci",)))
    assert s.enforcer.principal == Principal("ci-build-7", frozenset({"ci"}))


def test_a_jwt_svid_names_its_spiffe_id_as_the_identity_and_binds_by_trust_domain_path():
    """A SPIFFE JWT-SVID: `sub` is the SPIFFE ID, and it carries no groups claim."""
    svid = "spiffe://example.org/ns/payments/sa/orders"
    s = session(mode=AuthMode.TOKEN, identity="spire-pool")
    login(s, token(sub=svid, groups=()))
    assert s.enforcer.principal == Principal(svid, frozenset())
    s = session(identity="orders", accepts=("prefix:spiffe://example.org/ns/payments/",))
    [answer] = answers(login(s, token(sub=svid, groups=())), apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.none
    s = session(identity="orders", accepts=("prefix:spiffe://example.org/ns/payments/",))
    out = login(s, token(sub="spiffe://other.example/ns/payments/sa/orders", groups=()))
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed and "identity mismatch" in answer.error_message


def test_a_group_in_the_token_that_is_a_spiffe_id_is_refused():
    s = session(mode=AuthMode.TOKEN, identity="spire-pool")
    out = login(s, token(sub="svc", groups=("spiffe://example.org/ns/x",)))
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert "a group in the token's groups claim" in answer.error_message


def test_requests_pipelined_behind_the_token_wait_for_its_verification():
    s = session(accepts=("orders-svc",))
    raw = token()
    s.handle(ev.ClientData(handshake()), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw)) + metadata(correlation_id=20)), NOW)
    assert of(out, VerifyToken) and not of(out, SendToUpstream)
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none
    assert of(out, SendToUpstream)  # the metadata request, decided for the authenticated principal


def test_a_refused_token_is_answered_with_the_verifiers_reason():
    s = session()
    raw = token(lifetime=-120)  # expired two minutes ago, beyond the leeway
    s.handle(ev.ClientData(handshake()), NOW)
    s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw))), NOW)
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed and "expired" in answer.error_message
    assert closed(out) is not None


@pytest.mark.parametrize("auth_bytes, fault", [
    (b"p=tls-unique,,\x01auth=Bearer x\x01\x01", "channel binding"),
    (b"n,,\x01auth=Basic abc\x01\x01", "Bearer"),
    (b"n,,\x01auth=Bearer " + b"a" * 20000 + b"\x01\x01", "allowed"),
    (b"\xff\xfe", "UTF-8"),
])
def test_a_malformed_oauthbearer_message_is_refused_naming_the_fault_and_no_verification_runs(auth_bytes, fault):
    s = session()
    s.handle(ev.ClientData(handshake()), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(auth_bytes)), NOW)
    assert not of(out, VerifyToken)
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert fault.lower() in answer.error_message.lower(), answer.error_message
    assert closed(out) is not None


def test_reauthentication_keeps_the_identity_and_renews_the_lifetime():
    s = session(accepts=("orders-svc",))
    login(s, token(lifetime=100))
    later = NOW + 90
    fresh = token(lifetime=300, iat=int(later), exp=int(later + 300), jti="jti-2")
    out = login(s, fresh, now=later)
    [auth] = authentications(out)
    assert (auth.kind, auth.outcome, auth.jti) == ("reauth", "ok", "jti-2")
    assert s.reauthenticate_by == later + 300 and not s.closed


def test_reauthentication_as_another_identity_closes_the_session():
    s = session(mode=AuthMode.TOKEN, identity="pool")
    login(s, token(sub="alice"))
    out = login(s, token(sub="mallory", jti="jti-2"))
    assert "may not change mid-session" in answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message
    assert "identity changed" in closed(out).close_reason


def test_reauthentication_with_another_mechanism_is_not_offered():
    s = session(accepts=("orders-svc",))
    login(s, token())
    out = s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    [answer] = answers(out, apis.SASL_HANDSHAKE, 1)
    assert answer.error_code == ErrorCode.unsupported_sasl_mechanism and answer.mechanisms == ("OAUTHBEARER",)


def test_a_revoked_subject_is_refused():
    revoked = Revocations((Revocation("subject", "orders-svc", NOW - 5, "root (uid 0)", "key leaked"),))
    s = session(accepts=("orders-svc",), revocations=revoked)
    out = login(s, token())
    assert "revoked" in answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message
    assert "key leaked" in closed(out).close_reason


def test_sasl_authenticate_v0_has_no_lifetime_field_but_the_session_still_expires():
    s = session(accepts=("orders-svc",))
    [answer] = answers(login(s, token(lifetime=120), version=0), apis.SASL_AUTHENTICATE, 0)
    assert answer.error_code == ErrorCode.none and s.reauthenticate_by == NOW + 120


# --- static migration credentials --------------------------------------------------------------------

@pytest.fixture
def statics(tmp_path):
    path = tmp_path / "static-credentials.yaml"
    path.write_text("""
credentials:
  - {mechanism: PLAIN, username: orders-legacy, password: "pw-orders", identity: orders, groups: [legacy]}
  - {mechanism: SCRAM-SHA-512, username: orders-scram, password: "pw-scram", identity: orders}
  - {mechanism: PLAIN, username: tokens-only, password: "pw-x", identity: legacy-only-tokens}
""")
    os.chmod(path, 0o600)
    return load_static_credentials(path, owner_uid=os.getuid())


def plain(username, password):
    return b"\0" + username.encode() + b"\0" + password.encode()


def test_static_plain_credentials_authenticate_in_cgroup_mode_when_they_name_the_enrolled_identity(statics):
    s = session(mode=AuthMode.CGROUP, statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(plain("orders-legacy", "pw-orders"))), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none
    [auth] = authentications(out)
    assert (auth.method, auth.username, auth.identity) == ("static", "orders-legacy", "orders")
    assert auth.reason.startswith("static credential presented (PLAIN user 'orders-legacy')")


def test_unknown_static_credentials_name_the_mechanism_and_what_the_appliance_accepts(statics):
    s = session(mode=AuthMode.CGROUP, statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(plain("orders-legacy", "wrong"))), NOW)
    message = answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message
    assert "PLAIN credentials for user 'orders-legacy' are not known" in message and "OAUTHBEARER" in message
    assert "wrong" not in message


def test_static_credentials_the_policy_denies_are_refused(statics):
    s = session(mode=AuthMode.TOKEN, statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(plain("tokens-only", "pw-x"))), NOW)
    assert "static credentials are not accepted" in answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message


def test_scram_static_credentials_run_the_whole_exchange(statics):
    s = session(mode=AuthMode.CGROUP, statics=statics)
    s.handle(ev.ClientData(handshake("SCRAM-SHA-512")), NOW)
    client = scramp.ScramClient(["SCRAM-SHA-512"], "orders-scram", "pw-scram")
    out = s.handle(ev.ClientData(sasl_authenticate(client.get_client_first().encode())), NOW)
    first = answers(out, apis.SASL_AUTHENTICATE, 2)[0]
    assert first.error_code == ErrorCode.none
    client.set_server_first(first.auth_bytes.decode())
    out = s.handle(ev.ClientData(sasl_authenticate(client.get_client_final().encode(), correlation_id=12)), NOW)
    final = answers(out, apis.SASL_AUTHENTICATE, 2)[0]
    assert final.error_code == ErrorCode.none
    client.set_server_final(final.auth_bytes.decode())  # the server proved it knows the credential too
    assert authentications(out)[0].identity == "orders"


def test_a_static_credential_for_another_identity_is_a_mismatch_in_cgroup_mode(statics):
    s = session(mode=AuthMode.CGROUP, identity="billing", statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(plain("orders-legacy", "pw-orders"))), NOW)
    assert "identity mismatch" in answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message


def test_no_provider_configured_says_so():
    binding = Binding("orders", (), AuthMode.CGROUP)
    s = Session("s1", PLAIN, Enforcer(binding.principal, lambda: POLICY), max_frame_bytes=1 << 20, now=NOW,
                workload_sasl=WorkloadIdentity().sasl_for(binding))
    s.handle(ev.UpstreamConnected(), NOW)
    s.handle(ev.UpstreamData(handshake_ok()), NOW)
    s.handle(ev.UpstreamData(authenticate()), NOW)
    s.handle(ev.ClientData(handshake()), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(token()))), NOW)
    assert "no identity provider is configured" in answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_message


def test_a_workload_that_floods_while_its_token_is_verified_is_cut_off_at_the_hold_limit():
    s = session(accepts=("orders-svc",))
    s.max_held_bytes = 4096
    s.handle(ev.ClientData(handshake()), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(token()))), NOW)
    assert of(out, VerifyToken)
    out = []
    for _ in range(10):
        out += s.handle(ev.ClientData(metadata() * 20), NOW)
    assert not of(out, SendToUpstream)
    assert "while its token was being verified" in closed(out).close_reason
    assert s.handle(ev.TokenVerified(verified(token())), NOW) == []  # the late answer finds a closed session


def test_a_token_mode_workload_cannot_smuggle_a_produce_before_authenticating():
    from tests.proxy.test_session import produce
    s = session(mode=AuthMode.TOKEN, identity="pool")
    out = s.handle(ev.ClientData(handshake() + produce(-1)), NOW)
    assert not of(out, SendToUpstream)
    assert "in the middle of a SASL exchange" in closed(out).close_reason
