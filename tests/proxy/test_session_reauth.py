"""The session renewing the appliance's own SASL session with the broker (KIP-368): events in, commands out.

A broker that grants a session lifetime ends the connection at the first
request after it; the session re-authenticates the same connection before
then, between the workload's requests, and the workload sees none of it.
"""

import datetime
import json

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_reader

from appliance.audit.records import Event, SessionClosed
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.kafka import apis, codec
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, Log, RefreshUpstreamToken, SendToClient, SendToUpstream
from appliance.proxy.upstream_auth import REAUTH_LEAD_S, outlives, reauthentication_times
from tests.kafka.builders import response_frame
from tests.proxy.test_session import PLAIN, metadata, metadata_response, new_session, of

LIFETIME = datetime.timedelta(seconds=300)


def handshake_answer(correlation_id=1, mechanisms=("PLAIN", "OAUTHBEARER")):
    return response_frame(SaslHandshakeResponse(error_code=ErrorCode.none, mechanisms=mechanisms),
                          correlation_id=correlation_id, flexible_header=False)


def authenticate_answer(correlation_id=2, lifetime=LIFETIME, error=ErrorCode.none, message=None):
    return response_frame(SaslAuthenticateResponse(error_code=error, error_message=message, auth_bytes=b"",
                                                   session_lifetime=lifetime),
                          correlation_id=correlation_id, flexible_header=True)


def sent_upstream(out) -> bytes:
    return b"".join(c.data for c in of(out, SendToUpstream))


def sent_to_client(out) -> bytes:
    return b"".join(c.data for c in of(out, SendToClient))


def request_of(frame: bytes):
    """The proxy's own request: its header, and its body decoded as the version it claims."""
    header = codec.parse_request_header(frame)
    cls = {apis.SASL_HANDSHAKE: SaslHandshakeRequest, apis.SASL_AUTHENTICATE: SaslAuthenticateRequest}[header.api_key]
    return header, entity_reader(cls)(frame, header.body_offset)[0]


def granted_session(credentials=PLAIN, at=0.0, lifetime=LIFETIME):
    """A session authenticated upstream at `at`, the broker granting `lifetime`."""
    s = new_session(credentials)
    s.handle(ev.UpstreamConnected(), at)
    s.handle(ev.UpstreamData(handshake_answer()), at)
    out = s.handle(ev.UpstreamData(authenticate_answer(lifetime=lifetime)), at)
    assert not of(out, CloseConnection) and s.relaying
    return s


def renew(s, now, secret=PLAIN, broker_lifetime=LIFETIME):
    """Run a due renewal to its end on an idle connection: the commands of each step."""
    started = s.handle(ev.UpstreamReauthenticationDue(secret), now)
    handshake = s.handle(ev.UpstreamData(handshake_answer()), now)
    done = s.handle(ev.UpstreamData(authenticate_answer(lifetime=broker_lifetime)), now)
    return started, handshake, done


def test_renewal_is_due_at_85_percent_of_the_lifetime_and_never_later_than_the_margin_before_its_end():
    assert reauthentication_times(1000.0, 300.0) == (1255.0, 1297.0)
    assert reauthentication_times(0.0, 30.0) == (25.0, 27.0)  # 85% would leave less than the lead
    assert reauthentication_times(0.0, 6.0) == (3.0, 3.0)  # too short for either: at its half
    s = granted_session(at=100.0)
    assert s.upstream_reauthenticate_at == 355.0
    assert granted_session(lifetime=datetime.timedelta(0)).upstream_reauthenticate_at is None


def test_a_session_without_a_lifetime_ignores_the_prompt():
    s = granted_session(lifetime=datetime.timedelta(0))
    assert s.handle(ev.UpstreamReauthenticationDue(PLAIN), 10_000.0) == []


def test_a_prompt_before_the_due_time_changes_nothing():
    s = granted_session()
    assert s.handle(ev.UpstreamReauthenticationDue(PLAIN), 200.0) == []
    assert s.handle(ev.ClientData(metadata(correlation_id=5)), 201.0)  # still forwarded at once


