"""Metadata, DescribeTopicPartitions and DescribeCluster: what exists, filtered as Kafka's authorizer does.

Kafka omits, silently, every topic the principal may not describe from an
"all topics" answer (`scope` says which requests mean all), answers a named
topic it may not describe TOPIC_AUTHORIZATION_FAILED, and reports
`authorized_operations` for the principal. The proxy asks the broker as its
super user, so it filters each answer under the policy in force when the
answer passes, and writes the workload's own rights into the
authorized-operations fields. Every topic id the broker names is remembered
(`Context.topic_ids`) before anything is filtered, for KIP-848 assignments.
Metadata may auto-create the topics it names: that needs `create`, or the
request goes on with auto-creation off.

Metadata v12+ may name topics by id (the Java KIP-848 consumer does, for a
regex assignment). Kafka then reads only the ids and ignores every name, so
the proxy does too: an id it has seen named is decided by that name, an id it
has not is forwarded and decided on the broker's answer, which names it. A
topic refused either way is answered as Kafka answers it: TOPIC_AUTHORIZATION_FAILED,
its id, no name, no partitions. Ids before v12 are invalid (Kafka refuses them
too); such a request closes the connection. DescribeCluster needs nothing (as in
Kafka); its `cluster_authorized_operations` is 0 without describe on the cluster.
"""

from __future__ import annotations

import dataclasses
import typing
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity, element_type
from appliance.policy.filters import refusals, scope
from appliance.policy.filters.context import Context
from appliance.policy.filters.operations import authorized_operations
from appliance.policy.filters.results import Check, Close, Forward, Result, Rewritten
from appliance.policy.filters.table import Edit, Merge, TableFilter, split
from appliance.policy.model import Operation, Policy, ResourceType
from appliance.policy.permissions import Permission

EVERY_TOPIC = "every-topic-filtered"
DECIDED_ON_ANSWER = "decided-on-the-answer"
TOPIC_IDS_FROM_VERSION = 12
_NULL_ID = uuid.UUID(int=0)


def _topics_edit(ctx: Context, wanted: frozenset[str] | None, topic_ops: bool, cluster_ops: bool):
    """Keep the broker's topics the workload may describe now (and, when given, that it asked for)."""

    def edit(entity: Any, policy: Policy) -> tuple[Any, int]:
        kept, changed = [], False
        for t in entity.topics:
            ctx.topic_ids.learn(getattr(t, "topic_id", None), t.name)
            name = None if t.name is None else str(t.name)
            if name is None or (wanted is not None and name not in wanted) or not ctx.decide(
                    Operation.DESCRIBE, ResourceType.TOPIC, name, policy).allowed:
                changed = True
                continue
            if topic_ops:
                t = _with_ops(ctx, t, policy)
                changed = True
            kept.append(t)
        if cluster_ops and hasattr(entity, "cluster_authorized_operations"):
            entity = dataclasses.replace(entity, cluster_authorized_operations=_cluster_ops(ctx, policy))
            changed = True
        return (dataclasses.replace(entity, topics=tuple(kept)) if changed else entity), 0

    return edit


def _by_id(topic: Any) -> uuid.UUID | None:
    topic_id = getattr(topic, "topic_id", None)
    return None if topic_id is None or topic_id == _NULL_ID else topic_id


def _refused_by_id(topic: Any, message: str | None = None) -> Any:
    """A response topic as Kafka answers an id the principal may not describe: the id, nothing else."""
    fields = {"error_code": ErrorCode.topic_authorization_failed, "name": None, "is_internal": False,
              "partitions": ()}
    if hasattr(topic, "topic_authorized_operations"):
        fields["topic_authorized_operations"] = -2147483648  # Kafka's "not requested" value
    return dataclasses.replace(topic, **fields)


def _ids_edit(ctx: Context, asked: frozenset[uuid.UUID], topic_ops: bool, cluster_ops: bool):
    """An answer to topics asked for by id: each is decided by the name the broker gives it now."""

    def edit(entity: Any, policy: Policy) -> tuple[Any, int]:
        out = []
        for t in entity.topics:
            ctx.topic_ids.learn(getattr(t, "topic_id", None), t.name)
            if t.topic_id not in asked:
                continue  # Kafka answers only the ids asked for; anything else is not the workload's to see
            if t.name is None:  # UNKNOWN_TOPIC_ID: nothing is named
                out.append(t)
            elif not ctx.decide(Operation.DESCRIBE, ResourceType.TOPIC, str(t.name), policy).allowed:
                out.append(_refused_by_id(t))
            else:
                out.append(_with_ops(ctx, t, policy) if topic_ops else t)
        if cluster_ops and hasattr(entity, "cluster_authorized_operations"):
            entity = dataclasses.replace(entity, cluster_authorized_operations=_cluster_ops(ctx, policy))
        return dataclasses.replace(entity, topics=tuple(out)), 0

    return edit


def _with_ops(ctx: Context, topic: Any, policy: Policy) -> Any:
    return dataclasses.replace(topic, topic_authorized_operations=authorized_operations(
        policy, ctx.principal, ResourceType.TOPIC, str(topic.name)))


