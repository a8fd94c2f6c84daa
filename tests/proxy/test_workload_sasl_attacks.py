"""Attacks on the workload's SASL, as pure session tests: each one was found (or tried) against the real
appliance (tests/adversarial/test_workload_sasl_attacks.py) and is pinned here without sockets.

Tokens are minted by a test key and validated for real; the shell's verification is handed in as the
shell would (`tests.proxy.test_workload_sasl.login`).
"""

from __future__ import annotations

import scramp
from kio.schema.errors import ErrorCode

from appliance.identity.binding import AuthMode
from appliance.identity.revocations import Revocation, Revocations
from appliance.identity.sasl import format_oauthbearer
from appliance.kafka import apis
from appliance.policy import permissions
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, SendToClient, SendToUpstream, VerifyToken
from tests.proxy.test_session import of, produce
from tests.proxy.test_session_hostile import request
from tests.proxy.test_workload_sasl import (NOW, answers, authentications, closed, handshake, login, sasl_authenticate,
                                            session, statics, token, verified)

__all__ = ["statics"]  # the fixture, re-used


def _refusal(out) -> str:
    [answer] = answers(out, apis.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed, answer
    return answer.error_message


# --- the authorization id: a client may not ask to act as someone its proof does not name ------------------

def test_an_oauthbearer_authzid_other_than_the_tokens_identity_is_refused():
    s = session(mode=AuthMode.TOKEN, identity="pool")
    raw = token(sub="alice")
    s.handle(ev.ClientData(handshake()), NOW)
    [asked] = of(s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw, authzid="admin"))), NOW),
                 VerifyToken)
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    message = _refusal(out)
    assert "authorization id 'admin'" in message and "token's identity 'alice'" in message, message
    assert not s.sasl.authenticated and closed(out) is not None
    assert authentications(out)[0].outcome == "refused"


def test_an_oauthbearer_authzid_naming_the_tokens_identity_is_accepted():
    s = session(mode=AuthMode.TOKEN, identity="pool")
    raw = token(sub="alice")
    s.handle(ev.ClientData(handshake()), NOW)
    s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw, authzid="alice"))), NOW)
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none
    assert s.sasl.principal.identity == "alice"