def test_an_idle_connection_renews_at_once_and_the_workload_sees_nothing():
    s = granted_session()
    started, handshake, done = renew(s, 260.0)
    header, body = request_of(sent_upstream(started))
    assert (header.api_key, header.api_version, body.mechanism) == (apis.SASL_HANDSHAKE, 1, "PLAIN")
    header, body = request_of(sent_upstream(handshake))
    assert (header.api_key, header.api_version) == (apis.SASL_AUTHENTICATE, 2)
    assert body.auth_bytes == b"\0appliance\0s3cret"
    for out in (started, handshake, done):
        assert not of(out, SendToClient) and not of(out, CloseConnection)
    (event,) = [a.record for a in of(done, Audit)]
    assert isinstance(event, Event) and event.kind == "upstream-reauth" and event.session_id == "s1"
    assert event.identity == "orders"
    assert json.loads(event.detail) == {"mechanism": "PLAIN", "renewal": 1, "session_lifetime_s": 300.0}
    assert any("re-authenticated its broker connection" in c.message for c in of(done, Log))
    assert s.upstream_reauthenticate_at == 260.0 + 255.0  # the new lifetime counts from the answer
    assert s.bytes_to_client == 0


def test_renewal_due_with_requests_in_flight_waits_for_their_answers_first():
    s = granted_session()
    first, second = metadata(correlation_id=5), metadata(correlation_id=6)
    assert sent_upstream(s.handle(ev.ClientData(first + second), 250.0)) == first + second
    assert s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0) == []  # two answers still owed
    assert s.relaying and s.upstream_reauthenticate_at is None  # under way: the shell stops prompting
    out = s.handle(ev.UpstreamData(metadata_response(5)), 260.1)
    assert sent_to_client(out) == metadata_response(5) and not of(out, SendToUpstream)
    answer = metadata_response(6)
    out = s.handle(ev.UpstreamData(answer[:7]), 260.2)  # part of the last answer: still owed
    assert not of(out, SendToUpstream)
    out = s.handle(ev.UpstreamData(answer[7:]), 260.3)
    assert sent_to_client(out) == answer  # delivered first, then the proxy's own handshake goes out
    assert [type(c) for c in out if isinstance(c, (SendToClient, SendToUpstream))] == [SendToClient, SendToUpstream]
    assert request_of(sent_upstream(out))[0].api_key == apis.SASL_HANDSHAKE
    assert s.oldest_request_at == 260.3  # the proxy's own exchange is bounded by the request deadline
    s.handle(ev.UpstreamData(handshake_answer()), 260.4)
    out = s.handle(ev.UpstreamData(authenticate_answer()), 260.5)
    assert not of(out, SendToClient) and not of(out, CloseConnection)
    assert s.oldest_request_at is None


def test_pipelined_requests_during_renewal_are_held_then_released_in_order():
    s = granted_session()
    s.handle(ev.ClientData(metadata(correlation_id=5)), 250.0)
    s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0)
    held = [metadata(correlation_id=c, topic=f"t{c}") for c in (6, 7, 8)]
    stream = b"".join(held)
    assert s.handle(ev.ClientData(stream[:10]), 260.1) == []  # while draining
    out = s.handle(ev.UpstreamData(metadata_response(5)), 260.2)
    assert request_of(sent_upstream(out))[0].api_key == apis.SASL_HANDSHAKE  # nothing of the workload's
    assert s.handle(ev.ClientData(stream[10:-3]), 260.3) == []  # while authenticating
    assert s.buffered_bytes >= len(stream) - 3  # counted in the shell's budget
    out = s.handle(ev.UpstreamData(handshake_answer()), 260.4)
    assert request_of(sent_upstream(out))[0].api_key == apis.SASL_AUTHENTICATE
    out = s.handle(ev.UpstreamData(authenticate_answer()), 260.5)
    assert sent_upstream(out) == held[0] + held[1]  # released in order; the third is not whole yet
    assert sent_upstream(s.handle(ev.ClientData(stream[-3:]), 260.6)) == held[2]
    answers = b"".join(metadata_response(c) for c in (6, 7, 8))
    assert sent_to_client(s.handle(ev.UpstreamData(answers), 260.7)) == answers
    assert not s.buffered_bytes


