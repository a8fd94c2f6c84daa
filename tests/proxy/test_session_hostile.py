"""The session against hostile or broken peers: every fault is an audited close naming what it was."""

import datetime
import struct

from kio.schema.errors import ErrorCode
from kio.index import load_request_schema, load_response_schema

from appliance.audit.records import Operation, SessionClosed
from appliance.kafka import apis, codec
from appliance.kafka.framing import frame
from appliance.kafka.synth import default_entity
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, Log, SendToClient, SendToUpstream
from appliance.proxy.session import Session
from tests.kafka.builders import request_frame, response_frame
from tests.kafka.test_bounds import uvarint
from tests.proxy.test_session import (
    PLAIN, authenticated_session, fetch_request, fetch_response, metadata, metadata_response, new_session, of,
    produce,
)

# The 24-byte flexible Metadata v12 request that aborted serve (kio allocating 0xfffffffd elements).
KILLER = frame(struct.pack(">hhih", 3, 12, 7, -1) + b"\0" + uvarint(0xFFFFFFFE) + b"\0" * 4)


def closed(out) -> SessionClosed:
    records = [c.record for c in of(out, Audit) if isinstance(c.record, SessionClosed)]
    assert len(records) == 1 and of(out, CloseConnection)[0].reason == records[0].close_reason
    return records[0]


def one_of_each(cls: type, depth: int = 0):
    """A default entity whose every collection of entries holds one default entry (topics with a partition)."""
    import dataclasses, typing
    from appliance.kafka.synth import element_type
    fields = {}
    for name, tp in typing.get_type_hints(cls).items():
        element = element_type(tp)
        if element is not None and dataclasses.is_dataclass(element) and depth < 3:
            fields[name] = (one_of_each(element, depth + 1),)
    return default_entity(cls, ErrorCode.none, **fields)


def request(key: int, version: int, correlation_id: int = 3, **fields) -> bytes:
    return request_frame(default_entity(load_request_schema(key, version), ErrorCode.none, **fields),
                         correlation_id=correlation_id)


def answer_of(out, key: int, version: int):
    return codec.decode_response(b"".join(c.data for c in of(out, SendToClient)), key, version)


def test_the_killer_metadata_frame_closes_only_this_session_naming_the_field():
    assert len(KILLER) == 24
    s = authenticated_session()
    reason = closed(s.handle(ev.ClientData(KILLER), 0)).close_reason
    assert reason == ("undecodable client request: Metadata v12 request does not decode: "
                      "topics: array of 4294967293 elements needs at least 77309411274 bytes, 4 remain")
    other = authenticated_session()
    assert of(other.handle(ev.ClientData(metadata()), 0), SendToUpstream)


def test_sasl_authenticate_before_a_handshake_is_refused_then_closed_at_every_version():
    for version in (0, 1, 2):
        s = authenticated_session()
        out = s.handle(ev.ClientData(request(apis.SASL_AUTHENTICATE, version)), 0)
        response = answer_of(out, apis.SASL_AUTHENTICATE, version)
        assert response.error_code == ErrorCode.sasl_authentication_failed
        assert "before a SaslHandshake" in response.error_message
        if version >= 1:
            assert response.session_lifetime == datetime.timedelta(0)
        assert "SASL authentication failed: SaslAuthenticate arrived before a SaslHandshake" in closed(out).close_reason


def test_versions_above_what_was_offered_are_answered_unsupported_version_never_forwarded():
    from kio.schema.produce.v13.request import PartitionProduceData, ProduceRequest, TopicProduceData
    import uuid
    cases = {
        (apis.OFFSET_COMMIT, 10): request_frame(one_of_each(load_request_schema(8, 10)), correlation_id=3),
        (24, 4): request(24, 4),  # AddPartitionsToTxn v4 is broker-to-broker
        (apis.PRODUCE, 13): request_frame(ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(1),
            topic_data=(TopicProduceData(topic_id=uuid.uuid4(), partition_data=(PartitionProduceData(index=0, records=b"x"),)),)),
            correlation_id=3),
    }
    for (key, version), data in cases.items():
        s = authenticated_session()
        out = s.handle(ev.ClientData(data), 0)
        assert not of(out, SendToUpstream) and not of(out, CloseConnection), (key, version)
        response = answer_of(out, key, version)
        assert codec._first_error(response) == ErrorCode.unsupported_version, (key, version, response)
        op = of(out, Audit)[0].record
        assert (op.api_key, op.api_version, op.outcome, op.error_code) == (key, version, "refused", 35)
    # The Produce v13 answer carries an entry per topic, so the client sees the error where it looks.
    s = authenticated_session()
    partitions = answer_of(s.handle(ev.ClientData(cases[(apis.PRODUCE, 13)]), 0), 0, 13).responses[0].partition_responses
    assert partitions[0].error_code == ErrorCode.unsupported_version


def test_a_malformed_tagged_field_is_a_decode_error_not_a_broker_close():
    s = authenticated_session()
    good = metadata(correlation_id=4)
    reason = closed(s.handle(ev.ClientData(frame(good[4:-1] + b"\x01\x09\x00")), 0)).close_reason
    assert reason == ("undecodable client request: Metadata v12 request does not decode: "
                      "(message): tagged field 9 is not one MetadataRequest has")


