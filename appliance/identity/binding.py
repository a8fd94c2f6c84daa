"""Who a session is: the kernel's word (the enrolment) and what the workload proved over SASL, bound together.

An enrolment names how its cgroup's sessions authenticate (`AuthMode`):

- `cgroup`: the enrolment's identity and groups, as before tokens. A
  workload that speaks SASL anyway must prove an identity that agrees
  with the enrolment (below); it is then that identity, with the groups of
  both.
- `token`: the workload must present a valid token (or a static migration
  credential); the session is the identity and groups the token gives. When
  the enrolment lists `accepts` patterns, the token's identity or one of its
  groups must match one.
- `cgroup+token`: both. The token must agree with the enrolment: its identity
  is the enrolment's, or its identity, subject or one of its groups matches
  one of the enrolment's `accepts` patterns. The session is the enrolment's
  identity, with the groups of both. A valid token from any other cgroup is a
  mismatch, refused: a token that leaks is useless outside its workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from appliance.policy.model import Pattern, Principal


class AuthMode(StrEnum):
    CGROUP = "cgroup"
    TOKEN = "token"
    CGROUP_TOKEN = "cgroup+token"

    @property
    def requires_proof(self) -> bool:
        """Whether the workload must authenticate over SASL before any other request than ApiVersions."""
        return self is not AuthMode.CGROUP


@dataclass(frozen=True, slots=True)
class Proof:
    """What a workload proved over SASL: a validated OIDC token, or a static credential from the migration file."""

    method: str  # "token" | "static"
    mechanism: str  # the SASL mechanism it came by
    identity: str  # the token's identity claim, or the migration file's identity
    groups: tuple[str, ...] = ()
    subject: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    jti: str | None = None
    issued_at: float | None = None
    expires_at: float | None = None
    username: str | None = None  # a static credential's user name

    def describe(self) -> str:
        if self.method == "static":
            return f"static {self.mechanism} credential {self.username!r} (identity {self.identity!r})"
        return f"token for {self.identity!r} (subject {self.subject!r}, issuer {self.issuer!r})"


@dataclass(frozen=True, slots=True)
class Binding:
    """The enrolment's side: who the kernel says the cgroup is, and what it accepts."""

    identity: str
    groups: tuple[str, ...]
    mode: AuthMode = AuthMode.CGROUP
    accepts: tuple[Pattern, ...] = ()

    @property
    def principal(self) -> Principal:
        return Principal(self.identity, frozenset(self.groups))


@dataclass(frozen=True, slots=True)
class Bound:
    principal: Principal
    proof: Proof


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The proof is valid but does not belong to this cgroup; `reason` says how they disagree."""

    reason: str


def bind(binding: Binding, proof: Proof) -> Bound | Mismatch:
    """The session's principal from a valid proof presented from `binding`'s cgroup, or why they disagree."""
    names = {proof.identity, *((proof.subject,) if proof.subject else ())}
    accepted = any(p.matches(n) for p in binding.accepts for n in (*names, *proof.groups))
    if binding.mode is AuthMode.TOKEN:
        if binding.accepts and not accepted:
            return Mismatch(f"{proof.describe()} is not one this cgroup's enrolment accepts "
                            f"({', '.join(map(str, binding.accepts))})")
        return Bound(Principal(proof.identity, frozenset(proof.groups)), proof)
    if proof.identity != binding.identity and not accepted:
        accepts = f" nor matches what it accepts ({', '.join(map(str, binding.accepts))})" if binding.accepts else ""
        return Mismatch(f"{proof.describe()} was presented from a cgroup enrolled as {binding.identity!r}; "
                        f"it is not that identity{accepts}")
    return Bound(Principal(binding.identity, frozenset((*binding.groups, *proof.groups))), proof)
