"""The session as a script: these events in, these commands out. No sockets."""

import datetime
import ssl
import struct

import pytest
import scramp
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_reader

from appliance.audit.records import Operation, SessionClosed
from appliance.broker.credentials import UpstreamCredentials
from appliance.kafka import codec
from appliance.kafka.framing import frame
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, SendToClient, SendToUpstream
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from appliance.proxy.session import Session
from tests.kafka.builders import batch, request_frame, response_frame

PLAIN = UpstreamCredentials("PLAIN", "appliance", "s3cret")
ALLOW_ALL = parse_policy("""
version: 1
rules:
  - name: everything
    identities: [orders]
    operations: [produce, consume, describe, create, group]
    topics: ["*"]
    consumer_groups: ["*"]
""", source="test-policy")


def new_session(credentials=PLAIN, session_id="s1", policy=ALLOW_ALL):
    enforcer = Enforcer(Principal("orders", frozenset()), lambda: policy)
    return Session(session_id, credentials, enforcer, max_frame_bytes=1 << 20, now=0.0)


def of(commands, kind):
    return [c for c in commands if isinstance(c, kind)]


def handshake_ok(correlation_id=1):
    return response_frame(SaslHandshakeResponse(error_code=ErrorCode.none, mechanisms=("PLAIN", "SCRAM-SHA-512")),
                          correlation_id=correlation_id, flexible_header=False)


def authenticate(error=ErrorCode.none, auth_bytes=b"", correlation_id=2, message=None):
    return response_frame(SaslAuthenticateResponse(error_code=error, error_message=message, auth_bytes=auth_bytes,
                                                   session_lifetime=datetime.timedelta(0)),
                          correlation_id=correlation_id, flexible_header=True)


def metadata(correlation_id=5, topic="orders"):
    return request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name=topic),),
                                         allow_auto_topic_creation=False, include_topic_authorized_operations=False),
                         correlation_id=correlation_id)


def produce(acks, correlation_id=6):
    return request_frame(ProduceRequest(transactional_id=None, acks=acks, timeout=datetime.timedelta(seconds=1),
                                        topic_data=(TopicProduceData(name="orders", partition_data=(
                                            PartitionProduceData(index=0, records=batch(3)),)),)),
                         correlation_id=correlation_id)


def authenticated_session():
    s = new_session(PLAIN, "s1")
    s.handle(ev.UpstreamConnected(), 0.0)
    s.handle(ev.UpstreamData(handshake_ok()), 0.0)
    out = s.handle(ev.UpstreamData(authenticate()), 0.0)
    assert not of(out, CloseConnection)
    return s


def test_plain_upstream_auth_then_held_requests_are_forwarded_unchanged():
    s = new_session(PLAIN, "s1")
    out = s.handle(ev.UpstreamConnected(), 0.0)
    hs = of(out, SendToUpstream)[0].data
    assert entity_reader(SaslHandshakeRequest)(hs, codec.parse_request_header(hs).body_offset)[0].mechanism == "PLAIN"
    request = metadata()
    assert s.handle(ev.ClientData(request), 0.1) == []  # held until authenticated
    out = s.handle(ev.UpstreamData(handshake_ok()), 0.2)
    assert b"\0appliance\0s3cret" in of(out, SendToUpstream)[0].data
    out = s.handle(ev.UpstreamData(authenticate()), 0.3)
    assert [c.data for c in of(out, SendToUpstream)] == [request]


def auth_bytes(request: bytes) -> str:
    from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest

    entity, _ = entity_reader(SaslAuthenticateRequest)(request, codec.parse_request_header(request).body_offset)
    return entity.auth_bytes.decode()


def test_scram_exchange_verifies_the_server():
    creds = UpstreamCredentials("SCRAM-SHA-512", "appliance", "pw")
    mech = scramp.ScramMechanism("SCRAM-SHA-512")
    auth_info = mech.make_auth_info("pw")
    server = mech.make_server(lambda username: auth_info)
    s = new_session(creds, "s1")
    s.handle(ev.UpstreamConnected(), 0)
    first = of(s.handle(ev.UpstreamData(handshake_ok()), 0), SendToUpstream)[0].data
    server.set_client_first(auth_bytes(first))
    final = of(s.handle(ev.UpstreamData(authenticate(auth_bytes=server.get_server_first().encode())), 0), SendToUpstream)[0].data
    server.set_client_final(auth_bytes(final))
    out = s.handle(ev.UpstreamData(authenticate(auth_bytes=server.get_server_final().encode(), correlation_id=3)), 0)
    assert not of(out, CloseConnection)
    forged = new_session(creds, "s2")
    server2 = mech.make_server(lambda username: auth_info)
    forged.handle(ev.UpstreamConnected(), 0)
    first = of(forged.handle(ev.UpstreamData(handshake_ok()), 0), SendToUpstream)[0].data
    server2.set_client_first(auth_bytes(first))
    forged.handle(ev.UpstreamData(authenticate(auth_bytes=server2.get_server_first().encode())), 0)
    out = forged.handle(ev.UpstreamData(authenticate(auth_bytes=b"v=Zm9yZ2Vk", correlation_id=3)), 0)
    assert "SCRAM exchange with the broker failed" in of(out, CloseConnection)[0].reason


