"""Produce: decided per topic, records masked on the way in, and a fast path that does not decode.

A producer sends request after request of the same shape (transactional id,
acks, topic, partition); once one of a shape has been decoded and allowed
unmasked under the policy in force, the next of that shape is matched by its
bytes (`codec.match_produce`) and forwarded with the same decision. A topic
whose records a masking rule covers is read every time. One a recording rule
excerpts for this identity (appliance.masking.excerpts) keeps the fast path:
the records of a matched shape end its frame, and only their batch headers
are read to hold the first ones for the audit. A refused topic is
answered TOPIC_AUTHORIZATION_FAILED; records a rule rejects (or a batch that
decompresses past the cap) INVALID_RECORD; nothing at all for acks=0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import codec
from appliance.masking import excerpts as excerpting
from appliance.masking.batches import rewrite_records
from appliance.masking.rules import Direction, MaskingRejected
from appliance.policy.filters import refusals
from appliance.policy.filters.context import Context
from appliance.policy.filters.results import Answer, Forward, Result, Rewritten
from appliance.policy.filters.table import Edit, Merge, split, whole_refusal
from appliance.policy.model import Policy
from appliance.policy.permissions import Permission

# Produce shapes a connection remembers: one per partition it writes to, typically.
SHAPES = 8


class ProduceFilter:
    api_keys = (0,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # newest first: (shape, checks, the excerpt plan of its topic or None)
        self._shapes: list[tuple[codec.ProduceShape, tuple, excerpting.ExcerptPlan | None]] = []
        self._shapes_policy: Policy | None = None

    def by_shape(self, frame: bytes, header: codec.RequestHeader,
                 policy: Policy) -> tuple[tuple, codec.RequestFacts, tuple] | None:
        """(checks, facts, excerpts) of a request of a shape already allowed under `policy`, read without a
        decode; excerpts: what a recording rule asks the audit to excerpt of its records."""
        if policy is not self._shapes_policy:
            self._shapes, self._shapes_policy = [], policy
            return None
        for shape, checks, plan in self._shapes:
            facts = codec.match_produce(frame, header, shape)
            if facts is not None:
                if plan is None:
                    return checks, facts, ()
                (where,) = shape.facts.topics
                records = codec.shape_records(frame, header, facts)
                return checks, facts, tuple(excerpting.take_topic(where.topic, [(where.partitions[0], records)],
                                                                  plan))
        return None

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        known = self.by_shape(frame, header, policy)
        if known is not None:
            return Forward(known[0], None, None, known[1], excerpts=known[2])
        request = codec.decode_request(frame, header)
        result = self._decide(frame, header, request, permission, policy)
        if type(result) is Forward:
            self._remember(frame, header, request, policy, result)
        return result

    def _remember(self, frame: bytes, header: codec.RequestHeader, request: Any, policy: Policy,
                  result: Forward) -> None:
        if self.ctx.gate is not None and self.ctx.gate.used:
            return  # allowed under an approval's grant, which ends: decided afresh each time
        if policy.masking and any(policy.masking.for_topic(str(t.name), "produce") is not None
                                  for t in request.topic_data):
            return  # its records are read for masking, each time
        shape = codec.produce_shape(frame, header, request)
        if shape is not None:
            (where,) = shape.facts.topics
            plan = excerpting.plan_for(policy, self.ctx.principal.identity, where.topic, Direction.PRODUCE) \
                if policy.recording else None
            self._shapes = [(shape, result.checks, plan)] + self._shapes[:SHAPES - 1]

    def _decide(self, frame: bytes, header: codec.RequestHeader, request: Any, permission: Permission,
                policy: Policy) -> Result:
        checks: list = []
        silent = int(request.acks) == 0  # the workload expects no answer
        whole = whole_refusal(self.ctx, permission, request, policy, checks)
        if whole is not None:
            return Answer(None if silent else refusals.refuse(header, request, *whole), tuple(checks), request)
        _, kept, refused = split(self.ctx, permission.each, request, policy, checks)
        masked, changed = 0, False
        if policy.masking:
            kept, masked, changed = _mask(kept, policy, refused, self.ctx.max_batch_bytes)
        excerpts = _excerpts(kept, policy, self.ctx.principal.identity) if policy.recording else ()
        if not refused:
            if changed:
                rewritten = dataclasses.replace(request, topic_data=tuple(kept))
                return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request,
                                 masked=masked, excerpts=excerpts)
            return Forward(tuple(checks), request, excerpts=excerpts)
        entries = refusals.mirrored(header, "responses", refused)
        if not kept:
            answer = None if silent else refusals.answer_entries(header, "responses", entries)
            return Answer(answer, tuple(checks), request)
        rewritten = dataclasses.replace(request, topic_data=tuple(kept))
        then = None if silent else Edit(self.ctx, Merge("responses", entries))
        return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request, then,
                         outcome="partly refused", masked=masked, excerpts=excerpts)


def _excerpts(topics: list, policy: Policy, identity: str) -> tuple:
    """The forwarded records (after produce-side masking: what the broker stores) of every topic a
    recording rule excerpts for this identity."""
    out = []
    for topic in topics:
        plan = excerpting.plan_for(policy, identity, str(topic.name), Direction.PRODUCE)
        if plan is None:
            continue
        out += excerpting.take_topic(str(topic.name), ((int(p.index), p.records) for p in topic.partition_data), plan)
    return tuple(out)


def _mask(topics: list, policy: Policy, refused: list, cap: int) -> tuple[list, int, bool]:
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
                records, n = (p.records, 0) if not p.records else rewrite_records(
                    p.records, masker, partition=int(p.index), max_batch_bytes=cap)
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
