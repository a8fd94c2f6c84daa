"""Fetch decided on the response: incremental fetch sessions, revocation by reload, masking, streaming."""

from __future__ import annotations

import datetime
import json

from kafka.record.default_records import DefaultRecordBatch
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.fetch.v12.response import FetchableTopicResponse, FetchResponse, PartitionData

from appliance.kafka import apis, codec
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from tests.kafka.builders import request_frame, response_frame
from tests.masking.builders import Rec, build_batch

GRANTS = """
version: 1
rules:
  - name: reader
    identities: [reader]
    operations: [consume, describe]
    topics: [{topics}]
masking:
  - name: emails
    topics: [pii]
    on: [fetch]
    detectors: [email]
    action: redact
"""
EVERYTHING = parse_policy("""
version: 1
rules:
  - name: all
    identities: [reader]
    operations: [consume, unmask]
    topics: ["*"]
""", source="everything")


def policy(topics: str):
    return parse_policy(GRANTS.format(topics=topics), source="test")


def fetch(*topics: str, session_id: int = 0, epoch: int = -1, correlation_id: int = 1) -> bytes:
    return request_frame(FetchRequest(
        cluster_id=None, replica_id=-1, max_wait=datetime.timedelta(milliseconds=500), min_bytes=1,
        max_bytes=1 << 20, isolation_level=0, session_id=session_id, session_epoch=epoch,
        topics=tuple(FetchTopic(topic=t, partitions=(FetchPartition(
            partition=0, current_leader_epoch=-1, fetch_offset=0, last_fetched_epoch=-1, log_start_offset=-1,
            partition_max_bytes=1 << 20),)) for t in topics),
        forgotten_topics_data=(), rack_id=""), correlation_id=correlation_id)


def records(value: str) -> bytes:
    return build_batch([Rec(json.dumps({"email": value}).encode())])


def response(topics: dict[str, bytes], *, session_id: int = 0, correlation_id: int = 1) -> bytes:
    return response_frame(FetchResponse(
        throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, session_id=session_id,
        responses=tuple(FetchableTopicResponse(topic=t, partitions=(PartitionData(
            partition_index=0, error_code=ErrorCode.none, high_watermark=1, last_stable_offset=1,
            log_start_offset=0, aborted_transactions=None, preferred_read_replica=-1, records=r),))
            for t, r in topics.items())), correlation_id=correlation_id, flexible_header=True)


def decoded(frame: bytes):
    return codec.decode_response(frame, apis.FETCH, 12)


def values(partition) -> list[bytes]:
    return [r.value for r in DefaultRecordBatch(partition.records)]


def test_an_incremental_fetch_that_lists_nothing_is_masked_on_what_the_response_carries():
    enforcer = Enforcer(Principal("reader"), lambda: policy('"*"'))
    f = fetch(session_id=9, epoch=3)  # steady state of a Java consumer: no partitions listed
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    assert verdict.forward is f and verdict.reads_response
    out, masked = enforcer.complete(response({"pii": records("jane@example.com")}, session_id=9), header, verdict)
    assert masked == 1
    partition = decoded(out).responses[0].partitions[0]
    assert b"jane@example.com" not in values(partition)[0]


def test_a_reload_revoking_consume_stops_a_live_session_and_drops_the_partition_from_it():
    current = {"policy": policy("orders")}
    enforcer = Enforcer(Principal("reader"), lambda: current["policy"])
    f = fetch(session_id=9, epoch=4)
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    current["policy"] = policy("other")  # revoked while the request waits at the broker
    out, _ = enforcer.complete(response({"orders": records("a@b.example")}, session_id=9), header, verdict)
    partition = decoded(out).responses[0].partitions[0]
    assert partition.error_code == ErrorCode.topic_authorization_failed and partition.records is None
    assert partition.preferred_read_replica == -1 and partition.high_watermark == -1
    follow = fetch(session_id=9, epoch=5, correlation_id=2)
    sent = enforcer.check(follow, codec.parse_request_header(follow)).forward
    forgotten = codec.decode_request(sent, codec.parse_request_header(sent)).forgotten_topics_data
    assert [(t.topic, tuple(t.partitions)) for t in forgotten] == [("orders", (0,))]
    # Only once: the broker has dropped it.
    again = fetch(session_id=9, epoch=6, correlation_id=3)
    assert enforcer.check(again, codec.parse_request_header(again)).forward is again


