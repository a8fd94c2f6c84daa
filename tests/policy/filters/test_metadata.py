"""Metadata, DescribeTopicPartitions and DescribeCluster filtered as Kafka's authorizer would answer."""

from __future__ import annotations

import datetime
import uuid

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity
from appliance.policy.enforce import Enforcer
from appliance.policy.filters.context import TopicIds
from appliance.policy.filters.operations import DESCRIBE, DESCRIBE_CONFIGS, READ
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from tests.kafka.builders import request_frame

POLICY = parse_policy("""
version: 1
rules:
  - name: peek
    identities: [peeker]
    operations: [describe, consume]
    topics: ["prefix:ok-"]
""", source="test")
NAMES = ("ok-a", "secret", "__consumer_offsets", "ok-b")
IDS = {n: uuid.uuid4() for n in NAMES}


def enforcer(ids: TopicIds | None = None) -> Enforcer:
    return Enforcer(Principal("peeker"), lambda: POLICY, topic_ids=ids if ids is not None else TopicIds())


def broker_metadata(header: codec.RequestHeader) -> bytes:
    cls = apis.response_class(apis.METADATA, header.api_version)
    from appliance.kafka.synth import element_type
    import typing
    topic_cls = element_type(typing.get_type_hints(cls)["topics"])
    fields = {f for f in topic_cls.__dataclass_fields__}
    topics = tuple(default_entity(topic_cls, ErrorCode.none, name=n, **({"topic_id": IDS[n]} if "topic_id" in fields else {}))
                   for n in NAMES)
    return codec.encode_response(header, default_entity(cls, ErrorCode.none, topics=topics))


def names(frame: bytes, version: int) -> list[str]:
    return [str(t.name) for t in codec.decode_response(frame, apis.METADATA, version).topics]


def run(request) -> tuple[list[str], object]:
    e = enforcer()
    f = request_frame(request, correlation_id=3)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    out, _ = e.complete(broker_metadata(header), header, verdict)
    return names(out, header.api_version), verdict


def test_metadata_v0_with_an_empty_list_means_all_and_is_filtered():
    from kio.schema.metadata.v0.request import MetadataRequest
    seen, verdict = run(MetadataRequest(topics=()))
    assert seen == ["ok-a", "ok-b"] and verdict.checks[0].rule == "every-topic-filtered"


def test_metadata_v1_with_a_null_list_means_all_and_is_filtered():
    from kio.schema.metadata.v1.request import MetadataRequest
    assert run(MetadataRequest(topics=None))[0] == ["ok-a", "ok-b"]


def test_metadata_v0_naming_only_refused_topics_cannot_ask_for_all_and_leak():
    from kio.schema.metadata.v0.request import MetadataRequest, MetadataRequestTopic
    seen, verdict = run(MetadataRequest(topics=(MetadataRequestTopic(name="secret"),)))
    # v0's empty list means all: the broker's answer is cut down to what was asked and allowed (nothing),
    # and the refused name is answered TOPIC_AUTHORIZATION_FAILED.
    assert seen == ["secret"] and verdict.outcome == "refused"


def test_topic_authorized_operations_are_the_workloads():
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
    e = enforcer()
    f = request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="ok-a"),),
                                      allow_auto_topic_creation=False, include_topic_authorized_operations=True),
                      correlation_id=4)
    header = codec.parse_request_header(f)
    out, _ = e.complete(broker_metadata(header), header, e.check(f, header))
    topics = codec.decode_response(out, apis.METADATA, 12).topics
    assert [(t.name, t.topic_authorized_operations) for t in topics] == [
        ("ok-a", (1 << READ) | (1 << DESCRIBE) | (1 << DESCRIBE_CONFIGS))]