def test_a_plain_authzid_other_than_the_username_is_refused_even_with_the_right_password(statics):
    s = session(mode=AuthMode.TOKEN, identity="pool", statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(b"admin\0orders-legacy\0pw-orders")), NOW)
    message = _refusal(out)
    assert "authorization id 'admin' is not the username 'orders-legacy'" in message, message
    assert "pw-orders" not in message and not s.sasl.authenticated and closed(out) is not None
    s = session(mode=AuthMode.TOKEN, identity="pool", statics=statics)  # the username itself may be given
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    out = s.handle(ev.ClientData(sasl_authenticate(b"orders-legacy\0orders-legacy\0pw-orders")), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none


# --- SaslHandshake v0: raw SASL tokens follow it, which the proxy does not read --------------------------

def test_sasl_handshake_v0_is_answered_unsupported_version_though_apiversions_still_lists_it():
    # librdkafka (Debian's kcat, 2.0.2) refuses to do SASL unless ApiVersions lists SaslHandshake v0.
    assert permissions.offered(apis.SASL_HANDSHAKE) == apis.VersionRange(0, 1)
    for mode in (AuthMode.TOKEN, AuthMode.CGROUP):
        s = session(mode=mode, identity="orders")
        out = s.handle(ev.ClientData(request(apis.SASL_HANDSHAKE, 0, correlation_id=10, mechanism="PLAIN")), NOW)
        [answer] = answers(out, apis.SASL_HANDSHAKE, 0)
        assert answer.error_code == ErrorCode.unsupported_version, answer
        assert not s.sasl.in_exchange  # no mechanism chosen: a raw token after it is not read as one
        assert not of(out, SendToUpstream)


# --- revocation: an identity revoked is refused also where an enrolment accepts its tokens ------------------

def test_a_revoked_identity_is_refused_from_a_cgroup_that_accepts_its_tokens():
    revoked = Revocations((Revocation("identity", "ci-build-7", NOW - 5, "root (uid 0)", "runner compromised"),))
    s = session(mode=AuthMode.CGROUP_TOKEN, identity="ci", accepts=("prefix:ci-",), revocations=revoked)
    out = login(s, token(sub="ci-build-7"))
    assert "revoked" in _refusal(out) and "runner compromised" in closed(out).close_reason
    assert not s.sasl.authenticated


def test_a_revoked_identity_still_covers_the_sessions_own_name():
    revoked = Revocations((Revocation("identity", "ci", NOW - 5, "root (uid 0)", "x"),))
    s = session(mode=AuthMode.CGROUP_TOKEN, identity="ci", accepts=("prefix:ci-",), revocations=revoked)
    assert "revoked" in _refusal(login(s, token(sub="ci-build-7")))


# --- attacks that held, pinned --------------------------------------------------------------------------

def test_a_replayed_scram_client_final_fails_on_the_new_exchanges_nonce(statics):
    def run(s):
        s.handle(ev.ClientData(handshake("SCRAM-SHA-512")), NOW)
        client = scramp.ScramClient(["SCRAM-SHA-512"], "orders-scram", "pw-scram")
        out = s.handle(ev.ClientData(sasl_authenticate(client.get_client_first().encode())), NOW)
        client.set_server_first(answers(out, apis.SASL_AUTHENTICATE, 2)[0].auth_bytes.decode())
        return client
    first = session(mode=AuthMode.CGROUP, statics=statics)
    final = run(first).get_client_final().encode()
    out = first.handle(ev.ClientData(sasl_authenticate(final, correlation_id=12)), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none
    replayed = session(mode=AuthMode.CGROUP, statics=statics)
    run(replayed)
    out = replayed.handle(ev.ClientData(sasl_authenticate(final, correlation_id=12)), NOW)
    assert "nonce is not the one this exchange started with" in _refusal(out)
    assert closed(out) is not None


def test_a_produce_pipelined_behind_a_refused_token_is_never_forwarded():
    s = session(mode=AuthMode.TOKEN, identity="pool")
    raw = token(lifetime=-600)  # expired
    out = s.handle(ev.ClientData(handshake() + sasl_authenticate(format_oauthbearer(raw)) + produce(-1)), NOW)
    assert of(out, VerifyToken) and not of(out, SendToUpstream)
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    assert "expired" in _refusal(out) and not of(out, SendToUpstream)
    assert s.handle(ev.ClientData(produce(-1, correlation_id=30)), NOW) == []  # closed: nothing more is read


def test_handshake_then_authenticate_bytes_of_another_mechanism_are_refused_by_the_chosen_ones_parser(statics):
    s = session(mode=AuthMode.TOKEN, identity="pool", statics=statics)
    s.handle(ev.ClientData(handshake("PLAIN")), NOW)
    assert "PLAIN message" in _refusal(s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(token()))), NOW))
    s = session(mode=AuthMode.TOKEN, identity="pool", statics=statics)
    s.handle(ev.ClientData(handshake()), NOW)
    message = _refusal(s.handle(ev.ClientData(sasl_authenticate(b"n,,n=orders-scram,r=abcdefgh")), NOW))
    assert "OAUTHBEARER initial response" in message


def test_reauthentication_with_a_request_in_flight_answers_in_order_and_holds_what_follows_until_the_verdict():
    from tests.proxy.test_session import metadata, metadata_response
    s = session(accepts=("orders-svc",))
    login(s, token(lifetime=100))
    assert of(s.handle(ev.ClientData(metadata(correlation_id=40)), NOW), SendToUpstream)  # in flight
    raw = token(jti="jti-2")
    out = s.handle(ev.ClientData(handshake(correlation_id=41) + sasl_authenticate(format_oauthbearer(raw), 42)
                                 + metadata(correlation_id=43)), NOW)
    assert of(out, VerifyToken) and not of(out, SendToUpstream)
    # The broker answers the earlier request while the token is verified: it reaches the client; the
    # handshake's answer, queued behind it, follows it.
    out = s.handle(ev.UpstreamData(metadata_response(40)), NOW)
    sent = b"".join(c.data for c in of(out, SendToClient))
    assert int.from_bytes(sent[4:8], "big") == 40
    out = s.handle(ev.TokenVerified(verified(raw)), NOW)
    assert answers(out, apis.SASL_AUTHENTICATE, 2)[0].error_code == ErrorCode.none
    assert of(out, SendToUpstream)  # the request behind the re-authentication, only now


def test_a_workload_that_vanishes_mid_verification_leaves_its_sasl_authenticate_audited_as_unanswered():
    from appliance.audit.records import Operation
    s = session(accepts=("orders-svc",))
    raw = token()
    s.handle(ev.ClientData(handshake()), NOW)
    assert of(s.handle(ev.ClientData(sasl_authenticate(format_oauthbearer(raw), correlation_id=11)), NOW), VerifyToken)
    out = s.handle(ev.ClientClosed("client closed the connection"), NOW)
    ops = [a.record for a in of(out, Audit) if isinstance(a.record, Operation)]
    assert [(o.api_name, o.correlation_id, o.outcome) for o in ops] == [("SaslAuthenticate", 11, "unanswered")]
    assert "client closed the connection" in closed(out).close_reason
    assert s.handle(ev.TokenVerified(verified(raw)), NOW) == []  # the verifier's late answer finds it closed
