"""The policy model: which workload identities may do what to which Kafka resources.

Pure data and pure decisions: no files, clocks or threads (the parser builds a
`Policy` from YAML; a reload builds a new one, nothing is mutated). `decide` is
on the proxy's hot path, so the work is done up front: patterns compile when
they are parsed, rules are indexed by (operation, resource type) when the
policy is built, and answers are cached per policy in a bounded LRU keyed by
(principal, operation, resource type, name).

The order of evaluation, also described in docs/policy.md:

1. delete, alter or delete-records on a topic that matches `immutable_topics`:
   deny (`immutable-topics`), whatever the rules say;
2. a matching rule with `effect: deny`: deny, like a Kafka DENY ACL, wherever
   it sits in the file;
3. the first matching rule with `effect: approve`, in file order: a person must
   approve (docs/approvals.md); the decision names the rule and carries its
   `Approval`, and the approvals gate of the connection (`approvals.gate`)
   turns it into an allow under a grant, or holds the request;
4. the first matching allow rule, in file order: allow;
5. otherwise deny (`default-deny`).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.masking.rules import MaskingPolicy
    from appliance.policy.recording import RecordingPolicy

DEFAULT_DENY = "default-deny"
IMMUTABLE_TOPICS = "immutable-topics"
RESERVED_RULE_NAMES = frozenset({DEFAULT_DENY, IMMUTABLE_TOPICS})

# Answers cached per policy. An entry (key, Decision, reason text, LRU links) is
# a few hundred bytes, so the cache stays within a few megabytes.
DECISION_CACHE_SIZE = 16_384


class Operation(StrEnum):
    """What a client asks to do; docs/policy.md maps each Kafka API to one of these."""

    PRODUCE = "produce"
    CONSUME = "consume"  # fetch, list offsets, offset fetch
    DESCRIBE = "describe"  # metadata, describe configs
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"  # configs, partitions
    DELETE_RECORDS = "delete-records"
    GROUP = "group"  # group membership and offset commit
    TRANSACTIONS = "transactions"
    ADMIN = "admin"  # ACLs, quotas, SCRAM users, reassignments, leader elections...
    UNMASK = "unmask"  # reserved for masking: see masked fields in the clear


class ResourceType(StrEnum):
    TOPIC = "topic"
    GROUP = "group"  # a consumer group
    TRANSACTIONAL_ID = "transactional-id"
    CLUSTER = "cluster"


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"  # allowed once a person approves (docs/approvals.md)


class GrantScope(StrEnum):
    """What an approval grants: the resources the request named, or everything the rule's patterns match."""

    REQUESTED = "requested"
    RULE = "rule"


@dataclass(frozen=True, slots=True)
class Approval:
    """What an `effect: approve` rule asks for (docs/approvals.md).

    The requester never approves its own request; an approver is a person in
    one of `approver_groups` (the console) or the local root operator (the
    CLI), and `approvals` distinct approvers are needed. The request is held
    `hold_s` seconds, below the clients' 30 s request timeout; undecided then,
    it is answered with how to approve it and stays pending `pending_s`
    seconds. An approval makes a grant for `grant_ttl_s` seconds and, with
    `grant_uses`, for that many requests at most (1: a one-time grant). A denial
    answers the same ask again for `denied_for_s` seconds, with no new request:
    a workload retrying what a person refused cannot fill the approvers' queue.
    """

    approver_groups: tuple[str, ...]
    approvals: int = 1
    hold_s: float = 20.0
    pending_s: float = 3600.0
    denied_for_s: float = 600.0
    grant_ttl_s: float = 3600.0
    grant_scope: GrantScope = GrantScope.REQUESTED
    grant_uses: int | None = None  # requests the grant lets through; None: any number until it ends
    webhook: str | None = None


# What immutable topics refuse to everyone.
IMMUTABLE_OPERATIONS = frozenset({Operation.DELETE, Operation.ALTER, Operation.DELETE_RECORDS})

_RESOURCE_WORDS = {
    ResourceType.TOPIC: "topic",
    ResourceType.GROUP: "consumer group",
    ResourceType.TRANSACTIONAL_ID: "transactional id",
    ResourceType.CLUSTER: "cluster",
}