def test_a_workload_reusing_the_proxy_s_correlation_ids_is_not_confused_with_it():
    """The proxy's handshake and authenticate use correlation ids 1 and 2; so does this workload."""
    s = granted_session()
    mine = metadata(correlation_id=1)
    s.handle(ev.ClientData(mine), 250.0)
    s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0)
    out = s.handle(ev.UpstreamData(metadata_response(1)), 260.1)  # the workload's answer, with id 1
    assert sent_to_client(out) == metadata_response(1)
    assert request_of(sent_upstream(out))[0].correlation_id == 1  # the proxy's own id 1 goes out only now
    again = metadata(correlation_id=2) + metadata(correlation_id=1)
    assert s.handle(ev.ClientData(again), 260.2) == []  # held: not in flight beside the proxy's
    out = s.handle(ev.UpstreamData(handshake_answer(correlation_id=1)), 260.3)
    assert not of(out, SendToClient) and request_of(sent_upstream(out))[0].correlation_id == 2
    out = s.handle(ev.UpstreamData(authenticate_answer(correlation_id=2)), 260.4)
    assert not of(out, SendToClient) and sent_upstream(out) == again
    answers = metadata_response(2) + metadata_response(1)
    assert sent_to_client(s.handle(ev.UpstreamData(answers), 260.5)) == answers
    assert s.bytes_to_client == len(metadata_response(1)) + len(answers)  # exactly what it asked for


def test_an_answer_to_the_wrong_correlation_id_during_renewal_closes():
    s = granted_session()
    s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0)
    out = s.handle(ev.UpstreamData(handshake_answer(correlation_id=7)), 260.1)
    reason = of(out, CloseConnection)[0].reason
    assert reason == ("upstream re-authentication failed: broker answered correlation id 7; the appliance's "
                      "own SASL request had 1")
    assert not of(out, SendToClient)


def test_a_refused_renewal_closes_with_an_audited_reason_and_releases_nothing():
    s = granted_session()
    s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0)
    assert s.handle(ev.ClientData(metadata(correlation_id=5)), 260.1) == []
    s.handle(ev.UpstreamData(handshake_answer()), 260.2)
    out = s.handle(ev.UpstreamData(authenticate_answer(error=ErrorCode.sasl_authentication_failed,
                                                       message="bad password")), 260.3)
    reason = of(out, CloseConnection)[0].reason
    assert reason.startswith("upstream re-authentication failed: broker refused the appliance's PLAIN credentials")
    assert "bad password" in reason
    (closed,) = [a.record for a in of(out, Audit) if isinstance(a.record, SessionClosed)]
    assert closed.close_reason == reason
    assert not of(out, SendToUpstream) and not of(out, SendToClient) and not of(out, RefreshUpstreamToken)


TOKEN = BearerToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", 0.0, 300.0)
FRESH = BearerToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.ZnJlc2g", 240.0, 540.0)


def test_oauthbearer_renews_with_the_fresh_token_and_asks_for_one_while_the_held_one_would_not_outlive_it():
    s = granted_session(TOKEN)  # the broker bounds the session by the token: 300 s
    assert s.upstream_reauthenticate_at == 255.0
    out = s.handle(ev.UpstreamReauthenticationDue(TOKEN), 255.0)  # the source has not refreshed yet
    assert of(out, RefreshUpstreamToken) and not of(out, SendToUpstream)
    out = s.handle(ev.UpstreamReauthenticationDue(TokenUnavailable("provider down")), 256.0)
    assert of(out, RefreshUpstreamToken) and not of(out, SendToUpstream)
    assert s.upstream_reauthenticate_at == 255.0  # still due: prompted again at the next sweep
    out = s.handle(ev.UpstreamReauthenticationDue(FRESH), 260.0)
    assert request_of(sent_upstream(out))[1].mechanism == "OAUTHBEARER"
    out = s.handle(ev.UpstreamData(handshake_answer()), 260.1)
    assert FRESH.value.encode() in request_of(sent_upstream(out))[1].auth_bytes
    out = s.handle(ev.UpstreamData(authenticate_answer(lifetime=datetime.timedelta(seconds=280))), 260.2)
    assert not of(out, CloseConnection) and s.upstream_reauthenticate_at == pytest.approx(260.2 + 238.0)


