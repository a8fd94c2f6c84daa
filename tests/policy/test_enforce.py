"""The enforcer on real Kafka bytes: allowed requests untouched, refused parts cut and answered."""

import datetime
import struct

from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from appliance.kafka import apis, codec
from appliance.kafka.framing import frame
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from appliance.policy.permissions import TABLE, markdown_table, offered
from tests.kafka.builders import batch, request_frame, response_frame

POLICY = parse_policy("""
version: 1
immutable_topics: [ledger]
rules:
  - name: orders-write
    identities: [orders]
    operations: [produce, describe, delete, alter]
    topics: ["prefix:orders", ledger]
  - name: orders-group
    identities: [orders]
    operations: [group]
    consumer_groups: [orders-app]
""", source="test")
ORDERS = Enforcer(Principal("orders", frozenset()), lambda: POLICY)


def produce(*topics, acks=-1, transactional_id=None):
    return request_frame(ProduceRequest(
        transactional_id=transactional_id, acks=acks, timeout=datetime.timedelta(seconds=1),
        topic_data=tuple(TopicProduceData(name=t, partition_data=(PartitionProduceData(index=0, records=batch(2)),))
                         for t in topics)), correlation_id=11)


def test_allowed_request_is_forwarded_as_the_same_bytes():
    f = produce("orders")
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    assert verdict.outcome == "allowed" and verdict.forward is f
    assert [c.rule for c in verdict.checks] == ["orders-write"]


def test_mixed_produce_forwards_the_allowed_topic_and_answers_the_other():
    f = produce("orders", "payments")
    header = codec.parse_request_header(f)
    verdict = ORDERS.check(f, header)
    assert verdict.outcome == "partly refused"
    forwarded = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    assert [t.name for t in forwarded.topic_data] == ["orders"]
    assert verdict.forward[4:header.body_offset] == f[4:header.body_offset]  # header unchanged
    from kio.schema.produce.v9.response import PartitionProduceResponse, ProduceResponse, TopicProduceResponse
    broker = response_frame(ProduceResponse(responses=(TopicProduceResponse(name="orders", partition_responses=(
        PartitionProduceResponse(index=0, error_code=ErrorCode.none, base_offset=5, log_append_time=None,
                                 log_start_offset=0, record_errors=(), error_message=None),)),),
        throttle_time=datetime.timedelta(0)), correlation_id=11, flexible_header=True)
    merged = codec.decode_response(ORDERS.complete(broker, header, verdict)[0], apis.PRODUCE, 9)
    by_topic = {t.name: t.partition_responses[0] for t in merged.responses}
    assert by_topic["orders"].error_code == ErrorCode.none and by_topic["orders"].base_offset == 5
    assert by_topic["payments"].error_code == ErrorCode.topic_authorization_failed
    assert "default-deny" in by_topic["payments"].error_message


def test_wholly_refused_produce_never_reaches_the_broker():
    f = produce("payments")
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    assert verdict.forward is None and verdict.outcome == "refused"
    answer = codec.decode_response(verdict.answer, apis.PRODUCE, 9)
    assert answer.responses[0].partition_responses[0].error_code == ErrorCode.topic_authorization_failed
    assert codec.response_correlation_id(verdict.answer) == 11


def test_refused_acks_zero_produce_gets_no_answer():
    f = produce("payments", acks=0)
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    assert verdict.forward is None and verdict.answer is None


def test_transactional_id_refusal_refuses_every_topic():
    f = produce("orders", transactional_id="tx-1")
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    answer = codec.decode_response(verdict.answer, apis.PRODUCE, 9)
    assert answer.responses[0].partition_responses[0].error_code == ErrorCode.transactional_id_authorization_failed


def test_immutable_topic_delete_is_a_policy_violation():
    from kio.schema.delete_topics.v5.request import DeleteTopicsRequest
    f = request_frame(DeleteTopicsRequest(topic_names=("ledger", "orders-old"), timeout=datetime.timedelta(seconds=5)),
                      correlation_id=3)
    header = codec.parse_request_header(f)
    verdict = ORDERS.check(f, header)
    assert verdict.outcome == "partly refused"
    assert [c.rule for c in verdict.checks] == ["immutable-topics", "orders-write"]
    assert verdict.merge.entries[0].error_code == ErrorCode.policy_violation


