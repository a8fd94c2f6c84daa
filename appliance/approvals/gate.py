"""What one connection's policy context asks about a decision an `effect: approve` rule made (sans-io).

`Grants` is the serving process's view of the grants in force, by identity,
reloaded by the desk when the store changes. A `Gate` belongs to one
connection's policy context: for each approve decision it answers allow when
a grant covers it (and remembers the grant, so the audit and the desk see it
used), and otherwise deny with the hold's reason and a `Need` the enforcer
turns into a held request. While the enforcer re-decides a held request,
`refusal` is the reason its approve decisions are refused with (denied,
still pending, grant gone): they are then answered, not held again.

Every decision it returns keeps `approval` set: it depends on a grant that
ends, so nothing caches it (the produce shapes, the fetch filter's clear
topics).
"""

from __future__ import annotations

import time
from typing import Callable

from appliance.approvals.model import Grant, Need
from appliance.policy.model import Decision, Operation, Principal, ResourceType


class Grants:
    def __init__(self) -> None:
        self._by_identity: dict[str, tuple[Grant, ...]] = {}

    def replace(self, grants: list[Grant]) -> None:
        by_identity: dict[str, list[Grant]] = {}
        for grant in grants:
            by_identity.setdefault(grant.identity, []).append(grant)
        self._by_identity = {k: tuple(v) for k, v in by_identity.items()}

    def covering(self, identity: str, need: Need, now: float) -> Grant | None:
        for grant in self._by_identity.get(identity, ()):
            if grant.covers(identity, need, now):
                return grant
        return None

    def __len__(self) -> int:
        return sum(map(len, self._by_identity.values()))


class Gate:
    def __init__(self, principal: Principal, grants: Grants, clock: Callable[[], float] = time.time) -> None:
        self.principal = principal
        self.grants = grants
        self.clock = clock
        self.needed: list[Need] = []
        self.used: list[Grant] = []
        self.refusal: str | None = None

    def begin(self, refusal: str | None = None) -> None:
        """A new request is being decided; `refusal`: it was held, and what is still not granted is refused so."""
        self.needed, self.used, self.refusal = [], [], refusal

    def decide(self, decision: Decision, operation: Operation, resource: ResourceType, name: str | None, *,
               hold: bool = True) -> Decision:
        need = Need(decision.rule, str(operation), str(resource), name)
        grant = self.grants.covering(self.principal.identity, need, self.clock())
        if grant is not None:
            self.used.append(grant)
            return Decision(True, decision.rule, f"{decision.reason}: approved by {', '.join(grant.approvers)} "
                                                 f"(request {grant.request_id}, grant {grant.id})",
                            approval=decision.approval)
        if self.refusal is not None:
            return Decision(False, decision.rule, self.refusal, approval=decision.approval)
        if not hold:
            return Decision(False, decision.rule, f"{decision.reason}; not held for it here", approval=decision.approval)
        self.needed.append(need)
        return Decision(False, decision.rule, f"{decision.reason}; held for approval", approval=decision.approval)