def test_upstream_refusal_closes_with_the_brokers_reason():
    s = new_session(PLAIN, "s1")
    s.handle(ev.UpstreamConnected(), 0)
    s.handle(ev.UpstreamData(handshake_ok()), 0)
    out = s.handle(ev.UpstreamData(authenticate(ErrorCode.sasl_authentication_failed, message="bad password")), 0)
    reason = of(out, CloseConnection)[0].reason
    assert "refused the appliance's PLAIN credentials" in reason and "bad password" in reason
    assert of(out, Audit)[-1].record.close_reason == reason


def test_response_is_matched_audited_and_forwarded():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata(correlation_id=5)), 1.0)
    from kio.schema.metadata.v12.response import MetadataResponse
    resp = response_frame(MetadataResponse(throttle_time=datetime.timedelta(0), brokers=(), cluster_id=None,
                                           controller_id=1, topics=()), correlation_id=5, flexible_header=True)
    out = s.handle(ev.UpstreamData(resp), 1.25)
    assert of(out, SendToClient)[0].data == resp
    op = of(out, Audit)[0].record
    assert (op.api_name, op.topics, op.latency_ms, op.outcome) == ("Metadata", '{"orders": []}', 250.0, "forwarded")


def test_acks_zero_produce_is_audited_without_waiting():
    s = authenticated_session()
    out = s.handle(ev.ClientData(produce(acks=0)), 2.0)
    assert of(out, SendToUpstream)[0].data == produce(acks=0)
    op = of(out, Audit)[0].record
    assert (op.api_name, op.records, op.outcome) == ("Produce", 3, "no-response")


def test_workload_sasl_is_answered_by_the_proxy_not_forwarded():
    s = authenticated_session()
    out = s.handle(ev.ClientData(request_frame(SaslHandshakeRequest(mechanism="SCRAM-SHA-512"), correlation_id=1)), 0)
    assert not of(out, SendToUpstream)
    answer = of(out, SendToClient)[0].data
    response, _ = entity_reader(SaslHandshakeResponse)(answer, 8)
    assert response.error_code == ErrorCode.none
    assert response.mechanisms == ("OAUTHBEARER", "SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
    assert of(out, Audit)[0].record.outcome == "answered-by-proxy"


def test_a_mechanism_the_proxy_lacks_is_answered_with_those_it_offers_never_an_empty_list():
    s = authenticated_session()
    out = s.handle(ev.ClientData(request_frame(SaslHandshakeRequest(mechanism="GSSAPI"), correlation_id=1)), 0)
    response, _ = entity_reader(SaslHandshakeResponse)(of(out, SendToClient)[0].data, 8)
    assert response.error_code == ErrorCode.unsupported_sasl_mechanism
    assert "OAUTHBEARER" in response.mechanisms and not s.closed


def test_garbage_frame_closes_this_session_with_an_audited_reason():
    s = authenticated_session()
    out = s.handle(ev.ClientData(b"\x7f\xff\xff\xffgarbage"), 0)
    closed = of(out, Audit)[-1].record
    assert isinstance(closed, SessionClosed) and "malformed frame from client" in closed.close_reason
    assert of(out, CloseConnection)


def test_a_version_kio_lacks_is_refused_not_forwarded_and_closes():
    s = authenticated_session()
    out = s.handle(ev.ClientData(frame(struct.pack(">hhih", 0, 99, 1, -1) + b"\0" * 20)), 0)
    assert not of(out, SendToUpstream)
    assert of(out, CloseConnection)[0].reason == (
        "Produce v99 (api key 0) is offered at v3-v12 only, and is not a version the proxy can answer; "
        "it was refused, not forwarded")


def test_revoke_audits_unanswered_requests_and_closes():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata()), 0)
    out = s.handle(ev.Revoked("workload orders was unenrolled"), 1)
    records = [c.record for c in of(out, Audit)]
    assert isinstance(records[0], Operation) and records[0].outcome == "unanswered"
    assert records[-1].close_reason == "workload orders was unenrolled"
    assert s.handle(ev.ClientData(metadata()), 2) == []