def test_group_refusal_answers_the_whole_request():
    from kio.schema.heartbeat.v4.request import HeartbeatRequest
    f = request_frame(HeartbeatRequest(group_id="other", generation_id=1, member_id="m", group_instance_id=None),
                      correlation_id=4)
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    assert verdict.answer is not None and verdict.forward is None
    from kio.schema.heartbeat.v4.response import HeartbeatResponse
    from kio.serial import entity_reader
    response, _ = entity_reader(HeartbeatResponse)(verdict.answer, 9)
    assert response.error_code == ErrorCode.group_authorization_failed


def test_metadata_for_every_topic_hides_what_may_not_be_described():
    f = request_frame(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                      include_topic_authorized_operations=False), correlation_id=5)
    header = codec.parse_request_header(f)
    verdict = ORDERS.check(f, header)
    assert verdict.reads_response and verdict.forward is f
    from kio.schema.metadata.v12.response import MetadataResponse, MetadataResponseTopic
    topics = tuple(MetadataResponseTopic(error_code=ErrorCode.none, name=n, topic_id=__import__("uuid").uuid4(),
                                         is_internal=False, partitions=(), topic_authorized_operations=-2147483648)
                   for n in ("orders", "payments", "orders-eu"))
    broker = response_frame(MetadataResponse(throttle_time=datetime.timedelta(0), brokers=(), cluster_id="c",
                                             controller_id=1, topics=topics), correlation_id=5, flexible_header=True)
    visible = codec.decode_response(ORDERS.complete(broker, header, verdict)[0], apis.METADATA, 12)
    assert [t.name for t in visible.topics] == ["orders", "orders-eu"]


def test_metadata_auto_creation_needs_create():
    f = request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="orders"),),
                                      allow_auto_topic_creation=True, include_topic_authorized_operations=False),
                      correlation_id=6)
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    sent = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    assert sent.allow_auto_topic_creation is False


def test_unmapped_api_is_answered_with_an_error_not_forwarded():
    from kio.schema.describe_quorum.v1.request import DescribeQuorumRequest
    f = request_frame(DescribeQuorumRequest(topics=()), correlation_id=8)
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    assert verdict.forward is None and verdict.answer is not None
    assert verdict.checks[0].rule == "unmapped-api"
    assert offered(55) is None  # and it is not offered in ApiVersions


def test_every_row_of_the_table_answers_a_refusal_that_encodes():
    """A refusal of each mapped API at each offered version builds and re-reads as a valid response."""
    from appliance.kafka.synth import default_entity
    for row in TABLE:
        versions = offered(row.api_key)
        for version in range(versions.min, versions.max + 1):
            cls = apis.response_class(row.api_key, version)
            header = codec.RequestHeader(row.api_key, version, 1, None, 0)
            frame_ = codec.build_response(header, **{f: getattr(default_entity(cls, ErrorCode.cluster_authorization_failed), f)
                                                   for f in cls.__dataclass_fields__ if not f.startswith("__")})
            codec.decode_response(frame_, row.api_key, version)


def test_published_table_matches_the_code():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    assert markdown_table() in doc, "docs/policy.md's API table is stale: run `make docs`"


def test_wholly_refused_metadata_still_asks_the_broker_for_its_brokers():
    f = request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="payments"),),
                                      allow_auto_topic_creation=False, include_topic_authorized_operations=False),
                      correlation_id=7)
    verdict = ORDERS.check(f, codec.parse_request_header(f))
    sent = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    assert sent.topics == () and verdict.answer is None
    assert verdict.merge.entries[0].error_code == ErrorCode.topic_authorization_failed


MASKED = parse_policy("""
version: 1
rules:
  - name: orders-write
    identities: [orders]
    operations: [produce, consume, describe]
    topics: ["*"]
masking:
  - name: emails
    topics: [pii]
    on: [produce, fetch]
    detectors: [email]
    action: redact
  - name: strict-json
    topics: [strict]
    on: [produce]
    fields: ["$.card"]
    action: redact
    invalid: reject
""", source="test")
MASKING = Enforcer(Principal("orders", frozenset()), lambda: MASKED)


