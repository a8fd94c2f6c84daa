"""Applying the policy to one request (sans-io): allow it as is, cut refused entries, or answer it.

The request is decoded once (kio); when every check allows it, the original
bytes are forwarded untouched. A Produce with the same bytes up to its records
as one already allowed (same topic, partition, acks, transactional id) under the
same policy is not decoded again: it has the same decision. Refused entries are cut from a re-encoded
request and answered, in the broker's response, with the error Kafka's own
authorizer would give (TOPIC_/GROUP_/TRANSACTIONAL_ID_/CLUSTER_AUTHORIZATION_FAILED,
or POLICY_VIOLATION for immutable topics). A refusal of the whole request, or
of every entry, is answered by the proxy and never reaches the broker, except
Metadata: it goes on asking for no topics, because clients need the broker
list from a real answer.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import apis, codec
from appliance.kafka.synth import default_entity, element_type, mirror
from appliance.masking.batches import rewrite_records
from appliance.masking.rules import MaskingRejected
from appliance.policy.model import Decision, Operation, Policy, Principal, ResourceType
from appliance.policy.permissions import DENIED_ERROR, IMMUTABLE_ERROR, Each, Permission, Whole, permission_for


@dataclass(frozen=True, slots=True)
class Check:
    """One decision, as the audit records it."""

    resource: str
    name: str | None
    operation: str
    allowed: bool
    rule: str

    def as_row(self) -> list:
        return [self.resource, self.name, self.operation, "allow" if self.allowed else "deny", self.rule]


@dataclass(frozen=True, slots=True)
class Merge:
    """Refused entries to add to the broker's response before it reaches the client."""

    field: str
    entries: tuple


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # allowed | partly refused | refused
    checks: tuple[Check, ...]
    request: Any  # the request as the workload sent it, decoded; None when it was not decoded
    forward: bytes | None  # the frame to send upstream (the original when allowed); None: send nothing
    answer: bytes | None = None  # the proxy's own response, sent to the client now
    merge: Merge | None = None
    filter_topics: bool = False  # Metadata for all topics: keep only those the workload may describe
    masked: int = 0  # values masked in the request (Produce)
    mask_fetched: frozenset[str] = frozenset()  # Fetch: topics whose records this workload reads masked
    facts: codec.RequestFacts | None = None  # what the audit records, when known without a decode

    @property
    def reads_response(self) -> bool:
        """Whether `Enforcer.complete` must see the whole response before any of it reaches the client."""
        return self.merge is not None or self.filter_topics or bool(self.mask_fetched)


def _error(resource: ResourceType, decision: Decision) -> ErrorCode:
    return IMMUTABLE_ERROR if decision.rule == "immutable-topics" else DENIED_ERROR[resource]


def _message(decision: Decision) -> str:
    return f"refused by the appliance's policy ({decision.rule}): {decision.reason}"


def _kind(kinds, value, default: tuple[ResourceType, Operation]) -> tuple[ResourceType, Operation]:
    for k, resource, operation in kinds:
        if int(value) == k:
            return resource, operation
    return default


def _response_element(header: codec.RequestHeader, field: str) -> type:
    cls = apis.response_class(header.api_key, header.api_version)
    return element_type(typing.get_type_hints(cls)[field])


# Produce shapes an enforcer remembers: one per partition a connection writes to, typically.
_PRODUCE_SHAPES = 8


