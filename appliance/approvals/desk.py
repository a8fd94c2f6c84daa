"""The serving process's side of approvals: files held requests, answers them, keeps the grants in force.

`hold` is called from a session's `HoldForApproval`: for each rule among the
needs it joins the pending request of that identity for exactly those needs
(a client's retry) or files a new one, audited `approval-requested`, and posted to the rule's webhook; an identity has at
most MAX_PENDING_PER_IDENTITY pending at once. `step`
(every maintenance step, 250 ms) reloads the grants when the store changed
(a vote from the CLI or the console), expires the requests nobody decided,
and answers each held session: approved (decided again under the grants),
denied (refused with who denied and why), or its hold ran out (refused with
the request's id and how to approve it, so the client's retry passes).

The desk never dispatches into a session from inside that session's own
commands: `hold` only records; answers go out from `step`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from appliance.approvals.gate import Gate, Grants
from appliance.approvals.model import ApprovalRequest, Need, State, file_request
from appliance.approvals.store import ApprovalStore
from appliance.policy.model import Policy, Principal
from appliance.proxy import events as ev

log = logging.getLogger("appliance")
# Pending requests one identity may have at once: a workload naming a new resource each time cannot fill the
# store, the audit and the approvers' queue; beyond it, what needs approval is refused at once and says why.
MAX_PENDING_PER_IDENTITY = 20
# Resources one held request may name for approval: a CreateTopics of thousands of topics is not one decision a
# person can take, and would make every message and every look at the request that large.
MAX_NEEDS_PER_REQUEST = 100


class HeldConnection(Protocol):
    gone: bool

    def dispatch(self, event: ev.Event) -> None: ...


@dataclass(slots=True)
class _Hold:
    request_ids: tuple[str, ...]
    until: float
    refusal: str | None = None  # known at once (a rule gone from the policy): answered at the next step
    fresh: bool = True  # not looked at yet: a request joined may have been decided already


class Desk:
    def __init__(self, store: ApprovalStore, policy: Callable[[], Policy], event: Callable[..., None], *,
                 clock: Callable[[], float] = time.time,
                 notify: Callable[[ApprovalRequest], None] = lambda request: None) -> None:
        self.store = store
        self.policy = policy
        self.event = event  # (kind, message, identity=..., session_id=..., detail=...) into the audit
        self.clock = clock
        self.notify = notify  # the rule's webhook (approvals/webhook.py)
        self.grants = Grants()
        self._holds: dict[HeldConnection, _Hold] = {}
        self._used: set[tuple[str, str]] = set()  # (grant id, session id) already audited as used
        self.reload()

    def gate_for(self, principal: Principal) -> Gate:
        return Gate(principal, self.grants, self.clock)

    def reload(self) -> None:
        self.grants.replace(self.store.grants(active_at=self.clock(), limit=-1))  # every grant in force, not 1000

    @property
    def holding(self) -> int:
        return len(self._holds)

    # ---- from sessions ------------------------------------------------------------

    def hold(self, conn: HeldConnection, principal: Principal, needs: tuple[Need, ...], api: str, session_id: str,
             cgroup_path: str | None) -> None:
        try:
            self._hold(conn, principal, needs, api, session_id, cgroup_path)
        except sqlite3.OperationalError as e:
            log.warning("approvals store %s: %s; a held request is refused", self.store.path, e)
            self._holds[conn] = _Hold((), self.clock(), f"the appliance's approvals store is busy ({e}); try again")

    def _hold(self, conn: HeldConnection, principal: Principal, needs: tuple[Need, ...], api: str, session_id: str,
              cgroup_path: str | None) -> None:
        now = self.clock()
        if len(needs) > MAX_NEEDS_PER_REQUEST:
            self._holds[conn] = _Hold((), now, f"the request names {len(needs)} resources that need approval; at "
                                               f"most {MAX_NEEDS_PER_REQUEST} are asked for at once: send fewer")
            return
        policy = self.policy()
        by_rule: dict[str, list[Need]] = {}
        for need in needs:
            by_rule.setdefault(need.rule, []).append(need)
        ids, until = [], None
        for rule_name, rule_needs in sorted(by_rule.items()):
            rule = policy.rule_named(rule_name)
            if rule is None or rule.approval is None:  # the policy changed between the decision and now
                self._holds[conn] = _Hold((), now, f"rule {rule_name} no longer asks for approval; try again")
                return
            asked = tuple(sorted(rule_needs))
            denied = self.store.denied_since(principal.identity, rule_name, asked, now - rule.approval.denied_for_s) \
                if rule.approval.denied_for_s > 0 else None
            if denied is not None:
                self._holds[conn] = _Hold((), now, _denial(denied, now))
                return
            request = self.store.pending_for(principal.identity, rule_name, asked, now)
            if request is None and self.store.pending_count(principal.identity, now) >= MAX_PENDING_PER_IDENTITY:
                self._holds[conn] = _Hold((), now, f"{principal.identity} already has {MAX_PENDING_PER_IDENTITY} "
                                                   "approval requests pending; decide or let those expire first")
                return
            if request is None:
                request = file_request(rule=rule_name, approval=rule.approval, identity=principal.identity,
                                       groups=tuple(principal.groups), needs=tuple(rule_needs), api=api,
                                       session_id=session_id, cgroup_path=cgroup_path, now=now)
                self.store.file(request)
                self._audit_requested(request)
                self.notify(request)
            ids.append(request.id)
            hold_until = now + rule.approval.hold_s
            until = hold_until if until is None else min(until, hold_until)
        self._holds[conn] = _Hold(tuple(ids), until if until is not None else now)

    def used(self, grants, session_id: str, identity: str) -> None:
        """Audit a grant's first use on a session (`grant-used`), not every request under it; a counted grant's
        every use, since each is one of a few. Its charges (made by the gate) are written to the store now."""
        for grant in grants:
            key = (grant.id, session_id)
            if grant.uses is None and key in self._used:
                continue
            if len(self._used) > 100_000:
                self._used.clear()
            self._used.add(key)
            count = "" if grant.uses is None else f" (use {grant.used} of {grant.uses})"
            self.event("grant-used", f"grant {grant.id} (request {grant.request_id}, approved by "
                                     f"{', '.join(grant.approvers)}) let {identity} go on{count}", identity=identity,
                       session_id=session_id, detail={"grant": grant.id, "request": grant.request_id,
                                                      "used": grant.used, "uses": grant.uses})
        self._save_uses()

    def _save_uses(self) -> None:
        """Write the uses charged here to the store; a store busy now is tried again at the next step (until
        then, the grants here keep the charges, so no use is given twice)."""
        counts = dict(self.grants.unsaved)
        if not counts:
            return
        try:
            self.store.use(counts)
        except sqlite3.OperationalError as e:
            log.warning("approvals store %s: %s; grant uses are written at the next step", self.store.path, e)
            return
        self.grants.saved(counts)

    def close(self, wait_s: float = 5.0) -> None:
        """Stopping: write the uses still unsaved (the store was locked at the last steps), waiting for the
        store up to `wait_s`, since a use lost here would be given again after a restart. Those that cannot
        be written are named in the audit, with what to do about them."""
        deadline = time.monotonic() + wait_s
        while self.grants.unsaved:
            self._save_uses()
            if not self.grants.unsaved or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if self.grants.unsaved:
            lost = ", ".join(f"{grant_id} ({n})" for grant_id, n in sorted(self.grants.unsaved.items()))
            log.error("approvals store %s stayed locked: uses of counted grants not written: %s", self.store.path,
                      lost)
            self.event("error", f"stopping with approvals store {self.store.path} locked: uses of counted grants "
                                f"not written ({lost}); after a restart they could be given again: revoke them "
                                "with `appliance approvals revoke <grant> --reason ...`",
                       detail={"unsaved_uses": dict(self.grants.unsaved)})

    # ---- every maintenance step -----------------------------------------------------

    def step(self) -> None:
        try:
            self._step()
        except sqlite3.OperationalError as e:  # locked by another process: the next step tries again
            log.warning("approvals store %s: %s; held requests are looked at again at the next step",
                        self.store.path, e)

    def _step(self) -> None:
        now = self.clock()
        self._save_uses()
        # Votes come from other processes (the CLI, the console): the held requests are looked at again only
        # when the store changed, when this step expired some, or when a hold runs out.
        changed = self.store.changed()
        if changed:
            self.reload()
        for request in self.store.expire_due(now):
            changed = True
            self.event("approval-expired", f"approval request {request.id} ({request.describe()}) expired "
                                           "undecided", identity=request.identity, session_id=request.session_id,
                       detail={"request": request.id, "rule": request.rule})
        for conn, hold in list(self._holds.items()):
            if conn.gone:
                del self._holds[conn]
                continue
            if not (changed or hold.fresh or hold.refusal is not None or now >= hold.until):
                continue
            hold.fresh = False
            answer = self._answer(hold, now)
            if answer is _WAIT:
                continue
            del self._holds[conn]
            if answer is None:
                self.reload()  # the grant the session is decided again under, even if written this instant
            try:
                conn.dispatch(ev.ApprovalDecided(answer))
            except Exception:  # one session's fault must not stop the answers to the others
                log.exception("a held session failed on its approval's answer")
                close = getattr(conn, "close", None)
                if close is not None:
                    close()

    def _answer(self, hold: _Hold, now: float):
        if hold.refusal is not None:
            return hold.refusal
        requests = [self.store.get(i) for i in hold.request_ids]
        for request in requests:
            if request.state == State.DENIED:
                return _denial(request)
            if request.state == State.EXPIRED:
                return f"approval request {request.id} expired undecided; the next attempt files a new one"
        if all(r.state == State.APPROVED for r in requests):
            return None
        if now < hold.until:
            return _WAIT
        waiting = [r for r in requests if r.state == State.PENDING]
        return "; ".join(_pending_message(r) for r in waiting)

    def _audit_requested(self, request: ApprovalRequest) -> None:
        approval = request.approval
        self.event("approval-requested",
                   f"approval request {request.id}: {request.describe()} held for up to {approval.hold_s:g} s; "
                   f"{approval.approvals} approval(s) from {', '.join(approval.approver_groups)} needed",
                   identity=request.identity, session_id=request.session_id,
                   detail={"request": request.id, "rule": request.rule, "api": request.api,
                           "needs": [[n.operation, n.resource, n.name] for n in request.needs],
                           "expires_at": request.expires_at})


_WAIT = object()


def _denial(request: ApprovalRequest, now: float | None = None) -> str:
    """How a denied request is answered; `now` given, to an ask again within the rule's denied_for_s."""
    denial = next(v for v in reversed(request.votes) if not v.approve)
    text = f"denied by {denial.approver}: {denial.reason} (approval request {request.id})"
    if now is None:
        return text
    left = max(1, round(request.decided_at + request.approval.denied_for_s - now))
    return (f"{text} {max(0, round(now - request.decided_at))} s ago; asked again, it is refused without a new "
            f"request for {left} s more")


def _pending_message(request: ApprovalRequest) -> str:
    return (f"held for approval as request {request.id} ({request.approval.hold_s:g} s); approve it with "
            f"`appliance approvals approve {request.id} --reason ...` or in the console, then retry; it can be "
            f"approved until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(request.expires_at))}")