def test_a_listed_topic_it_may_not_consume_is_cut_answered_and_forgotten_in_a_session():
    enforcer = Enforcer(Principal("reader"), lambda: policy("orders"))
    f = fetch("orders", "secret", session_id=9, epoch=2)
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    assert verdict.outcome == "partly refused"
    sent = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    assert [t.topic for t in sent.topics] == ["orders"]
    assert [t.topic for t in sent.forgotten_topics_data] == ["secret"]
    out, _ = enforcer.complete(response({"orders": records("x")}, session_id=9), header, verdict)
    by_topic = {t.topic: t.partitions[0].error_code for t in decoded(out).responses}
    assert by_topic == {"orders": ErrorCode.none, "secret": ErrorCode.topic_authorization_failed}


def test_a_sessionless_fetch_of_only_refused_topics_is_answered_by_the_proxy():
    enforcer = Enforcer(Principal("reader"), lambda: policy("orders"))
    f = fetch("secret")
    verdict = enforcer.check(f, codec.parse_request_header(f))
    assert verdict.forward is None
    answer = decoded(verdict.answer)
    assert answer.responses[0].partitions[0].error_code == ErrorCode.topic_authorization_failed


def test_a_workload_allowed_everything_in_the_clear_streams_and_is_not_decoded():
    enforcer = Enforcer(Principal("reader"), lambda: EVERYTHING)
    f = fetch(session_id=9, epoch=3)
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    assert not verdict.reads_response
    broker = response({"pii": records("jane@example.com")}, session_id=9)
    assert enforcer.complete(broker, header, verdict) == (broker, 0)


def test_streaming_is_decided_when_the_response_arrives_under_the_policy_then():
    current = {"policy": policy("orders")}
    enforcer = Enforcer(Principal("reader"), lambda: current["policy"])
    f = fetch("orders")  # a full, sessionless fetch of a topic it reads in the clear
    verdict = enforcer.check(f, codec.parse_request_header(f))
    assert not verdict.reads_response
    current["policy"] = policy("other")
    assert verdict.reads_response
    # An incremental fetch may carry any partition of the session: always read unless all is clear.
    g = fetch(session_id=9, epoch=3)
    current["policy"] = policy("orders")
    assert enforcer.check(g, codec.parse_request_header(g)).reads_response


def test_a_fetched_batch_that_decompresses_past_the_cap_is_corrupt_message_not_clear():
    enforcer = Enforcer(Principal("reader"), lambda: policy('"*"'), max_batch_bytes=4096)
    f = fetch(session_id=9, epoch=3)
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    big = build_batch([Rec(json.dumps({"email": "jane@example.com", "pad": "0" * 10_000}).encode())], codec=4)
    out, _ = enforcer.complete(response({"pii": big}, session_id=9), header, verdict)
    partition = decoded(out).responses[0].partitions[0]
    assert partition.error_code == ErrorCode.corrupt_message and partition.records is None


def test_a_known_session_of_clear_topics_streams_and_an_unknown_session_id_is_read():
    current = {"policy": policy("orders")}
    enforcer = Enforcer(Principal("reader"), lambda: current["policy"])
    opening = fetch("orders", session_id=0, epoch=0)
    header = codec.parse_request_header(opening)
    verdict = enforcer.check(opening, header)
    assert verdict.reads_response  # its answer carries the session id
    enforcer.complete(response({"orders": records("x")}, session_id=77), header, verdict)
    steady = fetch(session_id=77, epoch=1, correlation_id=2)
    assert not enforcer.check(steady, codec.parse_request_header(steady)).reads_response
    stolen = fetch(session_id=78, epoch=5, correlation_id=3)  # someone else's session id
    assert enforcer.check(stolen, codec.parse_request_header(stolen)).reads_response
    again = fetch(session_id=77, epoch=2, correlation_id=4)
    verdict = enforcer.check(again, codec.parse_request_header(again))
    current["policy"] = policy("other")  # revoked: the same session's answers are read again
    assert verdict.reads_response
