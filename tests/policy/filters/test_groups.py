"""Groups: ListGroups filtered, OffsetFetch "all topics" filtered, KIP-848 assignments filtered by id."""

from __future__ import annotations

import datetime
import uuid

from kio.schema.errors import ErrorCode

from appliance.kafka import codec
from appliance.policy.enforce import Enforcer
from appliance.policy.filters.context import TopicIds
from appliance.policy.model import Principal
from appliance.policy.parser import parse_policy
from tests.kafka.builders import request_frame

POLICY = parse_policy("""
version: 1
rules:
  - name: topics
    identities: [app]
    operations: [describe, consume]
    topics: ["prefix:ok-"]
  - name: groups
    identities: [app]
    operations: [group, describe]
    consumer_groups: ["prefix:app-"]
""", source="test")


def roundtrip(e: Enforcer, request, response, correlation_id: int = 1):
    f = request_frame(request, correlation_id=correlation_id)
    header = codec.parse_request_header(f)
    verdict = e.check(f, header)
    out, _ = e.complete(codec.encode_response(header, response), header, verdict)
    return verdict, codec.decode_response(out, header.api_key, header.api_version)


def test_list_groups_is_forwarded_and_answers_only_describable_groups():
    from kio.schema.list_groups.v4.request import ListGroupsRequest
    from kio.schema.list_groups.v4.response import ListedGroup, ListGroupsResponse
    e = Enforcer(Principal("app"), lambda: POLICY)
    groups = tuple(ListedGroup(group_id=g, protocol_type="consumer", group_state="Stable")
                   for g in ("app-1", "billing", "app-2"))
    verdict, answer = roundtrip(e, ListGroupsRequest(states_filter=()), ListGroupsResponse(
        throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, groups=groups))
    assert verdict.forward is not None and [g.group_id for g in answer.groups] == ["app-1", "app-2"]


def test_offset_fetch_of_all_topics_leaves_out_what_it_may_not_consume_and_refuses_named_ones():
    from kio.schema.offset_fetch.v7.request import OffsetFetchRequest, OffsetFetchRequestTopic
    from kio.schema.offset_fetch.v7.response import (OffsetFetchResponse, OffsetFetchResponsePartition,
                                                     OffsetFetchResponseTopic)
    e = Enforcer(Principal("app"), lambda: POLICY)
    response = OffsetFetchResponse(throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, topics=tuple(
        OffsetFetchResponseTopic(name=n, partitions=(OffsetFetchResponsePartition(
            partition_index=0, committed_offset=42, committed_leader_epoch=1, metadata="m",
            error_code=ErrorCode.none),)) for n in ("ok-a", "secret")))
    _, every = roundtrip(e, OffsetFetchRequest(group_id="app-1", topics=None, require_stable=False), response)
    assert [t.name for t in every.topics] == ["ok-a"]
    named = OffsetFetchRequest(group_id="app-1", require_stable=False, topics=tuple(
        OffsetFetchRequestTopic(name=n, partition_indexes=(0,)) for n in ("ok-a", "secret")))
    _, answer = roundtrip(e, named, response, 2)
    by_name = {t.name: t.partitions[0] for t in answer.topics}
    assert by_name["ok-a"].committed_offset == 42
    assert by_name["secret"].error_code == ErrorCode.topic_authorization_failed
    assert by_name["secret"].committed_offset == -1 and by_name["secret"].metadata is None


def heartbeat(**overrides):
    from kio.schema.consumer_group_heartbeat.v1.request import ConsumerGroupHeartbeatRequest
    fields = dict(group_id="app-1", member_id="m", member_epoch=0, instance_id=None, rack_id=None,
                  rebalance_timeout=datetime.timedelta(seconds=30), subscribed_topic_names=None,
                  subscribed_topic_regex="ok-.*|secret", server_assignor=None, topic_partitions=())
    fields.update(overrides)
    return ConsumerGroupHeartbeatRequest(**fields)


def test_a_regex_subscription_assignment_keeps_only_describable_resolved_topics():
    from kio.schema.consumer_group_heartbeat.v1.response import (Assignment, ConsumerGroupHeartbeatResponse,
                                                                 TopicPartitions)
    ids = TopicIds()
    ok, secret, unknown = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids.learn(ok, "ok-a")
    ids.learn(secret, "secret")
    e = Enforcer(Principal("app"), lambda: POLICY, topic_ids=ids)
    response = ConsumerGroupHeartbeatResponse(
        throttle_time=datetime.timedelta(0), error_code=ErrorCode.none, error_message=None, member_id="m",
        member_epoch=3, heartbeat_interval=datetime.timedelta(seconds=5), assignment=Assignment(topic_partitions=tuple(
            TopicPartitions(topic_id=i, partitions=(0,)) for i in (ok, secret, unknown))))
    _, answer = roundtrip(e, heartbeat(), response)
    assert [tp.topic_id for tp in answer.assignment.topic_partitions] == [ok]


