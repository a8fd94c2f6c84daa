"""Consumer groups and transactions: listings, offsets, KIP-848 assignments, authorized operations.

Filtered, as Kafka's authorizer does, in the response:
- ListGroups answers only the groups the workload may describe (every group
  with describe on the cluster); ListTransactions likewise the transactional
  ids. Neither is refused.
- OffsetFetch: the group is decided on the request; each topic in the answer
  on the policy in force when it passes (consume). A topic asked for by name
  that the workload may not consume is answered TOPIC_AUTHORIZATION_FAILED
  per partition; when the request asked for all of the group's topics
  (`scope`), it is left out.
- ConsumerGroupHeartbeat (KIP-848): subscribed topic names the workload may
  not describe refuse the heartbeat TOPIC_AUTHORIZATION_FAILED, naming them
  (Kafka does the same). A regex subscription is resolved by the broker as the
  proxy's super user, so the assignment in every answer is filtered: a topic
  id is kept only when it maps (`Context.topic_ids`, learnt from Metadata and
  DescribeTopicPartitions answers) to a topic the workload may describe. An id
  the proxy has not seen named is left out: it cannot be decided, so it is
  not handed over. A consumer subscribing by names asks for their metadata
  first; a broker-side regex subscription gets a topic once any Metadata
  answer through the proxy has named it (docs/policy.md).
- DescribeGroups / ConsumerGroupDescribe: `authorized_operations` is the
  workload's own; a ConsumerGroupDescribe group whose members subscribe to or
  are assigned a topic the workload may not describe is answered
  TOPIC_AUTHORIZATION_FAILED without its members, as Kafka answers it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import codec
from appliance.policy.filters import refusals, scope
from appliance.policy.filters.context import Context
from appliance.policy.filters.operations import authorized_operations
from appliance.policy.filters.results import Answer, Check, Forward, Result
from appliance.policy.filters.table import Edit, TableFilter, whole_refusal
from appliance.policy.model import Operation, Policy, ResourceType
from appliance.policy.permissions import Permission


class ListingFilter:
    """ListGroups (16) and ListTransactions (66): every entry the workload may describe."""

    api_keys = (16, 66)
    _FIELDS = {16: ("groups", "group_id", ResourceType.GROUP),
               66: ("transaction_states", "transactional_id", ResourceType.TRANSACTIONAL_ID)}

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        field, name_field, resource = self._FIELDS[header.api_key]
        ctx = self.ctx
        listed = Check(resource, None, Operation.DESCRIBE, True, "every-entry-filtered")

        def edit(entity: Any, now: Policy) -> tuple[Any, int]:
            # Kafka lists every group to describe on the cluster; transactional ids are always filtered.
            if resource == ResourceType.GROUP and ctx.decide(Operation.DESCRIBE, ResourceType.CLUSTER, None,
                                                              now).allowed:
                return entity, 0
            entries = getattr(entity, field)
            kept = tuple(e for e in entries
                         if ctx.decide(Operation.DESCRIBE, resource, str(getattr(e, name_field)), now).allowed)
            return (entity if len(kept) == len(entries) else dataclasses.replace(entity, **{field: kept})), 0

        return Forward((listed,), None, Edit(ctx, None, edit))


class OffsetFetchFilter:
    api_keys = (9,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._table = TableFilter(ctx)

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        ctx = self.ctx
        if hasattr(request, "groups"):  # v8+: groups decided per entry by the table
            every = {str(g.group_id) for g in request.groups if scope.group_asks_every_topic(g)}

            def edit(entity: Any, now: Policy) -> tuple[Any, int]:
                groups = tuple(dataclasses.replace(g, topics=_topics(ctx, g.topics, str(g.group_id) in every, now))
                               for g in entity.groups)
                return dataclasses.replace(entity, groups=groups), 0

            result = self._table.request(frame, header, request, permission, policy,
                                         then=lambda merge: Edit(ctx, merge, edit))
            return result
        checks: list = []
        whole = whole_refusal(ctx, permission, request, policy, checks)
        if whole is not None:
            return Answer(refusals.refuse(header, request, *whole), tuple(checks), request)
        every = scope.asks_every_topic(header.api_key, header.api_version, request)
        for t in request.topics or ():  # recorded for the audit; decided again on the answer
            ctx.check(checks, Operation.CONSUME, ResourceType.TOPIC, str(t.name), policy)

        def edit(entity: Any, now: Policy) -> tuple[Any, int]:
            return dataclasses.replace(entity, topics=_topics(ctx, entity.topics, every, now)), 0

        return Forward(tuple(checks), request, Edit(ctx, None, edit))


def _topics(ctx: Context, topics: tuple, every: bool, policy: Policy) -> tuple:
    out = []
    for t in topics:
        decision = ctx.decide(Operation.CONSUME, ResourceType.TOPIC, str(t.name), policy)
        if decision.allowed:
            out.append(t)
        elif not every:
            message = refusals.message_for(decision)
            out.append(dataclasses.replace(t, partitions=tuple(_refused_offset(p, message) for p in t.partitions)))
    return tuple(out)


def _refused_offset(partition: Any, message: str) -> Any:
    fields = {"error_code": ErrorCode.topic_authorization_failed, "committed_offset": -1, "metadata": None}
    if hasattr(partition, "committed_leader_epoch"):
        fields["committed_leader_epoch"] = -1
    return dataclasses.replace(partition, **fields)


class HeartbeatFilter:
    """ConsumerGroupHeartbeat (68)."""

    api_keys = (68,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        ctx = self.ctx
        checks: list = []
        whole = whole_refusal(ctx, permission, request, policy, checks)
        if whole is not None:
            return Answer(refusals.refuse(header, request, *whole), tuple(checks), request)
        hidden = [str(n) for n in request.subscribed_topic_names or ()
                  if not ctx.check(checks, Operation.DESCRIBE, ResourceType.TOPIC, str(n), policy).allowed]
        if hidden:
            message = (f"refused by the appliance's policy: the subscription names topics this identity may not "
                       f"describe: {', '.join(sorted(hidden))}")
            return Answer(refusals.refuse(header, None, ErrorCode.topic_authorization_failed, message),
                          tuple(checks), request)

        def edit(entity: Any, now: Policy) -> tuple[Any, int]:
            assignment = entity.assignment
            if assignment is None:
                return entity, 0
            kept = []
            for tp in assignment.topic_partitions:
                name = ctx.topic_ids.name(tp.topic_id)
                if name is not None and ctx.decide(Operation.DESCRIBE, ResourceType.TOPIC, name, now).allowed:
                    kept.append(tp)
            if len(kept) == len(assignment.topic_partitions):
                return entity, 0
            return dataclasses.replace(entity, assignment=dataclasses.replace(
                assignment, topic_partitions=tuple(kept))), 0

        return Forward(tuple(checks), request, Edit(ctx, None, edit))


def _hidden_topics(ctx: Context, group: Any, policy: Policy) -> set[str]:
    """Topics a ConsumerGroupDescribe group's members name (subscriptions, assignments) that the workload
    may not describe."""
    names: set[str] = set()
    for member in group.members:
        names.update(str(n) for n in member.subscribed_topic_names or ())
        for assignment in (member.assignment, member.target_assignment):
            names.update(str(tp.topic_name) for tp in assignment.topic_partitions if tp.topic_name is not None)
    return {n for n in names if not ctx.decide(Operation.DESCRIBE, ResourceType.TOPIC, n, policy).allowed}


class DescribeGroupsFilter:
    """DescribeGroups (15) and ConsumerGroupDescribe (69): the table decides; operations are the workload's;
    a KIP-848 group whose members name topics the workload may not describe is refused
    TOPIC_AUTHORIZATION_FAILED (Kafka does the same), so their names do not leak."""

    api_keys = (15, 69)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._table = TableFilter(ctx)

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        operations = bool(getattr(request, "include_authorized_operations", False))
        if not operations and header.api_key != 69:
            return self._table.request(frame, header, request, permission, policy)
        ctx = self.ctx

        def edit(entity: Any, now: Policy) -> tuple[Any, int]:
            groups = []
            for g in entity.groups:
                if int(g.error_code):
                    groups.append(g)
                    continue
                hidden = sorted(_hidden_topics(ctx, g, now)) if header.api_key == 69 else []
                if hidden:  # as Kafka: members' topics the workload may not describe refuse the group
                    groups.append(dataclasses.replace(
                        g, error_code=ErrorCode.topic_authorization_failed, members=(),
                        error_message="refused by the appliance's policy: the group's members subscribe to or are "
                                      "assigned topics this identity may not describe"))
                    continue
                if operations:
                    g = dataclasses.replace(g, authorized_operations=authorized_operations(
                        now, ctx.principal, ResourceType.GROUP, str(g.group_id)))
                groups.append(g)
            return dataclasses.replace(entity, groups=tuple(groups)), 0

        return self._table.request(frame, header, request, permission, policy,
                                   then=lambda merge: Edit(ctx, merge, edit))
