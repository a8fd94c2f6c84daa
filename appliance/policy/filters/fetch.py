"""Fetch: decided and masked on the topic-partitions the RESPONSE carries, under the policy in force then.

With KIP-227 fetch sessions (Fetch v7+), a consumer's steady-state request
lists no partitions: the broker answers for every partition of the session
that has data. So the request is only a first look (listed partitions the
workload may not consume are cut and answered TOPIC_AUTHORIZATION_FAILED, as
Kafka would), and every response is decided again, topic by topic:

- a topic the workload may not consume now (say, a reload revoked it) is
  answered TOPIC_AUTHORIZATION_FAILED with no records, and its partitions are
  dropped from the broker's fetch session: the connection's next incremental
  Fetch lists them in `forgotten_topics_data`. Otherwise the broker, which
  keeps them in the session at the offset the consumer never advances, would
  answer with the same records at once, every time, and the consumer would
  spin. (The Java consumer raises TopicAuthorizationException from poll() on
  that error; librdkafka, which has no fetch sessions, reports the error and
  backs the partition off.)
- a topic a fetch masking rule covers, for a workload without `unmask`, has
  its records masked; records that cannot be masked (or a batch that
  decompresses past the cap) are answered CORRUPT_MESSAGE, never in the clear;
- a topic a recording rule excerpts for this identity has the first records it
  delivers held for the audit's excerpts (appliance.masking.excerpts), which
  the audit writer masks with every masking rule covering the topic.

Large responses are streamed through unread only when `reads_response` says
nothing in them needs a look (never for an identity some recording rule
excerpts: which topics a response carries is known only once it is read):
the workload may consume every topic in the clear (`Policy.grants_every`); or a sessionless / full request listed only
topics it may consume in the clear; or an incremental request in the fetch
session this connection opened, every topic ever listed in which it may
consume in the clear. The session's id is read from the broker's answer to
the request that opened it (that one answer is always read), so a request
naming any other session id is read whole. All of it is decided when the
response starts to arrive, under the policy in force then. Fetch v13+ names topics by id only and is not offered (see
`appliance.kafka.apis`); v12 responses carry names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kio.schema.errors import ErrorCode

from appliance.kafka import codec
from appliance.masking import excerpts as excerpting
from appliance.masking.batches import rewrite_records
from appliance.masking.rules import Direction, MaskingRejected
from appliance.policy.filters import refusals
from appliance.policy.filters.context import Context
from appliance.policy.filters.results import Answer, Forward, Result, Rewritten
from appliance.policy.filters.table import Merge, split
from appliance.policy.model import Operation, Policy, ResourceType
from appliance.policy.permissions import Permission

SESSIONS_FROM_VERSION = 7
# Topics whose "may read in the clear" answer is kept per policy; a connection reads a handful.
_CLEAR_CACHE = 1024


class FetchFilter:
    api_keys = (1,)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._forget: dict[str, set[int]] = {}  # to add to the next incremental request's forgotten topics
        # The fetch session this connection opened: its id (from the broker's answer to the epoch-0 request)
        # and every topic ever listed in it (a superset of what it holds: forgetting is not subtracted).
        self._session_id: int | None = None
        self._session_topics: set[str] = set()
        self._clear_policy: Policy | None = None
        self._clear_all = False
        self._clear: dict[str, bool] = {}

    # ---- what this workload reads in the clear, per policy -------------------------

    def _fresh(self, policy: Policy) -> None:
        if policy is not self._clear_policy:
            self._clear_policy, self._clear = policy, {}
            principal = self.ctx.principal
            masks = any(Direction.FETCH in r.on for r in policy.masking.rules)
            self._clear_all = policy.grants_every(principal, Operation.CONSUME, ResourceType.TOPIC) and (
                not masks or policy.grants_every(principal, Operation.UNMASK, ResourceType.TOPIC))

    def clear_for_everything(self, policy: Policy) -> bool:
        """Whether every topic may be consumed, unmasked, by this workload under `policy`."""
        self._fresh(policy)
        return self._clear_all

    def clear(self, policy: Policy, topic: str) -> bool:
        self._fresh(policy)
        known = self._clear.get(topic)
        if known is None:
            decision = self.ctx.decide(Operation.CONSUME, ResourceType.TOPIC, topic, policy)
            known = decision.allowed and masker_for(self.ctx, policy, topic) is None
            if decision.approval is not None:
                return known  # under a grant that ends: decided afresh each time
            if len(self._clear) >= _CLEAR_CACHE:
                self._clear.clear()
            self._clear[topic] = known
        return known

    # ---- the request ---------------------------------------------------------------

    def request(self, frame: bytes, header: codec.RequestHeader, permission: Permission, policy: Policy) -> Result:
        request = codec.decode_request(frame, header)
        checks: list = []
        _, kept, refused = split(self.ctx, permission.each, request, policy, checks)
        sessions = header.api_version >= SESSIONS_FROM_VERSION
        incremental = sessions and int(request.session_epoch) > 0
        in_session = sessions and (int(request.session_id) != 0 or int(request.session_epoch) == 0)
        forget = self._take_forgotten(request, kept) if incremental else {}
        for item, _, _ in refused:  # a listed partition it may not read leaves the broker's session too
            if incremental:
                forget.setdefault(str(item.topic), set()).update(int(p.partition) for p in item.partitions)
        merge = Merge("responses", refusals.mirrored(header, "responses", refused)) if refused else None
        listed = frozenset(str(t.topic) for t in kept)
        opens = session_topics = None
        if sessions and int(request.session_epoch) == 0:
            opens = listed  # a new session: its id arrives in the answer, which is read for it
        elif sessions and int(request.session_epoch) < 0:
            self._session_id, self._session_topics = None, set()
        elif incremental and self._session_id is not None and int(request.session_id) == self._session_id:
            self._session_topics |= listed
            session_topics = frozenset(self._session_topics)
        then = FetchStep(self, listed, not incremental, merge, session_topics, opens)
        if refused and not kept and not in_session:
            # Sessionless and nothing to fetch: the proxy answers (a session's epoch must reach the broker).
            answer = refusals.answer_entries(header, "responses", merge.entries)
            return Answer(answer, tuple(checks), request)
        if not refused and not forget:
            return Forward(tuple(checks), request, then)
        rewritten = dataclasses.replace(request, topics=tuple(kept))
        if forget:
            rewritten = dataclasses.replace(rewritten, forgotten_topics_data=_with_forgotten(
                request.forgotten_topics_data, forget, type(request), header))
        outcome = "allowed" if not refused else ("partly refused" if kept else "refused")
        return Rewritten(codec.replace_request_body(frame, header, rewritten), tuple(checks), request, then,
                         outcome=outcome)

    def _take_forgotten(self, request: Any, kept: list) -> dict[str, set[int]]:
        """Partitions answered as refused in this session, minus any the request lists again."""
        forget, self._forget = self._forget, {}
        for topic in kept:
            again = forget.get(str(topic.topic))
            if again:
                again.difference_update(int(p.partition) for p in topic.partitions)
        return {t: ps for t, ps in forget.items() if ps}

    def forget_later(self, topic: str, partitions: list[int]) -> None:
        self._forget.setdefault(topic, set()).update(partitions)

    def opened(self, session_id: int, topics: frozenset[str]) -> None:
        self._session_id, self._session_topics = session_id, set(topics)


def _with_forgotten(existing: tuple, forget: dict[str, set[int]], request_cls: type,
                    header: codec.RequestHeader) -> tuple:
    import typing

    from appliance.kafka.synth import element_type

    cls = element_type(typing.get_type_hints(request_cls)["forgotten_topics_data"])
    merged: dict[str, set[int]] = {}
    for t in existing or ():
        merged.setdefault(str(t.topic), set()).update(int(p) for p in t.partitions)
    for topic, partitions in forget.items():
        merged.setdefault(topic, set()).update(partitions)
    return tuple(cls(topic=t, partitions=tuple(sorted(ps))) for t, ps in merged.items())


def masker_for(ctx: Context, policy: Policy, topic: str):
    """The fetch masker for `topic` when this workload reads it masked, else None."""
    if not policy.masking:
        return None
    masker = policy.masking.for_topic(topic, "fetch")
    if masker is None or ctx.decide(Operation.UNMASK, ResourceType.TOPIC, topic, policy).allowed:
        return None
    return masker


@dataclass(frozen=True, slots=True)
class FetchStep:
    """The response side of one Fetch."""

    filter: FetchFilter
    listed: frozenset[str]  # topics the request listed and kept
    complete_listing: bool  # not incremental: the response carries only listed partitions
    merge: Merge | None
    session_topics: frozenset[str] | None = None  # incremental in this connection's known session: all it may carry
    opens: frozenset[str] | None = None  # an epoch-0 request: the session it opens, once its id is read
    # What `complete` held for the audit's excerpts (ExcerptSource), read by the session once it ran.
    excerpts: list = field(default_factory=list)

    @property
    def reads_response(self) -> bool:
        if self.merge is not None:
            return True
        policy = self.filter.ctx.policy()
        if policy.recording and policy.recording.excerpts_some_topic(self.filter.ctx.principal.identity):
            return True
        if self.filter.clear_for_everything(policy):
            return False
        if self.opens is not None:
            return True
        if self.complete_listing and all(self.filter.clear(policy, t) for t in self.listed):
            return False
        if self.session_topics is not None and all(self.filter.clear(policy, t) for t in self.session_topics):
            return False
        return True

    def complete(self, response: bytes, header: codec.RequestHeader) -> tuple[bytes, int]:
        if not self.reads_response:
            return response, 0
        policy = self.filter.ctx.policy()
        entity = codec.decode_response(response, header.api_key, header.api_version)
        in_session = int(getattr(entity, "session_id", 0) or 0) != 0
        if self.opens is not None and in_session and not int(entity.error_code):
            self.filter.opened(int(entity.session_id), self.opens)
        topics, total, changed = [], 0, False
        for topic in entity.responses:
            name = str(topic.topic)
            if self.filter.clear(policy, name):
                topics.append(topic)
                if policy.recording:
                    self._excerpt(policy, topic, None)
                continue
            decision = self.filter.ctx.decide(Operation.CONSUME, ResourceType.TOPIC, name, policy)
            if not decision.allowed:
                partitions = tuple(_revoked(p) for p in topic.partitions)
                if in_session:
                    self.filter.forget_later(name, [int(p.partition_index) for p in topic.partitions])
                topics.append(dataclasses.replace(topic, partitions=partitions))
                changed = True
                continue
            masker = masker_for(self.filter.ctx, policy, name)
            masked_topic, n = _mask_topic(topic, masker, self.filter.ctx.max_batch_bytes)
            if policy.recording:
                self._excerpt(policy, masked_topic, None if masker is None else Direction.FETCH)
            total += n
            changed = changed or masked_topic is not topic
            topics.append(masked_topic)
        if self.merge is not None:
            topics.extend(self.merge.entries)
            changed = True
        if not changed:
            return response, 0
        entity = dataclasses.replace(entity, responses=tuple(topics))
        return codec.replace_response_body(response, header.api_key, header.api_version, entity), total


    def _excerpt(self, policy: Policy, topic: Any, applied: Direction | None) -> None:
        """Hold the first records of `topic` as the workload receives them, when a recording rule asks."""
        name = str(topic.topic)
        plan = excerpting.plan_for(policy, self.filter.ctx.principal.identity, name, applied)
        if plan is not None:
            self.excerpts.extend(excerpting.take_topic(
                name, ((int(p.partition_index), p.records) for p in topic.partitions), plan))


# A partition answered TOPIC_AUTHORIZATION_FAILED: no records, offsets unknown (-1), no read replica.
_REVOKED = {"error_code": ErrorCode.topic_authorization_failed, "high_watermark": -1, "last_stable_offset": -1,
            "log_start_offset": -1, "aborted_transactions": None, "preferred_read_replica": -1, "records": None}


def _revoked(partition: Any) -> Any:
    fields = {k: v for k, v in _REVOKED.items() if hasattr(partition, k)}
    if hasattr(partition, "aborted_transactions") and fields.get("aborted_transactions", ()) is None:
        fields["aborted_transactions"] = None if _nullable(type(partition), "aborted_transactions") else ()
    return dataclasses.replace(partition, **fields)


def _nullable(cls: type, field: str) -> bool:
    import types
    import typing

    tp = typing.get_type_hints(cls)[field]
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _mask_topic(topic: Any, masker: Any, cap: int) -> tuple[Any, int]:
    if masker is None:
        return topic, 0
    total, partitions, changed = 0, [], False
    for p in topic.partitions:
        if not p.records:
            partitions.append(p)
            continue
        try:
            records, n = rewrite_records(p.records, masker, partition=int(p.partition_index), max_batch_bytes=cap)
        except MaskingRejected:
            # Records that cannot be masked are not handed over in the clear.
            partitions.append(dataclasses.replace(p, records=None, error_code=ErrorCode.corrupt_message))
            changed = True
            continue
        total += n
        if records is not p.records:
            partitions.append(dataclasses.replace(p, records=records))
            changed = True
        else:
            partitions.append(p)
    return (dataclasses.replace(topic, partitions=tuple(partitions)) if changed else topic), total
