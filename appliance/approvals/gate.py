"""What one connection's policy context asks about a decision an `effect: approve` rule made (sans-io).

`Grants` is the serving process's view of the grants in force, by identity,
reloaded by the desk when the store changes. A counted grant (`uses`) is
charged here, in the event loop, the moment a request goes on under it, so
no two requests can take its last use; the desk writes the charges to the
store, and until it has, a reload adds them back. A `Gate` belongs to one
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
import dataclasses
from typing import Callable

from appliance.approvals.model import Grant, Need
from appliance.policy.model import Decision, Operation, Principal, ResourceType


class Grants:
    def __init__(self) -> None:
        self._by_identity: dict[str, tuple[Grant, ...]] = {}
        self.unsaved: dict[str, int] = {}  # uses charged here and not yet in the store, by grant id

    def replace(self, grants: list[Grant]) -> None:
        by_identity: dict[str, list[Grant]] = {}
        for grant in grants:
            if grant.id in self.unsaved:
                grant = dataclasses.replace(grant, used=grant.used + self.unsaved[grant.id])
            by_identity.setdefault(grant.identity, []).append(grant)
        self._by_identity = {k: tuple(v) for k, v in by_identity.items()}

    def charge(self, grants: tuple[Grant, ...]) -> tuple[Grant, ...]:
        """One use of each counted grant among `grants` (a request went on under them): the grants as charged."""
        charged = []
        for grant in grants:
            if grant.uses is None:
                charged.append(grant)
                continue
            kept = self._by_identity.get(grant.identity, ())
            current = next((g for g in kept if g.id == grant.id), grant)
            after = dataclasses.replace(current, used=current.used + 1)
            self._by_identity[grant.identity] = tuple(after if g.id == grant.id else g for g in kept)
            self.unsaved[grant.id] = self.unsaved.get(grant.id, 0) + 1
            charged.append(after)
        return tuple(charged)

    def saved(self, counts: dict[str, int]) -> None:
        """`counts` of uses are in the store now."""
        for grant_id, n in counts.items():
            left = self.unsaved.get(grant_id, 0) - n
            if left > 0:
                self.unsaved[grant_id] = left
            else:
                self.unsaved.pop(grant_id, None)

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

    def charge(self) -> tuple[Grant, ...]:
        """The request decided goes on under the grants it used: each counted one is charged a use."""
        self.used = list(self.grants.charge(tuple(dict.fromkeys(self.used))))
        return tuple(self.used)

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
