"""The filters and recording: excerpts taken where the records pass, after masking, and nothing new at depth
operations (the Produce fast path by shape and the Fetch stream stay as they were)."""

from __future__ import annotations

import datetime
import json

from kafka.record.default_records import DefaultRecordBatch
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from appliance.audit.excerpts import build
from appliance.kafka import codec
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from tests.kafka.builders import request_frame
from tests.masking.builders import Rec, build_batch
from tests.policy.filters.test_fetch import decoded, fetch, response

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"
TEXT = """
version: 1
rules:
  - name: all
    identities: [auditor, quiet]
    operations: [produce, consume, unmask]
    topics: ["*"]
recording:
  - {{name: audit, identities: [auditor], topics: ["prefix:pay"], {depth}}}
masking:
  - {{name: cards, topics: ["prefix:pay"], on: [produce], detectors: [card]}}
  - {{name: mail, topics: ["prefix:pay"], on: [fetch], detectors: [email]}}
"""
EXCERPTS = parse_policy(TEXT.format(depth="depth: excerpts, value_bytes: 32"), source="t")
OPERATIONS = parse_policy(TEXT.format(depth="depth: operations"), source="t")


def records() -> bytes:
    return build_batch([Rec(json.dumps({"card": CARD, "mail": EMAIL}).encode())])


def produce(topic: str, correlation_id: int = 1) -> bytes:
    return request_frame(ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=1),
        topic_data=(TopicProduceData(name=topic, partition_data=(PartitionProduceData(index=0, records=records()),)),)),
        correlation_id=correlation_id)


def test_an_unmask_holder_reads_in_the_clear_but_its_fetch_excerpt_is_masked_both_ways():
    enforcer = Enforcer(Principal("auditor"), lambda: EXCERPTS)
    f = fetch(session_id=9, epoch=3)  # an incremental fetch naming nothing
    header = codec.parse_request_header(f)
    verdict = enforcer.check(f, header)
    assert verdict.reads_response  # never streamed unread: which topics it carries is known once read
    out, masked = enforcer.complete(response({"pay.eu": records()}, session_id=9), header, verdict)
    assert masked == 0
    delivered = [r.value for r in DefaultRecordBatch(decoded(out).responses[0].partitions[0].records)]
    assert CARD.encode() in delivered[0] and EMAIL.encode() in delivered[0]  # unmask: read as stored
    (source,) = verdict.excerpt_sources()
    (row,) = build(source, "fetch")
    assert CARD not in row.value and EMAIL not in row.value and row.value.startswith('{"card": "[REDACTED]"')


def test_a_produce_excerpt_is_what_the_broker_stores_and_the_shape_is_read_every_time():
    enforcer = Enforcer(Principal("auditor"), lambda: EXCERPTS)
    for correlation_id in (1, 2):
        frame = produce("pay.eu", correlation_id)
        verdict = enforcer.check(frame, codec.parse_request_header(frame))
        (source,) = verdict.excerpt_sources()
        assert verdict.request is not None and verdict.masked == 1  # decoded each time
        (row,) = build(source, "produce")
        assert CARD not in row.value and EMAIL not in row.value


def test_depth_operations_takes_nothing_and_keeps_the_fast_paths():
    enforcer = Enforcer(Principal("auditor"), lambda: OPERATIONS)
    for topic in ("pay.eu", "orders"):
        frame = produce(topic)
        assert enforcer.check(frame, codec.parse_request_header(frame)).excerpt_sources() == ()
    again = produce("orders", 5)
    assert enforcer.check(again, codec.parse_request_header(again)).request is None  # by shape, not decoded
    quiet = Enforcer(Principal("quiet"), lambda: EXCERPTS)  # no recording rule covers it
    f = fetch("orders")
    verdict = quiet.check(f, codec.parse_request_header(f))
    assert not verdict.reads_response and verdict.excerpt_sources() == ()
    other = Enforcer(Principal("auditor"), lambda: EXCERPTS)
    frame = produce("orders", 6)
    assert other.check(frame, codec.parse_request_header(frame)).excerpt_sources() == ()


def test_a_recorded_topic_no_masking_rule_covers_keeps_the_fast_path_and_is_still_excerpted():
    policy = parse_policy("""
version: 1
rules:
  - {name: all, identities: [auditor], operations: [produce], topics: ["*"]}
recording:
  - {name: audit, identities: [auditor], topics: [plain], depth: excerpts, records_per_request: 1}
""", source="t")
    enforcer = Enforcer(Principal("auditor"), lambda: policy)
    first = produce("plain", 1)
    assert enforcer.check(first, codec.parse_request_header(first)).request is not None  # decoded once
    again = produce("plain", 2)
    verdict = enforcer.check(again, codec.parse_request_header(again))
    assert verdict.request is None and verdict.forward is again  # by shape, not decoded
    (source,) = verdict.excerpt_sources()
    assert (source.topic, source.partition, source.limit) == ("plain", 0, 1)
    (row,) = build(source, "produce")
    assert row.value.startswith('{"card": "4111') and row.rule == "audit"  # no masking rule covers the topic