def test_broker_answering_an_unknown_correlation_id_closes():
    s = authenticated_session()
    out = s.handle(ev.UpstreamData(frame(struct.pack(">i", 77) + b"\0\0")), 0)
    assert "correlation id 77" in of(out, CloseConnection)[0].reason


def test_garbage_held_during_authentication_is_blamed_on_the_client():
    s = new_session(PLAIN, "s1")
    s.handle(ev.UpstreamConnected(), 0)
    s.handle(ev.ClientData(b"\x7f\xff\xff\xffgarbage"), 0)
    s.handle(ev.UpstreamData(handshake_ok()), 0)
    out = s.handle(ev.UpstreamData(authenticate()), 0)
    assert of(out, CloseConnection)[0].reason.startswith("malformed frame from client: frame size 2147483647")


def fetch_request(correlation_id=30, incremental=False):
    """Fetch v12 of orders/0 outside a fetch session; `incremental`: the next request of an established fetch
    session (KIP-227), which names no partitions at all."""
    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
    topics = () if incremental else (FetchTopic(topic="orders", partitions=(FetchPartition(
        partition=0, current_leader_epoch=-1, fetch_offset=0, last_fetched_epoch=-1, log_start_offset=-1,
        partition_max_bytes=1 << 20),)),)
    return request_frame(FetchRequest(
        cluster_id=None, replica_id=-1, max_wait=datetime.timedelta(milliseconds=500), min_bytes=1,
        max_bytes=1 << 20, isolation_level=0, session_id=77 if incremental else 0,
        session_epoch=1 if incremental else -1, topics=topics, forgotten_topics_data=(), rack_id=""),
        correlation_id=correlation_id)


def fetch_response(records: bytes, correlation_id=30, topics=(("orders", 0),)):
    from kio.schema.fetch.v12.response import FetchResponse, FetchableTopicResponse, PartitionData
    from appliance.kafka.synth import default_entity
    answered = tuple(FetchableTopicResponse(topic=topic, partitions=(
        default_entity(PartitionData, ErrorCode.none, records=records, partition_index=partition),))
        for topic, partition in topics)
    return response_frame(FetchResponse(throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, session_id=0,
                                        responses=answered), correlation_id=correlation_id, flexible_header=True)


@pytest.mark.parametrize("incremental, answered, audited", [
    (False, (("orders", 0),), {"orders": [0]}),
    # KIP-227: the Java consumer and franz-go name no partitions once their fetch session is set up; the
    # broker answers for the partitions that have data, and those are what the workload read
    (True, (("orders", 0),), {"orders": [0]}),
    (True, (("orders", 0), ("payments", 2)), {"orders": [0], "payments": [2]}),
    (False, (("orders", 0), ("payments", 2)), {"orders": [0], "payments": [2]}),
])
def test_a_fetch_is_audited_with_the_topics_its_response_carries(incremental, answered, audited):
    import json

    s = authenticated_session()
    s.handle(ev.ClientData(fetch_request(incremental=incremental)), 0)
    out = s.handle(ev.UpstreamData(fetch_response(batch(3), topics=answered)), 1)
    fetched = [c.record for c in of(out, Audit) if isinstance(c.record, Operation)]
    assert [(f.api_name, json.loads(f.topics), f.records) for f in fetched] == [("Fetch", audited, 3 * len(answered))]


