"""Produce requests and answers recognised by their bytes, checked against kio's decode at every version."""

from __future__ import annotations

import datetime
import typing

import pytest
from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from tests.kafka.builders import batch, request_frame, response_frame

VERSIONS = range(apis.parseable(apis.PRODUCE).min, apis.parseable(apis.PRODUCE).max + 1)


def _types(cls) -> dict:
    return typing.get_type_hints(cls)


def produce(version: int, partitions: dict, *, acks: int = -1, transactional_id: str | None = None,
            correlation_id: int = 7) -> bytes:
    """A Produce request of `version`: {topic: {partition: records}}."""
    from appliance.kafka.synth import element_type

    request = apis.request_class(apis.PRODUCE, version)
    topic_cls = element_type(_types(request)["topic_data"])
    partition_cls = element_type(_types(topic_cls)["partition_data"])
    topics = tuple(topic_cls(name=name, partition_data=tuple(partition_cls(index=i, records=r) for i, r in parts.items()))
                   for name, parts in partitions.items())
    return request_frame(request(transactional_id=transactional_id, acks=acks, timeout=datetime.timedelta(seconds=1),
                                 topic_data=topics), correlation_id=correlation_id)


def decoded(frame: bytes):
    header = codec.parse_request_header(frame)
    return header, codec.decode_request(frame, header)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_request_of_a_known_shape_gives_the_facts_a_decode_gives(version):
    header, request = decoded(produce(version, {"orders": {3: batch(2)}}))
    shape = codec.produce_shape(produce(version, {"orders": {3: batch(2)}}), header, request)
    assert shape is not None
    later = produce(version, {"orders": {3: batch(5) + batch(4, payload=b"y" * 300)}}, correlation_id=8)
    later_header, later_request = decoded(later)
    assert codec.match_produce(later, later_header, shape) == codec.facts_of(apis.PRODUCE, later_request)
    assert codec.match_produce(later, later_header, shape).records == 9


@pytest.mark.parametrize("version", [VERSIONS[0], 8, 9, VERSIONS[-1]])
def test_a_request_of_another_shape_is_not_recognised(version):
    first = produce(version, {"orders": {0: batch(2)}})
    shape = codec.produce_shape(first, *decoded(first))
    others = [
        produce(version, {"orders": {1: batch(2)}}),  # another partition
        produce(version, {"orderz": {0: batch(2)}}),  # another topic, same length
        produce(version, {"orders": {0: batch(2)}}, acks=0),
        produce(version, {"orders": {0: batch(2)}}, transactional_id="tx"),
        produce(version, {"orders": {0: batch(2), 1: batch(1)}}),
        produce(version, {"orders": {0: batch(2)}, "more": {0: batch(1)}}),
    ]
    for other in others:
        assert codec.match_produce(other, codec.parse_request_header(other), shape) is None
    other_version = VERSIONS[-1] if version != VERSIONS[-1] else VERSIONS[0]
    elsewhere = produce(other_version, {"orders": {0: batch(2)}})
    assert codec.match_produce(elsewhere, codec.parse_request_header(elsewhere), shape) is None


def test_a_request_with_its_records_cut_short_is_not_recognised():
    first = produce(9, {"orders": {0: batch(2)}})
    shape = codec.produce_shape(first, *decoded(first))
    header = codec.parse_request_header(first)
    # The same prefix, but the records' length names more bytes than the frame holds.
    assert codec.match_produce(first[:-10], header, shape) is None


def test_requests_with_several_partitions_or_no_records_have_no_shape():
    for partitions in ({"orders": {0: batch(1), 1: batch(1)}}, {"a": {0: batch(1)}, "b": {0: batch(1)}},
                       {"orders": {0: None}}):
        f = produce(9, partitions)
        assert codec.produce_shape(f, *decoded(f)) is None


def produce_response(version: int, topic: str, partition: int, error: ErrorCode, *, more_partitions: bool = False):
    from appliance.kafka.synth import default_entity, element_type

    response = apis.response_class(apis.PRODUCE, version)
    topic_cls = element_type(_types(response)["responses"])
    partition_cls = element_type(_types(topic_cls)["partition_responses"])
    partitions = [default_entity(partition_cls, error, index=partition)]
    if more_partitions:
        partitions.append(default_entity(partition_cls, ErrorCode.none, index=partition + 1))
    body = default_entity(response, ErrorCode.none,
                          responses=(topic_cls(name=topic, partition_responses=tuple(partitions)),))
    return response_frame(body, correlation_id=7,
                          flexible_header=apis.response_header_is_flexible(apis.PRODUCE, version))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("error", [ErrorCode.none, ErrorCode.not_leader_or_follower, ErrorCode.topic_authorization_failed])
def test_the_answer_to_a_known_request_gives_the_error_a_decode_gives(version, error):
    facts = codec.RequestFacts(topics=(codec.TopicPartitions("orders", (3,)),))
    answer = produce_response(version, "orders", 3, error)
    assert codec.produce_response_error(answer, version, facts) == int(error)
    assert codec.response_facts(answer, apis.PRODUCE, version).error_code == int(error)


def test_an_answer_of_another_form_is_left_to_the_decode():
    facts = codec.RequestFacts(topics=(codec.TopicPartitions("orders", (3,)),))
    assert codec.produce_response_error(produce_response(9, "orderz", 3, ErrorCode.none), 9, facts) is None
    assert codec.produce_response_error(produce_response(9, "orders", 4, ErrorCode.none), 9, facts) is None
    several = codec.RequestFacts(topics=(codec.TopicPartitions("orders", (3, 4)),))
    assert codec.produce_response_error(produce_response(9, "orders", 3, ErrorCode.none, more_partitions=True), 9,
                                        several) is None


@pytest.mark.parametrize("length", [-12, -100, 0, 48])
def test_a_batch_length_no_batch_can_have_ends_the_count_instead_of_looping(length):
    import struct

    bad = bytearray(batch(3))
    struct.pack_into(">i", bad, 8, length)
    first = produce(9, {"orders": {0: batch(3)}})
    shape = codec.produce_shape(first, *decoded(first))
    request = produce(9, {"orders": {0: bytes(bad) + batch(2)}})
    import signal

    def hung(*_):
        raise AssertionError("counting records did not finish: it loops on the bad length")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert codec.count_records(bytes(bad) + batch(2)) == 0
        assert codec.match_produce(request, codec.parse_request_header(request), shape).records == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