class Enforcer:
    """Decides requests for one principal against whatever policy `policy()` returns now (hot reload)."""

    def __init__(self, principal: Principal, policy: typing.Callable[[], Policy]) -> None:
        self.principal = principal
        self.policy = policy
        # Allowed, unmasked Produce requests already decoded under `_shapes_policy`,
        # newest first: a request of the same shape has the same decision.
        self._shapes: list[tuple[codec.ProduceShape, tuple[Check, ...]]] = []
        self._shapes_policy: Policy | None = None

    def check(self, frame: bytes, header: codec.RequestHeader) -> Verdict:
        permission = permission_for(header.api_key, header.api_version)
        if permission is None:
            return self._unmapped(header)
        if permission.open:
            return Verdict("allowed", (), None, frame)
        policy = self.policy()
        if header.api_key == apis.PRODUCE:
            if policy is not self._shapes_policy:
                self._shapes, self._shapes_policy = [], policy
            for shape, checks in self._shapes:
                facts = codec.match_produce(frame, header, shape)
                if facts is not None:
                    return Verdict("allowed", checks, None, frame, facts=facts)
        request = codec.decode_request(frame, header)
        verdict = self._decide(frame, header, permission, request, policy)
        if header.api_key == apis.PRODUCE:
            self._remember_shape(frame, header, request, policy, verdict)
        return verdict

    def _remember_shape(self, frame: bytes, header: codec.RequestHeader, request: Any, policy: Policy,
                        verdict: Verdict) -> None:
        if verdict.outcome != "allowed" or verdict.forward is not frame or verdict.masked:
            return
        if policy.masking and any(policy.masking.for_topic(str(t.name), "produce") is not None
                                  for t in request.topic_data):
            return  # its records are read for masking, each time
        shape = codec.produce_shape(frame, header, request)
        if shape is not None:
            self._shapes = [(shape, verdict.checks)] + self._shapes[:_PRODUCE_SHAPES - 1]

    def _decide(self, frame: bytes, header: codec.RequestHeader, permission: Permission, request: Any,
                policy: Policy) -> Verdict:
        checks: list[Check] = []
        whole_error = self._whole(permission, request, policy, checks)
        each = permission.each
        items = tuple(getattr(request, each.field) or ()) if each is not None else ()
        refused: list[tuple[Any, ErrorCode, str]] = []
        kept: list[Any] = []
        if each is not None:
            for item in items:
                resource, operation, name = self._entry(each, request, item)
                decision = policy.decide(self.principal, operation, resource, name)
                checks.append(Check(resource, name, operation, decision.allowed, decision.rule))
                if decision.allowed:
                    kept.append(item)
                else:
                    refused.append((item, _error(resource, decision), _message(decision)))
        no_response = header.api_key == apis.PRODUCE and int(request.acks) == 0
        masked = 0
        if header.api_key == apis.PRODUCE and whole_error is None and policy.masking:
            kept, masked, changed = self._mask_produce(kept, policy, refused)
            if changed and not refused:
                rewritten = dataclasses.replace(request, topic_data=tuple(kept))
                return Verdict("allowed", tuple(checks), request, codec.replace_request_body(frame, header, rewritten),
                               masked=masked)
        if whole_error is not None:
            error, message = whole_error
            if no_response:
                return Verdict("refused", tuple(checks), request, None)
            entries = {}
            if each is not None:
                element = _response_element(header, each.response_field)
                entries[each.response_field] = tuple(mirror(i, element, error, message) for i in items)
            return Verdict("refused", tuple(checks), request, None, answer=self._answer(header, error, entries))
        if refused:
            element = _response_element(header, each.response_field)
            answered = tuple(mirror(item, element, error, message) for item, error, message in refused)
            if not kept and header.api_key != apis.METADATA:
                if no_response:
                    return Verdict("refused", tuple(checks), request, None)
                answer = self._answer(header, ErrorCode.none, {each.response_field: answered})
                return Verdict("refused", tuple(checks), request, None, answer=answer)
            rewritten = dataclasses.replace(request, **{each.field: tuple(kept)})
            forward = codec.replace_request_body(frame, header, rewritten)
            return Verdict("partly refused" if kept else "refused", tuple(checks), request, forward,
                           merge=None if no_response else Merge(each.response_field, answered), masked=masked)
        if header.api_key == apis.FETCH and policy.masking:
            return Verdict("allowed", tuple(checks), request, frame,
                           mask_fetched=self._masked_for_me(request, policy))
        if header.api_key == apis.METADATA:
            return self._metadata(frame, header, request, policy, tuple(checks))
        return Verdict("allowed", tuple(checks), request, frame)

    # ---- masking -------------------------------------------------------------------

    def _mask_produce(self, topics: list, policy: Policy, refused: list) -> tuple[list, int, bool]:
        """Mask the records of every topic a produce rule covers; a topic whose records a rule rejects
        moves to `refused`, answered INVALID_RECORD with the rule's reason."""
        kept, total, changed = [], 0, False
        for topic in topics:
            masker = policy.masking.for_topic(str(topic.name), "produce")
            if masker is None:
                kept.append(topic)
                continue
            try:
                partitions = []
                for p in topic.partition_data:
                    records, n = (p.records, 0) if not p.records else rewrite_records(p.records, masker, partition=int(p.index))
                    total += n
                    partitions.append(p if records is p.records else dataclasses.replace(p, records=records))
            except MaskingRejected as e:
                refused.append((topic, ErrorCode.invalid_record, str(e)))
                changed = True
                continue
            if any(a is not b for a, b in zip(partitions, topic.partition_data)):
                topic = dataclasses.replace(topic, partition_data=tuple(partitions))
                changed = True
            kept.append(topic)
        return kept, total, changed

    def _masked_for_me(self, request: Any, policy: Policy) -> frozenset[str]:
        """Fetched topics a fetch rule covers and this workload may not `unmask`."""
        names = set()
        for topic in request.topics:
            name = str(topic.topic)
            if policy.masking.for_topic(name, "fetch") is not None and not policy.decide(
                    self.principal, Operation.UNMASK, ResourceType.TOPIC, name).allowed:
                names.add(name)
        return frozenset(names)

    def _mask_fetched(self, entity: Any, verdict: Verdict, policy: Policy) -> tuple[Any, int]:
        total = 0
        topics = []
        for topic in entity.responses:
            name = str(topic.topic)
            masker = policy.masking.for_topic(name, "fetch") if name in verdict.mask_fetched else None
            if masker is None:
                topics.append(topic)
                continue
            partitions = []
            for p in topic.partitions:
                if not p.records:
                    partitions.append(p)
                    continue
                try:
                    records, n = rewrite_records(p.records, masker, partition=int(p.partition_index))
                except MaskingRejected:
                    # Records that cannot be masked are not handed over in the clear.
                    partitions.append(dataclasses.replace(p, records=None, error_code=ErrorCode.corrupt_message))
                    continue
                total += n
                partitions.append(p if records is p.records else dataclasses.replace(p, records=records))
            topics.append(dataclasses.replace(topic, partitions=tuple(partitions)))
        return dataclasses.replace(entity, responses=tuple(topics)), total

    # ---- pieces -----------------------------------------------------------------

    def _whole(self, permission: Permission, request: Any, policy: Policy, checks: list[Check]):
        """Check the request-wide resources; the first refusal's (error, message), or None."""
        first = None
        for whole in permission.whole:
            name = getattr(request, whole.field) if whole.field else None
            if whole.optional and name is None:
                continue
            resource, operation = whole.resource, whole.operation
            if whole.kind_field:
                resource, operation = _kind(whole.kinds, getattr(request, whole.kind_field), (resource, operation))
            decision = policy.decide(self.principal, operation, resource, None if name is None else str(name))
            checks.append(Check(resource, None if name is None else str(name), operation, decision.allowed, decision.rule))
            if not decision.allowed and first is None:
                first = (_error(resource, decision), _message(decision))
        if permission.idempotent_produce and getattr(request, "transactional_id", None) is None:
            decision = policy.allows_any(self.principal, Operation.PRODUCE, ResourceType.TOPIC)
            checks.append(Check(ResourceType.CLUSTER, None, "idempotent-produce", decision.allowed, decision.rule))
            if not decision.allowed and first is None:
                first = (ErrorCode.cluster_authorization_failed, _message(decision))
        return first

    def _entry(self, each: Each, request: Any, item: Any) -> tuple[ResourceType, Operation, str | None]:
        name = item if each.name is None else getattr(item, each.name)
        resource, operation = each.resource, each.operation
        if each.kind_field:
            resource, operation = _kind(each.kinds, getattr(item, each.kind_field), (resource, operation))
        elif each.top_kind_field:
            resource, operation = _kind(each.kinds, getattr(request, each.top_kind_field), (resource, operation))
        if resource == ResourceType.CLUSTER:
            name = None
        return resource, operation, None if name is None else str(name)

    def _answer(self, header: codec.RequestHeader, error: ErrorCode, fields: dict) -> bytes:
        cls = apis.response_class(header.api_key, header.api_version)
        return codec.encode_response(header, default_entity(cls, error, **fields))

    def _metadata(self, frame, header, request, policy: Policy, checks: tuple[Check, ...]) -> Verdict:
        """Metadata may auto-create topics: that needs create, or the request goes on without it."""
        if request.topics is None:
            every = Check(ResourceType.TOPIC, None, Operation.DESCRIBE, True, "every-topic-filtered")
            return Verdict("allowed", checks + (every,), request, frame, filter_topics=True)
        if getattr(request, "allow_auto_topic_creation", False):
            creatable = [policy.decide(self.principal, Operation.CREATE, ResourceType.TOPIC, str(t.name))
                         for t in request.topics if t.name is not None]
            if not all(d.allowed for d in creatable):
                rewritten = dataclasses.replace(request, allow_auto_topic_creation=False)
                return Verdict("allowed", checks, request, codec.replace_request_body(frame, header, rewritten))
        return Verdict("allowed", checks, request, frame)

    def _unmapped(self, header: codec.RequestHeader) -> Verdict:
        check = Check(ResourceType.CLUSTER, None, apis.api_name(header.api_key), False, "unmapped-api")
        cls = apis.response_class(header.api_key, header.api_version)
        answer = codec.encode_response(header, default_entity(cls, ErrorCode.cluster_authorization_failed))
        return Verdict("refused", (check,), None, None, answer=answer)

    # ---- the broker's side ----------------------------------------------------------

    def complete(self, response: bytes, header: codec.RequestHeader, verdict: Verdict) -> tuple[bytes, int]:
        """The response the client gets, and how many values were masked in it: the broker's, with refused
        entries added, hidden topics removed, or fetched records masked."""
        if verdict.merge is None and not verdict.filter_topics and not verdict.mask_fetched:
            return response, 0
        entity = codec.decode_response(response, header.api_key, header.api_version)
        if verdict.merge is not None:
            field = verdict.merge.field
            entity = dataclasses.replace(entity, **{field: tuple(getattr(entity, field)) + verdict.merge.entries})
        if verdict.filter_topics:
            policy = self.policy()
            visible = tuple(t for t in entity.topics if t.name is not None and policy.decide(
                self.principal, Operation.DESCRIBE, ResourceType.TOPIC, str(t.name)).allowed)
            entity = dataclasses.replace(entity, topics=visible)
        masked = 0
        if verdict.mask_fetched:
            entity, masked = self._mask_fetched(entity, verdict, self.policy())
            if not masked:
                return response, 0
        return codec.replace_response_body(response, header.api_key, header.api_version, entity), masked