def test_describe_topic_partitions_with_an_empty_list_is_filtered_and_ids_are_learnt():
    from kio.schema.describe_topic_partitions.v0.request import DescribeTopicPartitionsRequest
    from kio.schema.describe_topic_partitions.v0.response import (DescribeTopicPartitionsResponse,
                                                                  DescribeTopicPartitionsResponseTopic)
    ids = TopicIds()
    e = enforcer(ids)
    f = request_frame(DescribeTopicPartitionsRequest(topics=(), response_partition_limit=100, cursor=None),
                      correlation_id=5)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    assert verdict.forward is f
    broker = codec.encode_response(header, DescribeTopicPartitionsResponse(
        throttle_time=datetime.timedelta(0), next_cursor=None, topics=tuple(
            DescribeTopicPartitionsResponseTopic(error_code=ErrorCode.none, name=n, topic_id=IDS[n], is_internal=False,
                                                 partitions=(), topic_authorized_operations=-1) for n in NAMES)))
    out, _ = e.complete(broker, header, verdict)
    topics = codec.decode_response(out, 75, 0).topics
    assert [t.name for t in topics] == ["ok-a", "ok-b"]
    assert all(t.topic_authorized_operations == (1 << READ) | (1 << DESCRIBE) | (1 << DESCRIBE_CONFIGS) for t in topics)
    assert ids.name(IDS["secret"]) == "secret"  # learnt before filtering, for heartbeat assignments


def test_describe_cluster_is_forwarded_and_reports_no_rights_without_describe_on_the_cluster():
    from kio.schema.describe_cluster.v1.request import DescribeClusterRequest
    e = enforcer()
    f = request_frame(DescribeClusterRequest(include_cluster_authorized_operations=True, endpoint_type=1),
                      correlation_id=6)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    assert verdict.forward is f and verdict.answer is None
    cls = apis.response_class(60, 1)
    broker = codec.encode_response(header, default_entity(cls, ErrorCode.none, cluster_authorized_operations=2**31 - 1))
    out, _ = e.complete(broker, header, verdict)
    assert codec.decode_response(out, 60, 1).cluster_authorized_operations == 0
    plain = request_frame(DescribeClusterRequest(include_cluster_authorized_operations=False, endpoint_type=1),
                          correlation_id=7)
    assert not e.check(plain, codec.parse_request_header(plain)).reads_response


def test_metadata_cluster_authorized_operations_are_the_workloads():
    from kio.schema.metadata.v10.request import MetadataRequest
    described = parse_policy("""
version: 1
rules:
  - name: peek
    identities: [peeker]
    operations: [describe]
    cluster: true
""", source="test")
    for policy, expected in ((POLICY, 0), (described, (1 << DESCRIBE) | (1 << DESCRIBE_CONFIGS))):
        e = Enforcer(Principal("peeker"), lambda: policy, topic_ids=TopicIds())
        f = request_frame(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                          include_cluster_authorized_operations=True,
                                          include_topic_authorized_operations=False), correlation_id=8)
        header = codec.parse_request_header(f)
        out, _ = e.complete(broker_metadata(header), header, e.check(f, header))
        assert codec.decode_response(out, apis.METADATA, 10).cluster_authorized_operations == expected


# --- topics asked for by id (Metadata v12+; the Java KIP-848 consumer's regex assignment) ----------------

def _by_id_request(*topic_ids, version: int = 12, **kw):
    from importlib import import_module
    m = import_module(f"kio.schema.metadata.v{version}.request")
    if version < 11:
        kw.setdefault("include_cluster_authorized_operations", False)
    return m.MetadataRequest(topics=tuple(m.MetadataRequestTopic(topic_id=i, name=None) for i in topic_ids),
                             allow_auto_topic_creation=False, include_topic_authorized_operations=False, **kw)


def _broker_answer_by_id(header: codec.RequestHeader, request) -> bytes:
    """The broker as the proxy's super user: every asked id it knows, named; the others UNKNOWN_TOPIC_ID."""
    import typing
    from appliance.kafka.synth import element_type
    cls = apis.response_class(apis.METADATA, header.api_version)
    topic_cls = element_type(typing.get_type_hints(cls)["topics"])
    names = {v: k for k, v in IDS.items()}
    topics = tuple(default_entity(topic_cls, ErrorCode.none, name=names[t.topic_id], topic_id=t.topic_id)
                   if t.topic_id in names else
                   default_entity(topic_cls, ErrorCode.unknown_topic_id, name=None, topic_id=t.topic_id)
                   for t in request.topics)
    return codec.encode_response(header, default_entity(cls, ErrorCode.none, topics=topics))


