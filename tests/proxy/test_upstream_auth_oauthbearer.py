"""The appliance's OAUTHBEARER exchange with a broker (RFC 7628), sans-io: frames in, frames out."""

from __future__ import annotations

import datetime
import json

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_reader

from appliance.broker.credentials import OAuthBearerCredentials
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.identity.sasl import parse_oauthbearer
from appliance.kafka import codec
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, SendToUpstream
from appliance.proxy.upstream_auth import UpstreamAuthenticator, UpstreamAuthError
from tests.kafka.builders import response_frame
from tests.proxy.test_session import authenticate, metadata, new_session, of

TOKEN = BearerToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", 0.0, 300.0)


def handshake(error=ErrorCode.none, mechanisms=("OAUTHBEARER",)):
    return response_frame(SaslHandshakeResponse(error_code=error, mechanisms=mechanisms),
                          correlation_id=1, flexible_header=False)


def body(cls, frame: bytes):
    return entity_reader(cls)(frame, codec.parse_request_header(frame).body_offset)[0]


def test_the_token_goes_in_the_rfc7628_initial_response_and_success_ends_the_exchange():
    auth = UpstreamAuthenticator(TOKEN)
    assert body(SaslHandshakeRequest, auth.start()).mechanism == "OAUTHBEARER"
    initial = body(SaslAuthenticateRequest, auth.receive(handshake())).auth_bytes
    assert initial == b"n,,\x01auth=Bearer " + TOKEN.value.encode() + b"\x01\x01"
    assert parse_oauthbearer(initial).token == TOKEN.value
    assert auth.receive(response_frame(SaslAuthenticateResponse(
        error_code=ErrorCode.none, error_message=None, auth_bytes=b"",
        session_lifetime=datetime.timedelta(minutes=4)), correlation_id=2, flexible_header=True)) is None
    assert auth.done and auth.session_lifetime_s == 240.0


def test_the_broker_s_error_challenge_is_acknowledged_then_the_failure_names_both():
    auth = UpstreamAuthenticator(TOKEN)
    auth.start()
    auth.receive(handshake())
    challenge = json.dumps({"status": "invalid_token", "scope": "kafka"}).encode()
    ack = auth.receive(authenticate(auth_bytes=challenge))
    assert body(SaslAuthenticateRequest, ack).auth_bytes == b"\x01"
    assert not auth.done
    with pytest.raises(UpstreamAuthError) as e:
        auth.receive(authenticate(ErrorCode.sasl_authentication_failed, correlation_id=3,
                                  message="Authentication failed due to invalid credentials with SASL mechanism "
                                          "OAUTHBEARER"))
    text = str(e.value)
    assert "broker refused the appliance's OAUTHBEARER token: SASL_AUTHENTICATION_FAILED" in text
    assert "invalid credentials with SASL mechanism OAUTHBEARER" in text
    assert "status invalid_token, scope kafka" in text
    assert TOKEN.value not in text


def test_success_after_an_error_challenge_is_not_taken_as_accepted():
    auth = UpstreamAuthenticator(TOKEN)
    auth.start()
    auth.receive(handshake())
    auth.receive(authenticate(auth_bytes=b'{"status":"invalid_token"}'))
    with pytest.raises(UpstreamAuthError, match="error challenge .* and then reported success"):
        auth.receive(authenticate(correlation_id=3))
    assert not auth.done


def test_a_challenge_that_is_not_json_is_shown_safely():
    auth = UpstreamAuthenticator(TOKEN)
    auth.start()
    auth.receive(handshake())
    auth.receive(authenticate(auth_bytes=b"\x1b[2Jnot json"))
    with pytest.raises(UpstreamAuthError) as e:
        auth.receive(authenticate(ErrorCode.sasl_authentication_failed, correlation_id=3, message="no"))
    assert "not RFC 7628 JSON: ?[2Jnot json" in str(e.value) and "\x1b" not in str(e.value)


def test_a_broker_without_oauthbearer_is_refused_naming_what_it_offers():
    auth = UpstreamAuthenticator(TOKEN)
    auth.start()
    with pytest.raises(UpstreamAuthError, match="refused SASL mechanism OAUTHBEARER: UNSUPPORTED_SASL_MECHANISM; "
                                                "it offers SCRAM-SHA-512, PLAIN"):
        auth.receive(handshake(ErrorCode.unsupported_sasl_mechanism, ("SCRAM-SHA-512", "PLAIN")))


def test_a_refusal_without_challenge_names_the_broker_s_message():
    auth = UpstreamAuthenticator(TOKEN)
    auth.start()
    auth.receive(handshake())
    with pytest.raises(UpstreamAuthError, match="OAUTHBEARER token: SASL_AUTHENTICATION_FAILED: expired$"):
        auth.receive(authenticate(ErrorCode.sasl_authentication_failed, message="expired"))


def test_no_token_held_fails_before_anything_is_sent():
    auth = UpstreamAuthenticator(TokenUnavailable("token endpoint http://idp/token answered HTTP 401: invalid_client"))
    with pytest.raises(UpstreamAuthError, match="holds no valid OAUTHBEARER token for the broker: token endpoint "
                                                "http://idp/token answered HTTP 401: invalid_client"):
        auth.start()


def test_the_file_form_itself_is_not_something_to_authenticate_with():
    with pytest.raises(UpstreamAuthError, match="token source's current token"):
        UpstreamAuthenticator(OAuthBearerCredentials("http://idp/token", "a", "b"))


def test_a_session_without_a_token_closes_with_the_provider_s_error_audited():
    s = new_session(TokenUnavailable("token endpoint http://idp/token: unreachable (Connection refused)"))
    s.handle(ev.ClientData(metadata()), 0.0)
    out = s.handle(ev.UpstreamConnected(), 0.1)
    assert not of(out, SendToUpstream)
    reason = of(out, CloseConnection)[0].reason
    assert reason == ("upstream authentication failed: the appliance holds no valid OAUTHBEARER token for the "
                      "broker: token endpoint http://idp/token: unreachable (Connection refused)")
    assert of(out, Audit)[-1].record.close_reason == reason


def test_a_session_with_a_token_relays_once_the_broker_accepts_it():
    s = new_session(TOKEN)
    request = metadata()
    s.handle(ev.ClientData(request), 0.0)
    s.handle(ev.UpstreamConnected(), 0.0)
    sent = of(s.handle(ev.UpstreamData(handshake()), 0.0), SendToUpstream)[0].data
    assert TOKEN.value.encode() in sent
    out = s.handle(ev.UpstreamData(authenticate()), 0.0)
    assert [c.data for c in of(out, SendToUpstream)] == [request]