def _cluster_ops(ctx: Context, policy: Policy) -> int:
    if not ctx.decide(Operation.DESCRIBE, ResourceType.CLUSTER, None, policy).allowed:
        return 0  # as Kafka: without describe on the cluster, no rights are reported
    return authorized_operations(policy, ctx.principal, ResourceType.CLUSTER, None)


class MetadataFilter:
    api_keys = (3,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        topic_ops = bool(getattr(request, "include_topic_authorized_operations", False))
        cluster_ops = bool(getattr(request, "include_cluster_authorized_operations", False))
        if scope.metadata_asks_every_topic(header.api_version, request.topics):
            every = Check(ResourceType.TOPIC, None, Operation.DESCRIBE, True, EVERY_TOPIC)
            return Forward((every,), request, Edit(self.ctx, None, _topics_edit(self.ctx, None, topic_ops, cluster_ops)))
        if any(_by_id(t) is not None or t.name is None for t in request.topics):
            return self._by_ids(frame, header, request, policy, topic_ops, cluster_ops)
        checks: list = []
        _, kept, refused = split(self.ctx, permission.each, request, policy, checks)
        rewritten = request
        if refused:
            # v0 cannot ask for none (empty means all): the answer is filtered down to the kept names.
            rewritten = dataclasses.replace(request, topics=tuple(kept))
        if getattr(request, "allow_auto_topic_creation", False) and not all(
                self.ctx.check(checks, Operation.CREATE, ResourceType.TOPIC, str(t.name), policy, hold=False).allowed
                for t in kept if t.name is not None):
            rewritten = dataclasses.replace(rewritten, allow_auto_topic_creation=False)
        wanted = frozenset(str(t.name) for t in kept if t.name is not None)
        merge = Merge("topics", refusals.mirrored(header, "topics", refused)) if refused else None
        then = Edit(self.ctx, merge, _topics_edit(self.ctx, wanted, topic_ops, cluster_ops))
        if rewritten is request:
            return Forward(tuple(checks), request, then)
        outcome = "allowed" if not refused else ("partly refused" if kept else "refused")
        return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request, then,
                         outcome=outcome)


    def _by_ids(self, frame: bytes, header: codec.RequestHeader, request: Any, policy: Policy,
                topic_ops: bool, cluster_ops: bool) -> Result:
        version = header.api_version
        if version < TOPIC_IDS_FROM_VERSION:
            return Close(f"Metadata v{version} request names a topic by id or by a null name; "
                         f"topic ids need v{TOPIC_IDS_FROM_VERSION}+ (Kafka refuses it as an invalid request)")
        ids = [_by_id(t) for t in request.topics]
        if None in ids:
            return Close(f"Metadata v{version} request mixes topics named by id with topics named "
                         f"only by name; Kafka would ignore the names")
        ctx, checks, kept, refused = self.ctx, [], [], []
        for t, topic_id in zip(request.topics, ids):
            name = ctx.topic_ids.name(topic_id)
            if name is None:  # not seen named: forwarded, and decided on the broker's answer
                checks.append(Check(ResourceType.TOPIC, f"id:{topic_id}", Operation.DESCRIBE, True,
                                    DECIDED_ON_ANSWER))
                kept.append(t)
            elif ctx.check(checks, Operation.DESCRIBE, ResourceType.TOPIC, name, policy).allowed:
                kept.append(t)
            else:
                refused.append(t)
        asked = frozenset(_by_id(t) for t in kept)
        edit = _ids_edit(ctx, asked, topic_ops, cluster_ops)
        if not refused:
            return Forward(tuple(checks), request, Edit(ctx, None, edit))
        cls = apis.response_class(apis.METADATA, version)
        element = element_type(typing.get_type_hints(cls)["topics"])
        entries = tuple(_refused_by_id(default_entity(element, ErrorCode.topic_authorization_failed,
                                                      topic_id=t.topic_id)) for t in refused)
        rewritten = dataclasses.replace(request, topics=tuple(kept), allow_auto_topic_creation=False)
        return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request,
                         Edit(ctx, Merge("topics", entries), edit), outcome="partly refused" if kept else "refused")


class DescribeTopicPartitionsFilter:
    api_keys = (75,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._table = TableFilter(ctx)

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        # Kafka fills topic_authorized_operations in every DescribeTopicPartitions answer.
        edit = _topics_edit(self.ctx, None, True, False)
        if scope.asks_every_topic(header.api_key, header.api_version, request):
            every = Check(ResourceType.TOPIC, None, Operation.DESCRIBE, True, EVERY_TOPIC)
            return Forward((every,), request, Edit(self.ctx, None, edit))
        return self._table.request(frame, header, request, permission, policy,
                                   then=lambda merge: Edit(self.ctx, merge, edit))


class DescribeClusterFilter:
    api_keys = (60,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        if not request.include_cluster_authorized_operations:
            return Forward((), request)
        checks: list = []
        self.ctx.check(checks, Operation.DESCRIBE, ResourceType.CLUSTER, None, policy)

        def edit(entity: Any, now: Policy) -> tuple[Any, int]:
            return dataclasses.replace(entity, cluster_authorized_operations=_cluster_ops(self.ctx, now)), 0

        return Forward(tuple(checks), request, Edit(self.ctx, None, edit))