def _ask_by_id(e: Enforcer, request, correlation_id: int = 9):
    f = request_frame(request, correlation_id=correlation_id)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    sent = verdict.forward
    forwarded = codec.decode_request(sent, codec.parse_request_header(sent))
    out, _ = e.complete(_broker_answer_by_id(header, forwarded), header, verdict)
    answer = codec.decode_response(out, apis.METADATA, header.api_version)
    return {t.topic_id: (t.name, t.error_code) for t in answer.topics}, verdict, forwarded


def test_an_id_never_seen_named_is_forwarded_and_decided_on_the_answer():
    seen, verdict, forwarded = _ask_by_id(enforcer(), _by_id_request(IDS["ok-a"], IDS["secret"]))
    assert seen == {IDS["ok-a"]: ("ok-a", ErrorCode.none),
                    IDS["secret"]: (None, ErrorCode.topic_authorization_failed)}
    assert {c.rule for c in verdict.checks} == {"decided-on-the-answer"}


def test_an_id_seen_named_is_decided_by_that_name_before_the_broker_is_asked():
    ids = TopicIds()
    for name, topic_id in IDS.items():
        ids.learn(topic_id, name)
    seen, verdict, forwarded = _ask_by_id(enforcer(ids), _by_id_request(IDS["ok-b"], IDS["secret"]))
    assert [t.topic_id for t in forwarded.topics] == [IDS["ok-b"]]
    assert seen == {IDS["ok-b"]: ("ok-b", ErrorCode.none),
                    IDS["secret"]: (None, ErrorCode.topic_authorization_failed)}
    assert verdict.outcome == "partly refused"
    assert [(c.name, c.allowed) for c in verdict.checks] == [("ok-b", True), ("secret", False)]


def test_an_unknown_id_is_answered_as_the_broker_answers_it():
    stranger = uuid.uuid4()
    seen, _, _ = _ask_by_id(enforcer(), _by_id_request(stranger))
    assert seen == {stranger: (None, ErrorCode.unknown_topic_id)}


def test_a_name_beside_an_id_cannot_smuggle_the_ids_topic():
    # Kafka reads only ids once any is given: a request naming "ok-a" with the id of "secret" is about "secret".
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
    request = MetadataRequest(topics=(MetadataRequestTopic(topic_id=IDS["secret"], name="ok-a"),),
                              allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    seen, _, _ = _ask_by_id(enforcer(), request)
    assert seen == {IDS["secret"]: (None, ErrorCode.topic_authorization_failed)}


def test_an_answer_about_an_id_not_asked_for_is_dropped():
    e = enforcer()
    f = request_frame(_by_id_request(IDS["ok-a"]), correlation_id=11)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    out, _ = e.complete(_broker_answer_by_id(header, _by_id_request(IDS["ok-a"], IDS["ok-b"])), header, verdict)
    assert [t.name for t in codec.decode_response(out, apis.METADATA, 12).topics] == ["ok-a"]


def test_ids_before_v12_and_ids_mixed_with_names_close_the_connection():
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
    import pytest
    from appliance.policy.enforce import FilterClosed
    for request in (_by_id_request(IDS["ok-a"], version=10), _by_id_request(None, version=11),
                    MetadataRequest(topics=(MetadataRequestTopic(topic_id=IDS["ok-a"], name=None),
                                            MetadataRequestTopic(topic_id=None, name="ok-b")),
                                    allow_auto_topic_creation=False, include_topic_authorized_operations=False)):
        f = request_frame(request, correlation_id=12)
        with pytest.raises(FilterClosed, match="by id"):
            enforcer().check(f, codec.parse_request_header(f))