def test_a_short_session_waits_for_a_fresh_token_until_the_latest_moment_then_renews_with_what_there_is():
    """30 s tokens: due at 25 s (the source replaced its token at 24 s), at the latest at 27 s."""
    short = BearerToken(TOKEN.value, 0.0, 30.0)
    s = granted_session(short, lifetime=datetime.timedelta(seconds=30))
    assert of(s.handle(ev.UpstreamReauthenticationDue(short), 25.0), RefreshUpstreamToken)
    out = s.handle(ev.UpstreamReauthenticationDue(short), 27.0)
    assert request_of(sent_upstream(out))[0].api_key == apis.SASL_HANDSHAKE and not of(out, RefreshUpstreamToken)


def test_with_no_fresh_token_by_the_latest_moment_the_renewal_fails_with_the_provider_s_reason():
    s = granted_session(TOKEN)
    out = s.handle(ev.UpstreamReauthenticationDue(TokenUnavailable("token endpoint answered HTTP 503")), 297.0)
    reason = of(out, CloseConnection)[0].reason
    assert reason == ("upstream re-authentication failed: the appliance holds no valid OAUTHBEARER token for the "
                      "broker: token endpoint answered HTTP 503")


def test_a_refused_token_asks_the_source_for_a_fresh_one_at_first_authentication_and_at_renewal():
    s = new_session(TOKEN)
    s.handle(ev.UpstreamConnected(), 0.0)
    s.handle(ev.UpstreamData(handshake_answer()), 0.0)
    out = s.handle(ev.UpstreamData(authenticate_answer(error=ErrorCode.sasl_authentication_failed)), 0.0)
    assert of(out, RefreshUpstreamToken) and of(out, CloseConnection)[0].reason.startswith(
        "upstream authentication failed: broker refused the appliance's OAUTHBEARER token")
    s = granted_session(TOKEN)
    s.handle(ev.UpstreamReauthenticationDue(FRESH), 255.0)
    s.handle(ev.UpstreamData(handshake_answer()), 255.1)
    out = s.handle(ev.UpstreamData(authenticate_answer(error=ErrorCode.sasl_authentication_failed)), 255.2)
    assert of(out, RefreshUpstreamToken)
    assert of(out, CloseConnection)[0].reason.startswith("upstream re-authentication failed: broker refused")
    assert FRESH.value not in repr(out)


def test_a_token_outlives_a_session_only_by_more_than_the_margin():
    assert outlives(PLAIN, 100.0)
    assert not outlives(TokenUnavailable("none"), 100.0)
    assert not outlives(BearerToken("t", 0.0, 100.0 + REAUTH_LEAD_S), 100.0)
    assert outlives(BearerToken("t", 0.0, 101.0 + REAUTH_LEAD_S), 100.0)


def test_bytes_held_during_renewal_are_bounded():
    s = granted_session()
    assert s.max_renewal_held_bytes == s.max_held_bytes  # unless the shell sets it above its budget
    s.max_renewal_held_bytes = 64
    s.handle(ev.ClientData(metadata(correlation_id=5)), 250.0)
    s.handle(ev.UpstreamReauthenticationDue(PLAIN), 260.0)
    out = s.handle(ev.ClientData(b"\0" * 65), 260.1)
    assert of(out, CloseConnection)[0].reason == ("workload sent 65 bytes while the appliance re-authenticated "
                                                  "its broker connection, more than the 64 the proxy holds")


def test_a_pooled_connection_renews_on_the_lifetime_the_pool_was_granted():
    s = new_session()
    s.handle(ev.UpstreamConnected(authenticated=True, authenticated_at=10.0, session_lifetime_s=100.0), 40.0)
    assert s.upstream_reauthenticate_at == 95.0
    started, _, done = renew(s, 95.0)
    assert request_of(sent_upstream(started))[1].mechanism == "PLAIN"
    assert not of(done, CloseConnection) and s.upstream_reauthenticate_at == 95.0 + 255.0
