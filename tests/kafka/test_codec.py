import io
import struct

import pytest
from kio.schema.api_versions.v3.response import ApiVersion, ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer

from appliance.kafka import apis, codec
from appliance.kafka.framing import frame
from tests.kafka.builders import batch, request_frame, response_frame


def test_header_of_a_flexible_request_with_tagged_fields():
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

    f = request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="orders"),),
                                      allow_auto_topic_creation=False, include_topic_authorized_operations=False),
                      correlation_id=7, client_id="svc", tagged=b"\x01\x05\x02hi")
    h = codec.parse_request_header(f)
    assert (h.api_key, h.api_version, h.correlation_id, h.client_id) == (3, 12, 7, "svc")
    assert codec.facts_of(h.api_key, codec.decode_request(f, h)).topics == (codec.TopicPartitions("orders", ()),)


def test_header_of_a_non_flexible_request_with_null_client_id():
    from kio.schema.metadata.v5.request import MetadataRequest, MetadataRequestTopic

    f = request_frame(MetadataRequest(topics=(MetadataRequestTopic(name="a"),), allow_auto_topic_creation=True),
                      correlation_id=1, client_id=None)
    h = codec.parse_request_header(f)
    assert h.client_id is None and h.api_version == 5
    assert [t.topic for t in codec.facts_of(h.api_key, codec.decode_request(f, h)).topics] == ["a"]


def test_unknown_version_has_no_body_offset():
    f = frame(struct.pack(">hhih", 0, 13, 1, -1))
    assert codec.parse_request_header(f).body_offset == -1


def test_short_and_lying_headers_are_named():
    with pytest.raises(codec.DecodeError, match="shorter than a request header"):
        codec.parse_request_header(frame(b"\x00\x01"))
    with pytest.raises(codec.DecodeError, match="client id of 50 bytes"):
        codec.parse_request_header(frame(struct.pack(">hhih", 3, 1, 1, 50) + b"x"))


def test_produce_facts_count_records_and_acks():
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

    records = batch(3) + batch(2)
    req = ProduceRequest(transactional_id=None, acks=-1, timeout=__import__("datetime").timedelta(seconds=5),
                         topic_data=(TopicProduceData(name="orders", partition_data=(
                             PartitionProduceData(index=0, records=records),
                             PartitionProduceData(index=2, records=batch(1)))),))
    f = request_frame(req, correlation_id=9)
    facts = codec.facts_of(0, codec.decode_request(f, codec.parse_request_header(f)))
    assert facts.topics == (codec.TopicPartitions("orders", (0, 2)),)
    assert (facts.acks, facts.records) == (-1, 6)
    assert facts.record_bytes == len(records) + len(batch(1))


def test_corrupt_body_is_a_decode_error_naming_the_api():
    f = frame(struct.pack(">hhih", 3, 5, 1, -1) + b"\x00\x00\x00\x05")
    with pytest.raises(codec.DecodeError, match="Metadata v5 request does not decode"):
        codec.decode_request(f, codec.parse_request_header(f))


def test_api_versions_capped_to_what_the_proxy_parses():
    broker = ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=(ApiVersion(api_key=0, min_version=3, max_version=13), ApiVersion(api_key=1, min_version=4, max_version=18),
                  ApiVersion(api_key=3, min_version=0, max_version=13), ApiVersion(api_key=999, min_version=0, max_version=1)),
        throttle_time=__import__("datetime").timedelta(0), supported_features=(), finalized_features_epoch=-1,
        finalized_features=(), zk_migration_ready=False)
    capped = codec.cap_api_versions(response_frame(broker, correlation_id=4, flexible_header=False), 3)
    assert codec.response_correlation_id(capped) == 4
    entity = codec.decode_response(capped, apis.API_VERSIONS, 3)
    ranges = {int(a.api_key): (int(a.min_version), int(a.max_version)) for a in entity.api_keys}
    assert ranges == {0: (3, 12), 1: (4, 12), 3: (0, 13)}


def test_record_count_ignores_a_trailing_partial_batch():
    data = batch(4) + batch(5)[:30]
    assert codec.count_records(data) == 4


def test_first_error_found_in_nested_partitions():
    from kio.schema.produce.v9.response import PartitionProduceResponse, ProduceResponse, TopicProduceResponse

    resp = ProduceResponse(responses=(TopicProduceResponse(name="t", partition_responses=(
        PartitionProduceResponse(index=0, error_code=ErrorCode.none, base_offset=0, log_append_time=None,
                                 log_start_offset=0, record_errors=(), error_message=None),
        PartitionProduceResponse(index=1, error_code=ErrorCode.topic_authorization_failed, base_offset=-1,
                                 log_append_time=None, log_start_offset=-1, record_errors=(), error_message=None))),),
        throttle_time=__import__("datetime").timedelta(0))
    f = response_frame(resp, correlation_id=1, flexible_header=True)
    assert codec.response_facts(f, apis.PRODUCE, 9).error_code == 29


def test_fetch_response_facts_name_the_topic_partitions_it_answers_for():
    import datetime

    from kio.schema.fetch.v12.response import FetchableTopicResponse, FetchResponse, PartitionData

    from appliance.kafka.synth import default_entity

    def answer(topic, *partitions):
        return FetchableTopicResponse(topic=topic, partitions=tuple(
            default_entity(PartitionData, ErrorCode.none, records=batch(2), partition_index=p) for p in partitions))

    resp = FetchResponse(throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, session_id=9,
                         responses=(answer("orders", 0, 3), answer("payments", 1)))
    facts = codec.response_facts(response_frame(resp, correlation_id=1, flexible_header=True), apis.FETCH, 12)
    assert facts.topics == (codec.TopicPartitions("orders", (0, 3)), codec.TopicPartitions("payments", (1,)))
    assert (facts.records, facts.error_code) == (6, 0)


@pytest.mark.parametrize("named, answered, merged", [
    ((), (), ()),
    ((("orders", (0, 1)),), (), (("orders", (0, 1)),)),
    ((), (("orders", (2,)),), (("orders", (2,)),)),
    ((("orders", (1, 0)),), (("orders", (0,)), ("payments", (4,))), (("orders", (1, 0)), ("payments", (4,)))),
    ((("orders", (0,)),), (("orders", (0, 5)),), (("orders", (0, 5)),)),
])
def test_merged_topics_keeps_what_the_request_named_and_adds_what_the_response_answered(named, answered, merged):
    def tps(pairs):
        return tuple(codec.TopicPartitions(topic, partitions) for topic, partitions in pairs)

    assert codec.merged_topics(tps(named), tps(answered)) == tps(merged)