def json_batch(value: bytes) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=None, value=value, headers=[])
    return bytes(builder.build())


def produce_values(topic_values: dict) -> bytes:
    return request_frame(ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=1),
        topic_data=tuple(TopicProduceData(name=t, partition_data=(PartitionProduceData(index=0, records=json_batch(v)),))
                         for t, v in topic_values.items())), correlation_id=21)


def test_produce_to_a_masked_topic_is_rewritten_and_counted():
    f = produce_values({"pii": b'{"email": "a@example.com"}', "plain": b'{"email": "b@example.com"}'})
    verdict = MASKING.check(f, codec.parse_request_header(f))
    assert verdict.outcome == "allowed" and verdict.masked == 1
    sent = codec.decode_request(verdict.forward, codec.parse_request_header(verdict.forward))
    by_topic = {t.name: t.partition_data[0].records for t in sent.topic_data}
    assert b"a@example.com" not in by_topic["pii"]
    assert b"b@example.com" in by_topic["plain"]  # no rule: the same bytes


def test_a_record_the_rule_rejects_is_answered_invalid_record():
    f = produce_values({"strict": b"not json", "pii": b'{"x": 1}'})
    header = codec.parse_request_header(f)
    verdict = MASKING.check(f, header)
    assert verdict.outcome == "partly refused"
    entry = verdict.merge.entries[0]
    assert entry.name == "strict" and entry.partition_responses[0].error_code == ErrorCode.invalid_record
    assert "strict-json" in entry.partition_responses[0].error_message


def test_a_produce_of_a_known_shape_is_decided_without_a_decode_until_the_policy_changes():
    current = {"policy": POLICY}
    enforcer = Enforcer(Principal("orders", frozenset()), lambda: current["policy"])
    first = produce("orders")
    assert enforcer.check(first, codec.parse_request_header(first)).request is not None  # decoded
    again = request_frame(ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=1),
        topic_data=(TopicProduceData(name="orders", partition_data=(PartitionProduceData(index=0, records=batch(7)),)),)),
        correlation_id=12)
    verdict = enforcer.check(again, codec.parse_request_header(again))
    assert verdict.request is None and verdict.forward is again and verdict.outcome == "allowed"
    assert [c.rule for c in verdict.checks] == ["orders-write"]
    assert (verdict.facts.records, verdict.facts.topics) == (7, (codec.TopicPartitions("orders", (0,)),))
    current["policy"] = parse_policy("version: 1\nrules: []\n", source="reloaded")
    refused = enforcer.check(again, codec.parse_request_header(again))
    assert refused.outcome == "refused" and refused.forward is None


def test_a_produce_to_a_masked_topic_is_read_every_time():
    enforcer = Enforcer(Principal("orders", frozenset()), lambda: MASKED)
    for _ in range(2):
        f = produce_values({"pii": b'{"email": "a@example.com"}'})
        verdict = enforcer.check(f, codec.parse_request_header(f))
        assert verdict.masked == 1 and b"a@example.com" not in verdict.forward


def test_a_produced_batch_that_decompresses_past_the_cap_is_invalid_record():
    from tests.masking.builders import Rec, build_batch
    enforcer = Enforcer(Principal("orders", frozenset()), lambda: MASKED, max_batch_bytes=4096)
    big = build_batch([Rec(b'{"email": "a@example.com", "pad": "' + b"0" * 10_000 + b'"}')], codec=4)
    f = request_frame(ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=1),
                                     topic_data=(TopicProduceData(name="pii", partition_data=(
                                         PartitionProduceData(index=0, records=big),)),)), correlation_id=31)
    verdict = enforcer.check(f, codec.parse_request_header(f))
    assert verdict.forward is None
    answer = codec.decode_response(verdict.answer, apis.PRODUCE, 9)
    partition = answer.responses[0].partition_responses[0]
    assert partition.error_code == ErrorCode.invalid_record and "decompresses to more than 4096" in partition.error_message