def describe_resource(resource_type: ResourceType, name: str | None) -> str:
    """`topic 'orders'`, `consumer group 'billing'`, `the cluster`: for messages."""
    if resource_type == ResourceType.CLUSTER:
        return "the cluster"
    return f"{_RESOURCE_WORDS.get(resource_type, resource_type)} {name!r}"


class PatternError(ValueError):
    """A resource pattern that cannot be used; the message says what to write instead."""


class PatternKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    GLOB = "glob"
    ANY = "any"


GLOB_CHARACTERS = "*?["


@dataclass(frozen=True, slots=True)
class Pattern:
    """A set of resource names, written `orders` (exact), `prefix:orders.`, `glob:orders-*` or `*` (every name).

    Globs have `fnmatch.fnmatchcase` semantics (case-sensitive, `/` is not
    special) and are compiled once, here.
    """

    kind: PatternKind
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == PatternKind.GLOB:
            object.__setattr__(self, "_regex", re.compile(fnmatch.translate(self.value)))

    @classmethod
    def exact(cls, name: str) -> Pattern:
        return cls(PatternKind.EXACT, name)

    @classmethod
    def prefix(cls, prefix: str) -> Pattern:
        return cls(PatternKind.PREFIX, prefix)

    @classmethod
    def glob(cls, pattern: str) -> Pattern:
        return cls(PatternKind.GLOB, pattern)

    @classmethod
    def any(cls) -> Pattern:
        return cls(PatternKind.ANY, "*")

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Parse the written form; a bare name with glob characters is an error, not a guess."""
        if not isinstance(text, str) or not text:
            raise PatternError("is empty: write a name, 'prefix:NAME', 'glob:PATTERN', or '*' for every name")
        if text == "*":
            return cls.any()
        head, sep, rest = text.partition(":")
        if sep and head in ("prefix", "glob"):
            if not rest:
                raise PatternError(f"{text!r} has nothing after '{head}:': write e.g. '{head}:orders.', "
                                   f"or '*' for every name")
            if head == "glob":
                return cls.glob(rest)
            special = next((c for c in rest if c in GLOB_CHARACTERS), None)
            if special is not None:
                stem = rest.split(special)[0]
                hint = f"'prefix:{stem}' or 'glob:{rest}'" if stem else f"'glob:{rest}'"
                raise PatternError(f"{text!r}: a prefix is matched literally, so {special!r} would have to be in the "
                                   f"name; write {hint}")
            return cls.prefix(rest)
        if sep and head.lower() in ("prefix", "glob", "exact", "literal", "regex", "re", "prefixed"):
            raise PatternError(f"{text!r}: {head + ':'!r} is not a pattern kind; write a bare name (exact), "
                               f"'prefix:NAME', 'glob:PATTERN' or '*'")
        special = next((c for c in text if c in GLOB_CHARACTERS), None)
        if special is not None:
            stem = text.rstrip("*")
            hint = (f"'glob:{text}' for a glob, or 'prefix:{stem}' for a prefix"
                    if stem and not any(c in GLOB_CHARACTERS for c in stem) else f"'glob:{text}' for a glob")
            raise PatternError(f"{text!r} contains {special!r} but a bare name is matched exactly; write {hint}")
        return cls.exact(text)

    @property
    def matches_everything(self) -> bool:
        return self.kind == PatternKind.ANY or (self.kind == PatternKind.GLOB and self.value.strip("*") == "")

    def matches(self, name: str) -> bool:
        kind = self.kind
        if kind is PatternKind.EXACT:
            return name == self.value
        if kind is PatternKind.PREFIX:
            return name.startswith(self.value)
        if kind is PatternKind.GLOB:
            return self._regex.match(name) is not None  # type: ignore[union-attr]
        return True

    def __str__(self) -> str:
        if self.kind == PatternKind.EXACT:
            return self.value
        if self.kind == PatternKind.ANY:
            return "*"
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the workload identity and its groups, from enrolment."""

    identity: str
    groups: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"{self.identity} ({'groups: ' + ', '.join(sorted(self.groups)) if self.groups else 'no groups'})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: allowed or not, the deciding rule's name (or `default-deny`/`immutable-topics`), and why."""

    allowed: bool
    rule: str
    reason: str
    approval: "Rule | None" = None  # the `effect: approve` rule that decided: a person must approve


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy: its principals, operations and resources.

    A rule matches a request when it names the principal (its identity, `*`,
    or one of its groups), lists the operation, and has a pattern matching
    the resource (or `cluster` is true, for the cluster).
    """

    name: str
    operations: frozenset[Operation]
    effect: Effect = Effect.ALLOW
    # Who: identity and group patterns, written as topics are (`orders`, `prefix:ci-`, `glob:team-*`, `*`).
    identities: tuple[Pattern, ...] = ()
    groups: tuple[Pattern, ...] = ()
    topics: tuple[Pattern, ...] = ()
    consumer_groups: tuple[Pattern, ...] = ()
    transactional_ids: tuple[Pattern, ...] = ()
    cluster: bool = False
    line: int = field(default=0, compare=False)  # where the rule starts in its file; 0 when built in code
    approval: Approval | None = None  # with effect approve: who approves, the hold, the grant

    def __post_init__(self) -> None:
        if (self.effect == Effect.APPROVE) != (self.approval is not None):
            raise ValueError(f"rule {self.name!r}: effect approve and an approval go together")
        # Names given in code (a set of strings) are patterns too; the parser gives patterns already.
        for key in ("identities", "groups"):
            value = getattr(self, key)
            object.__setattr__(self, key, tuple(v if isinstance(v, Pattern) else Pattern.parse(v)
                                                for v in sorted(value, key=str)))

    def covers(self, principal: Principal) -> bool:
        return self.why_covers(principal) is not None

    def why_covers(self, principal: Principal) -> str | None:
        """Why the rule names this principal, or None when it does not."""
        for pattern in self.identities:
            if pattern.matches(principal.identity):
                if pattern.kind == PatternKind.EXACT:
                    return f"identity {principal.identity!r} is listed"
                if pattern.kind == PatternKind.ANY:
                    return "every identity ('*') is listed"
                return f"identity {principal.identity!r} matches {str(pattern)!r}"
        for group in sorted(principal.groups):
            for pattern in self.groups:
                if pattern.matches(group):
                    if pattern.kind == PatternKind.EXACT:
                        return f"group {group!r} is listed"
                    return f"group {group!r} matches {str(pattern)!r}"
        return None

    def patterns(self, resource_type: ResourceType) -> tuple[Pattern, ...]:
        if resource_type == ResourceType.TOPIC:
            return self.topics
        if resource_type == ResourceType.GROUP:
            return self.consumer_groups
        if resource_type == ResourceType.TRANSACTIONAL_ID:
            return self.transactional_ids
        return ()

    def has_resources(self, resource_type: ResourceType) -> bool:
        return self.cluster if resource_type == ResourceType.CLUSTER else bool(self.patterns(resource_type))

    def match(self, resource_type: ResourceType, name: str | None) -> Pattern | bool | None:
        """The first pattern matching `name` (True for the cluster when `cluster: true`), or None."""
        if resource_type == ResourceType.CLUSTER:
            return True if self.cluster else None
        for pattern in self.patterns(resource_type):
            if pattern.matches(name):  # type: ignore[arg-type]
                return pattern
        return None

    def covers_every(self, resource_type: ResourceType) -> bool:
        """Whether its patterns for this type match every name (`*`), or `cluster: true` for the cluster."""
        if resource_type == ResourceType.CLUSTER:
            return self.cluster
        return any(p.matches_everything for p in self.patterns(resource_type))



def _why_matches(resource_type: ResourceType, name: str | None, matched: Pattern | bool) -> str:
    if resource_type == ResourceType.CLUSTER:
        return "it has cluster: true"
    return f"{describe_resource(resource_type, name)} matches {str(matched)!r}"


_NOTHING: tuple[tuple[Rule, ...], tuple[Rule, ...]] = ((), ())


def _no_masking() -> MaskingPolicy:
    # Imported when called: appliance.masking.rules imports this module.
    from appliance.masking.rules import MaskingPolicy
    return MaskingPolicy()


def _no_recording() -> RecordingPolicy:
    from appliance.policy.recording import RecordingPolicy  # it imports this module's Pattern
    return RecordingPolicy()


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """An immutable policy: ordered rules and immutable-topic patterns, with cached decisions.

    Compared by identity (a reloaded policy is a different object with a fresh
    cache). Rule names must be unique; the parser says so with file and line.
    `masking` holds the `masking:` section (docs/masking.md); empty by default. `recording` holds the
    `recording:` section (docs/recording.md, Depth); empty by default: every session at depth operations.
    """

    rules: tuple[Rule, ...]
    immutable_topics: tuple[Pattern, ...] = ()
    source: str = "<policy>"
    masking: MaskingPolicy = field(default_factory=_no_masking)
    # Identities that may not authenticate with a static (migration) credential, only with a token.
    static_credentials_denied: tuple[Pattern, ...] = ()
    recording: RecordingPolicy = field(default_factory=_no_recording)
    _index: dict = field(init=False, repr=False)
    _approving: dict = field(init=False, repr=False)
    _decide_cached: object = field(init=False, repr=False)
    _allows_any_cached: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.source}: rule names must be unique; repeated: {', '.join(duplicates)}")
        index: dict[tuple[Operation, ResourceType], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
        approving: dict[tuple[Operation, ResourceType], tuple[Rule, ...]] = {}
        for operation in Operation:
            for resource_type in ResourceType:
                relevant = [r for r in self.rules if operation in r.operations and r.has_resources(resource_type)]
                if relevant:
                    index[(operation, resource_type)] = (
                        tuple(r for r in relevant if r.effect == Effect.DENY),
                        tuple(r for r in relevant if r.effect == Effect.ALLOW),
                    )
                    approvals = tuple(r for r in relevant if r.effect == Effect.APPROVE)
                    if approvals:
                        approving[(operation, resource_type)] = approvals
        object.__setattr__(self, "_approving", approving)
        object.__setattr__(self, "_index", index)
        # Per-instance caches (not lru_cache on the method, which would be shared
        # across policies and keep replaced ones alive).
        object.__setattr__(self, "_decide_cached", functools.lru_cache(maxsize=DECISION_CACHE_SIZE)(self._decide))
        object.__setattr__(self, "_allows_any_cached", functools.lru_cache(maxsize=1024)(self._allows_any))

    @classmethod
    def deny_all(cls, source: str = "no policy") -> Policy:
        return cls(rules=(), immutable_topics=(), source=source)

    def static_credentials_refused(self, identity: str) -> str | None:
        """Why `identity` may not use a static credential (the pattern that refuses it), or None."""
        for pattern in self.static_credentials_denied:
            if pattern.matches(identity):
                return f"the policy's deny_static_credentials names it ({str(pattern)!r})"
        return None

    def rule_named(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def decide(self, principal: Principal, operation: Operation, resource_type: ResourceType,
               name: str | None) -> Decision:
        """Whether `principal` may do `operation` on the named resource (name is ignored for the cluster)."""
        if resource_type == ResourceType.CLUSTER:
            name = None
        return self._decide_cached(principal, operation, resource_type, name)  # type: ignore[operator]

    def allows_any(self, principal: Principal, operation: Operation, resource_type: ResourceType) -> Decision:
        """Whether some allow rule grants `operation` on some resource of this type and no deny rule denies `*`.

        For checks that are not about one named resource, e.g. an idempotent
        producer (Kafka 3+ lets a producer with write on any topic be
        idempotent). A deny rule for specific names does not make this a deny:
        the allowed names may lie outside it.
        """
        return self._allows_any_cached(principal, operation, resource_type)  # type: ignore[operator]

    def grants_every(self, principal: Principal, operation: Operation, resource_type: ResourceType) -> bool:
        """Whether `operation` is allowed on every name of this type: an allow rule for the principal covers
        `*` and no deny rule for the principal names any resource of the type for that operation.

        For fast paths that skip per-name decisions (a consumer allowed every topic in the clear needs no
        look at what a Fetch response carries); immutable topics do not restrict produce, consume or unmask.
        """
        denies, allows = self._index.get((operation, resource_type), _NOTHING)
        if any(rule.covers(principal) for rule in denies + self._approving.get((operation, resource_type), ())):
            return False
        if resource_type == ResourceType.TOPIC and operation in IMMUTABLE_OPERATIONS and self.immutable_topics:
            return False
        return any(rule.covers(principal) and rule.covers_every(resource_type) for rule in allows)

    def _decide(self, principal: Principal, operation: Operation, resource_type: ResourceType,
                name: str | None) -> Decision:
        what = f"{operation} on {describe_resource(resource_type, name)}"
        if name is None and resource_type != ResourceType.CLUSTER:
            return Decision(False, DEFAULT_DENY, f"{operation} on a {_RESOURCE_WORDS.get(resource_type, resource_type)} "
                                                 f"needs its name and none was given")
        if resource_type == ResourceType.TOPIC and operation in IMMUTABLE_OPERATIONS:
            for pattern in self.immutable_topics:
                if pattern.matches(name):  # type: ignore[arg-type]
                    return Decision(False, IMMUTABLE_TOPICS,
                                    f"topic {name!r} matches immutable_topics pattern {str(pattern)!r}: delete, alter "
                                    f"and delete-records are refused for everyone")
        denies, allows = self._index.get((operation, resource_type), _NOTHING)
        for rule in denies:
            if rule.covers(principal) and (matched := rule.match(resource_type, name)) is not None:
                return Decision(False, rule.name,
                                f"{rule.why_covers(principal)} and {_why_matches(resource_type, name, matched)}; "
                                f"an explicit deny beats any allow")
        for rule in self._approving.get((operation, resource_type), ()):
            if rule.covers(principal) and (matched := rule.match(resource_type, name)) is not None:
                return Decision(False, rule.name,
                                f"{rule.why_covers(principal)} and {_why_matches(resource_type, name, matched)}; "
                                f"{what} needs a person's approval", approval=rule)
        for rule in allows:
            if rule.covers(principal) and (matched := rule.match(resource_type, name)) is not None:
                return Decision(True, rule.name,
                                f"{rule.why_covers(principal)} and {_why_matches(resource_type, name, matched)}")
        return Decision(False, DEFAULT_DENY, f"no rule grants {what} to {_who(principal)}")

    def _allows_any(self, principal: Principal, operation: Operation, resource_type: ResourceType) -> Decision:
        kind = _RESOURCE_WORDS.get(resource_type, resource_type)
        if resource_type == ResourceType.TOPIC and operation in IMMUTABLE_OPERATIONS:
            for pattern in self.immutable_topics:
                if pattern.matches_everything:
                    return Decision(False, IMMUTABLE_TOPICS,
                                    f"every topic is immutable ({str(pattern)!r}): {operation} is refused for everyone")
        denies, allows = self._index.get((operation, resource_type), _NOTHING)
        for rule in denies:
            if rule.covers(principal) and rule.covers_every(resource_type):
                scope = "the cluster" if resource_type == ResourceType.CLUSTER else f"every {kind} ('*')"
                return Decision(False, rule.name, f"{rule.why_covers(principal)} and it denies {operation} on {scope}")
        for rule in allows:
            if rule.covers(principal):
                scope = ("the cluster" if resource_type == ResourceType.CLUSTER else
                         f"{kind}s matching {', '.join(repr(str(p)) for p in rule.patterns(resource_type))}")
                return Decision(True, rule.name, f"{rule.why_covers(principal)} and it grants {operation} on {scope}")
        scope = "the cluster" if resource_type == ResourceType.CLUSTER else f"any {kind}"
        return Decision(False, DEFAULT_DENY, f"no rule grants {operation} on {scope} to {_who(principal)}")


def _who(principal: Principal) -> str:
    if not principal.groups:
        return f"identity {principal.identity!r} (which has no groups)"
    return f"identity {principal.identity!r} or its groups ({', '.join(sorted(principal.groups))})"
