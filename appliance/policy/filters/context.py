"""What every filter of one connection shares: who asks, the policy now, and topic ids seen.

One `Context` per connection (the enforcer makes it). `policy()` is called at
each decision, so a reload applies to the next request and to the next
response alike. `TopicIds` maps topic ids to names from the Metadata and
DescribeTopicPartitions responses the proxy has passed on any connection: a
KIP-848 heartbeat names assigned topics by id only, and its coordinator
connection is rarely the one that asked for metadata.
"""

from __future__ import annotations

import typing
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from appliance.masking.decompress import MAX_BATCH_BYTES
from appliance.policy.model import Decision, Operation, Policy, Principal, ResourceType

if typing.TYPE_CHECKING:
    from appliance.approvals.gate import Gate

# Ids remembered; a cluster with more topics than this resolves the older ones again from the next Metadata.
TOPIC_IDS_KEPT = 100_000
_NULL_ID = uuid.UUID(int=0)


class TopicIds:
    """A bounded id -> name map, newest last (LRU)."""

    def __init__(self, capacity: int = TOPIC_IDS_KEPT) -> None:
        self._names: OrderedDict[uuid.UUID, str] = OrderedDict()
        self._capacity = capacity

    def learn(self, topic_id: uuid.UUID | None, name: str | None) -> None:
        if topic_id is None or name is None or topic_id == _NULL_ID:
            return
        self._names[topic_id] = str(name)
        self._names.move_to_end(topic_id)
        while len(self._names) > self._capacity:
            self._names.popitem(last=False)

    def name(self, topic_id: uuid.UUID | None) -> str | None:
        return None if topic_id is None else self._names.get(topic_id)

    def __len__(self) -> int:
        return len(self._names)


# Shared by every connection of the process unless an enforcer is given its own.
SHARED_TOPIC_IDS = TopicIds()


@dataclass(slots=True)
class Context:
    principal: Principal
    policy: typing.Callable[[], Policy]
    topic_ids: TopicIds = field(default_factory=lambda: SHARED_TOPIC_IDS)
    max_batch_bytes: int = MAX_BATCH_BYTES  # decompressed size of a batch read for masking, at most
    # Grants of approvals and the requests to hold (appliance.approvals.gate); None: an approve decision stays a deny.
    gate: Gate | None = None

    def decide(self, operation: Operation, resource: ResourceType, name: str | None,
               policy: Policy | None = None, *, hold: bool = True) -> Decision:
        """The policy's decision, through the approvals gate. `hold` False: what an approval would allow and
        no grant covers is refused, not held (a Metadata's incidental auto-creation is dropped instead)."""
        decision = (policy or self.policy()).decide(self.principal, operation, resource,
                                                    None if name is None else str(name))
        if decision.approval is not None and self.gate is not None:
            return self.gate.decide(decision, operation, resource, None if name is None else str(name), hold=hold)
        return decision

    def check(self, checks: list[Check], operation: Operation, resource: ResourceType, name: str | None,
              policy: Policy | None = None, *, hold: bool = True) -> Decision:
        """Decide and record the decision for the audit."""
        from appliance.policy.filters.results import Check

        decision = self.decide(operation, resource, name, policy, hold=hold)
        checks.append(Check(resource, None if name is None else str(name), operation, decision.allowed,
                            decision.rule))
        return decision