def test_subscribed_names_it_may_not_describe_refuse_the_heartbeat_naming_them():
    e = Enforcer(Principal("app"), lambda: POLICY)
    f = request_frame(heartbeat(subscribed_topic_regex=None, subscribed_topic_names=("ok-a", "secret")),
                      correlation_id=9)
    verdict = e.check(f, codec.parse_request_header(f))
    answer = codec.decode_response(verdict.answer, 68, 1)
    assert answer.error_code == ErrorCode.topic_authorization_failed and "secret" in answer.error_message


def test_describe_groups_reports_the_workloads_operations():
    from kio.schema.describe_groups.v5.request import DescribeGroupsRequest
    from kio.schema.describe_groups.v5.response import DescribedGroup, DescribeGroupsResponse
    e = Enforcer(Principal("app"), lambda: POLICY)
    group = DescribedGroup(error_code=ErrorCode.none, group_id="app-1", group_state="Stable", protocol_type="consumer",
                           protocol_data="range", members=(), authorized_operations=2**31 - 1)
    _, answer = roundtrip(e, DescribeGroupsRequest(groups=("app-1",), include_authorized_operations=True),
                          DescribeGroupsResponse(throttle_time=datetime.timedelta(0), groups=(group,)))
    assert answer.groups[0].authorized_operations == (1 << 3) | (1 << 8) | (1 << 10)  # read, describe, describe-configs


def test_consumer_group_describe_refuses_a_group_whose_members_name_hidden_topics():
    from kio.schema.consumer_group_describe.v1.request import ConsumerGroupDescribeRequest
    from kio.schema.consumer_group_describe.v1.response import (Assignment, ConsumerGroupDescribeResponse,
                                                                DescribedGroup, Member, TopicPartitions)
    e = Enforcer(Principal("app"), lambda: POLICY)

    def member(topic: str) -> Member:
        a = Assignment(topic_partitions=(TopicPartitions(topic_id=uuid.uuid4(), topic_name=topic, partitions=(0,)),))
        return Member(member_id="m", instance_id=None, rack_id=None, member_epoch=1, client_id="c", client_host="/h",
                      subscribed_topic_names=(topic,), subscribed_topic_regex=None, assignment=a,
                      target_assignment=a, member_type=1)

    def group(gid: str, topic: str) -> DescribedGroup:
        return DescribedGroup(error_code=ErrorCode.none, error_message=None, group_id=gid, group_state="Stable",
                              group_epoch=1, assignment_epoch=1, assignor_name="uniform", members=(member(topic),),
                              authorized_operations=-2147483648)

    _, answer = roundtrip(e, ConsumerGroupDescribeRequest(group_ids=("app-1", "app-2"), include_authorized_operations=False),
                          ConsumerGroupDescribeResponse(throttle_time=datetime.timedelta(0),
                                                        groups=(group("app-1", "ok-a"), group("app-2", "secret"))))
    by_id = {g.group_id: g for g in answer.groups}
    assert by_id["app-1"].error_code == ErrorCode.none and by_id["app-1"].members
    assert by_id["app-2"].error_code == ErrorCode.topic_authorization_failed and by_id["app-2"].members == ()
    assert "secret" not in repr(by_id["app-2"])


def test_list_transactions_answers_only_describable_transactional_ids_even_with_cluster_describe():
    from kio.schema.list_transactions.v1.request import ListTransactionsRequest
    from kio.schema.list_transactions.v1.response import ListTransactionsResponse, TransactionState
    policy = parse_policy("""
version: 1
rules:
  - name: tx
    identities: [app]
    operations: [describe]
    transactional_ids: ["prefix:app-"]
    cluster: true
""", source="test")
    e = Enforcer(Principal("app"), lambda: policy)
    states = tuple(TransactionState(transactional_id=t, producer_id=1, transaction_state="Ongoing")
                   for t in ("app-tx", "billing-tx"))
    _, answer = roundtrip(e, ListTransactionsRequest(state_filters=(), producer_id_filters=(), duration_filter=-1),
                          ListTransactionsResponse(throttle_time=datetime.timedelta(0), error_code=ErrorCode.none,
                                                   unknown_state_filters=(), transaction_states=states))
    assert [s.transactional_id for s in answer.transaction_states] == ["app-tx"]