def test_a_malformed_broker_response_closes_naming_the_response():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata(correlation_id=5)), 0)
    bad = frame(struct.pack(">i", 5) + b"\0" + b"\0\0\0\0" + uvarint(0xFFFFFFF0) + b"\0" * 8)
    out = s.handle(ev.UpstreamData(bad), 1)
    assert closed(out).close_reason.startswith("undecodable broker response: Metadata v12 response does not decode: brokers: array of")
    assert [c.record.outcome for c in of(out, Audit) if isinstance(c.record, Operation)] == ["unanswered"]


def test_any_exception_becomes_an_audited_close_naming_api_and_version():
    s = authenticated_session()

    def broken(frame, header):
        raise ZeroDivisionError("boom")
    s.enforcer.check = broken
    out = s.handle(ev.ClientData(metadata(correlation_id=9)), 0)
    assert closed(out).close_reason == ("internal fault while handling Metadata v12 request (correlation id 9): "
                                        "ZeroDivisionError: boom")
    logged = [c.message for c in of(out, Log) if c.level == "error"]
    assert "Traceback (most recent call last)" in logged[0] and "ZeroDivisionError: boom" in logged[0]
    assert s.handle(ev.ClientData(metadata()), 1) == []


def test_a_duplicate_correlation_id_in_flight_closes_the_session():
    s = authenticated_session()
    assert of(s.handle(ev.ClientData(metadata(correlation_id=5)), 0), SendToUpstream)
    out = s.handle(ev.ClientData(fetch_request(correlation_id=5)), 1)
    assert not of(out, SendToUpstream)
    assert closed(out).close_reason == ("Fetch v12 request (correlation id 5) reuses the correlation id of a "
                                        "request still in flight; answers could not be told apart")
    assert [c.record.api_name for c in of(out, Audit) if isinstance(c.record, Operation)] == ["Metadata"]


def test_a_correlation_id_may_be_reused_once_answered_and_acks_zero_is_not_in_flight():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata(correlation_id=5)), 0)
    s.handle(ev.UpstreamData(metadata_response(5)), 1)
    assert of(s.handle(ev.ClientData(metadata(correlation_id=5)), 2), SendToUpstream)
    assert of(s.handle(ev.ClientData(produce(acks=0, correlation_id=8) * 2), 2), SendToUpstream)
    assert not s.closed


def test_responses_are_matched_in_request_order():
    s = authenticated_session()
    s.handle(ev.ClientData(metadata(correlation_id=5) + metadata(correlation_id=6)), 0)
    out = s.handle(ev.UpstreamData(metadata_response(6)), 1)
    assert closed(out).close_reason == ("broker answered correlation id 6 out of order: the oldest request in "
                                        "flight is Metadata v12 with correlation id 5")


def test_the_proxys_own_answer_waits_behind_earlier_requests():
    s = authenticated_session()
    sasl = request(apis.SASL_HANDSHAKE, 1, correlation_id=7, mechanism="GSSAPI")  # answered, no exchange begun
    out = s.handle(ev.ClientData(metadata(correlation_id=5) + sasl + metadata(correlation_id=8)), 0)
    assert not of(out, SendToClient) and of(out, SendToUpstream)[0].data == metadata(5) + metadata(8)
    assert s.buffered_bytes > 0  # the held answer counts against the shell's budget
    out = s.handle(ev.UpstreamData(metadata_response(5)), 1)
    sent = b"".join(c.data for c in of(out, SendToClient))
    assert codec.response_correlation_id(sent) == 5
    assert codec.response_correlation_id(sent[4 + struct.unpack(">i", sent[:4])[0]:]) == 7
    assert s.buffered_bytes == 0
    out = s.handle(ev.UpstreamData(metadata_response(8)), 2)
    assert codec.response_correlation_id(of(out, SendToClient)[0].data) == 8 and not s.closed


def test_a_streamed_fetch_out_of_order_closes_before_any_of_it_is_passed_on():
    from tests.kafka.builders import batch
    s = authenticated_session()
    s.handle(ev.ClientData(fetch_request(correlation_id=30) + metadata(correlation_id=31)), 0)
    response = fetch_response(b"".join(batch(16, payload=b"x" * 1024) for _ in range(10)), correlation_id=31)
    out = s.handle(ev.UpstreamData(response[:70_000]), 1)
    assert not of(out, SendToClient)
    assert "out of order" in closed(out).close_reason


def test_bytes_held_before_upstream_authentication_are_bounded():
    s = Session("held", PLAIN, new_session().enforcer, max_frame_bytes=1 << 20, now=0.0, max_held_bytes=1000)
    s.handle(ev.UpstreamConnected(), 0)
    assert s.handle(ev.ClientData(b"x" * 1000), 0) == [] and s.buffered_bytes == 1000
    out = s.handle(ev.ClientData(b"x"), 0)
    assert closed(out).close_reason == ("workload sent 1001 bytes before upstream authentication completed, "
                                        "more than the 1000 the proxy holds")
    assert Session("d", PLAIN, s.enforcer, max_frame_bytes=1, now=0).max_held_bytes == 1 << 20


def test_a_broken_broker_answer_during_authentication_is_an_authentication_failure():
    s = new_session()
    s.handle(ev.UpstreamConnected(), 0)
    out = s.handle(ev.UpstreamData(frame(struct.pack(">ihi", 1, 0, 0x7FFFFFFF))), 0)
    assert closed(out).close_reason.startswith(
        "upstream authentication failed: SaslHandshake v1 response during upstream authentication does not decode: "
        "mechanisms: array of")