def test_a_large_fetch_response_is_passed_through_as_it_arrives_and_audited_whole():
    s = authenticated_session()
    s.handle(ev.ClientData(fetch_request()), 0)
    records = b"".join(batch(16, payload=b"x" * 1024) for _ in range(10))
    response = fetch_response(records)
    thirds = [response[:len(response) // 3], response[len(response) // 3:2 * len(response) // 3],
              response[2 * len(response) // 3:] + metadata_response(31)]
    s.handle(ev.ClientData(metadata(correlation_id=31)), 0)
    first = s.handle(ev.UpstreamData(thirds[0]), 1)
    assert [c.data for c in of(first, SendToClient)] == [thirds[0]] and not of(first, Audit)
    middle = s.handle(ev.UpstreamData(thirds[1]), 1)
    assert [c.data for c in of(middle, SendToClient)] == [thirds[1]]
    last = s.handle(ev.UpstreamData(thirds[2]), 2)
    assert b"".join(c.data for c in of(first + middle + last, SendToClient)) == response + metadata_response(31)
    fetched = [c.record for c in of(last, Audit) if c.record.api_name == "Fetch"][0]
    assert fetched.records == 160 and fetched.response_bytes == len(response) and fetched.latency_ms == 2000.0


def metadata_response(correlation_id):
    from kio.schema.metadata.v12.response import MetadataResponse
    return response_frame(MetadataResponse(throttle_time=datetime.timedelta(0), brokers=(), cluster_id=None,
                                           controller_id=1, topics=()), correlation_id=correlation_id, flexible_header=True)


def test_closing_mid_stream_audits_the_fetch_as_unanswered():
    s = authenticated_session()
    s.handle(ev.ClientData(fetch_request()), 0)
    response = fetch_response(b"".join(batch(16, payload=b"x" * 1024) for _ in range(10)))
    s.handle(ev.UpstreamData(response[:100_000]), 1)
    out = s.handle(ev.UpstreamClosed("broker went away"), 2)
    assert [c.record.outcome for c in of(out, Audit) if isinstance(c.record, Operation)] == ["unanswered"]


def test_repeated_produce_of_one_shape_is_audited_with_its_own_records_and_error():
    from tests.kafka.test_produce_shape import produce as produce_of, produce_response

    s = authenticated_session()
    audited = []
    for correlation_id, count, error in ((40, 3, ErrorCode.none), (41, 8, ErrorCode.none),
                                          (42, 5, ErrorCode.not_leader_or_follower)):
        request = produce_of(9, {"orders": {0: batch(count)}}, correlation_id=correlation_id)
        assert of(s.handle(ev.ClientData(request), 1.0), SendToUpstream)[0].data == request
        answer = produce_response(9, "orders", 0, error)
        answer = answer[:4] + struct.pack(">i", correlation_id) + answer[8:]
        out = s.handle(ev.UpstreamData(answer), 1.5)
        assert of(out, SendToClient)[0].data == answer
        audited += [c.record for c in of(out, Audit)]
    assert [(op.correlation_id, op.records, op.error_code, op.topics, op.outcome) for op in audited] == [
        (40, 3, 0, '{"orders": [0]}', "forwarded"), (41, 8, 0, '{"orders": [0]}', "forwarded"),
        (42, 5, 6, '{"orders": [0]}', "forwarded")]
    assert all(op.checks == '[["topic", "orders", "produce", "allow", "everything"]]' for op in audited)


def _scram_exchange(password: str, auth_info) -> list:
    mech = scramp.ScramMechanism("SCRAM-SHA-512")
    server = mech.make_server(lambda username: auth_info)
    s = new_session(UpstreamCredentials("SCRAM-SHA-512", "appliance", password), "scram")
    s.handle(ev.UpstreamConnected(), 0)
    first = of(s.handle(ev.UpstreamData(handshake_ok()), 0), SendToUpstream)[0].data
    server.set_client_first(auth_bytes(first))
    final = of(s.handle(ev.UpstreamData(authenticate(auth_bytes=server.get_server_first().encode())), 0),
               SendToUpstream)[0].data
    try:
        server.set_client_final(auth_bytes(final))
    except scramp.ScramException as e:
        return [f"server refused: {e}"]
    return of(s.handle(ev.UpstreamData(authenticate(auth_bytes=server.get_server_final().encode(), correlation_id=3)), 0),
              CloseConnection)


def test_scram_key_derivation_runs_once_per_salt_and_password():
    from appliance.proxy.upstream_auth import _salted_password

    auth_info = scramp.ScramMechanism("SCRAM-SHA-512").make_auth_info("pw", iteration_count=4096)
    _salted_password.cache_clear()
    for _ in range(3):
        assert _scram_exchange("pw", auth_info) == []
    # make_auth_info's own derivation happened before the clear: one miss, then hits.
    assert (_salted_password.cache_info().misses, _salted_password.cache_info().hits) == (1, 2)
    # The cache is keyed by the password too: a wrong one still fails.
    assert _scram_exchange("wrong", auth_info)[0].startswith("server refused")


def test_deadline_closes_the_session_and_audits_the_reason():
    from appliance.proxy import events as ev
    from appliance.proxy.commands import Audit, CloseConnection
    s = new_session()
    assert not s.relaying and s.oldest_request_at is None
    s.handle(ev.ClientData(b"\0\0\0\x10partial"), 1.0)
    assert s.buffered_bytes == len(b"\0\0\0\x10partial")
    out = s.handle(ev.DeadlinePassed("upstream authentication took longer than 10 s"), 2.0)
    closes = [c for c in out if isinstance(c, CloseConnection)]
    assert closes and "10 s" in closes[0].reason
    assert any(isinstance(c, Audit) and getattr(c.record, "close_reason", "").startswith("upstream authentication") for c in out)


def client_hello() -> tuple[bytes, object, object]:
    """A real ClientHello from Python's TLS client, and the client's state to feed the proxy's answer to."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="broker.example")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read(), client, incoming


@pytest.mark.parametrize("when", ["before upstream authentication", "after it"])
def test_a_workload_speaking_tls_gets_a_tls_failure_at_once_and_an_audited_reason(when):
    s = authenticated_session() if when == "after it" else new_session(PLAIN, "s1")
    hello, client, incoming = client_hello()
    out = s.handle(ev.ClientData(hello), 0)
    assert not of(out, SendToUpstream)
    closed = of(out, Audit)[-1].record
    assert isinstance(closed, SessionClosed) and closed.close_reason.startswith("workload started a TLS handshake")
    assert "security.protocol to PLAINTEXT" in closed.close_reason
    assert of(out, CloseConnection)
    incoming.write(b"".join(c.data for c in of(out, SendToClient)))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):  # what the client reports: a TLS failure
        client.do_handshake()


@pytest.mark.parametrize("first", [1, 2, 3])
@pytest.mark.parametrize("when", ["before upstream authentication", "after it"])
def test_a_client_hello_arriving_in_pieces_is_refused_as_tls_not_as_a_malformed_frame(when, first):
    """A ClientHello whose first read is shorter than a size prefix (a client writing it byte by byte, or a
    segment split by the network) was read as a 369 MB Kafka frame: an unexplained close, no alert."""
    s = authenticated_session() if when == "after it" else new_session(PLAIN, "s1")
    hello, client, incoming = client_hello()
    out = s.handle(ev.ClientData(hello[:first]), 0)
    assert not of(out, CloseConnection) and not of(out, SendToUpstream)
    out += s.handle(ev.ClientData(hello[first:first + 1]), 0) + s.handle(ev.ClientData(hello[first + 1:]), 0)
    assert not of(out, SendToUpstream)
    closed = of(out, Audit)[-1].record
    assert isinstance(closed, SessionClosed) and closed.close_reason.startswith("workload started a TLS handshake")
    incoming.write(b"".join(c.data for c in of(out, SendToClient)))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        client.do_handshake()


def test_the_refusal_names_termination_as_the_other_way_and_a_terminated_sessions_tls_fault_is_a_warned_close():
    from appliance.proxy.commands import Log

    s = new_session(PLAIN, "s1")
    out = s.handle(ev.ClientData(client_hello()[0]), 0)
    assert "--workload-tls terminate" in of(out, Audit)[-1].record.close_reason
    s = authenticated_session()
    out = s.handle(ev.ClientTlsFailed("workload's TLS connection failed: DECRYPTION_FAILED_OR_BAD_RECORD_MAC"), 0)
    closed = of(out, Audit)[-1].record
    assert isinstance(closed, SessionClosed) and closed.close_reason.startswith("workload's TLS connection failed")
    assert of(out, CloseConnection) and any(log.level == "warning" for log in of(out, Log))


def test_tls_looking_bytes_after_the_first_request_are_a_malformed_frame():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata()), 0)
    out = s.handle(ev.ClientData(client_hello()[0]), 0)
    reason = of(out, CloseConnection)[0].reason
    assert reason.startswith("malformed frame from client") and not of(out, SendToClient)


def test_a_connection_the_client_certificate_authenticated_relays_at_once_with_nothing_to_renew():
    """No SASL with the brokers (upstream_credentials: null): nothing is sent before the workload's bytes."""
    from pathlib import Path

    from appliance.broker.credentials import ClientCertificateOnly
    from appliance.proxy.commands import Log

    s = new_session(credentials=ClientCertificateOnly(Path("/etc/appliance/client.pem")))
    out = s.handle(ev.UpstreamConnected(authenticated=True, authenticated_at=1.0, pooled=False), 1.0)
    assert not of(out, SendToUpstream) and not [c for c in of(out, Log) if "pool" in c.message]
    assert s.upstream_reauthenticate_at is None
    request = metadata(correlation_id=7)
    forwarded = of(s.handle(ev.ClientData(request), 2.0), SendToUpstream)
    assert [c.data for c in forwarded] == [request]
