"""Decisions and matching: a table of cases, and properties of patterns and `decide`."""

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy.model import (
    DECISION_CACHE_SIZE,
    Approval,
    Effect,
    Operation as Op,
    Pattern,
    PatternError,
    PatternKind,
    Policy,
    Principal,
    ResourceType as R,
    Rule,
)
from appliance.policy.parser import parse_policy

POLICY = parse_policy("""
version: 1
immutable_topics: [audit-log, "prefix:ledger."]
rules:
  - name: orders-write
    identities: [orders]
    operations: [produce, describe]
    topics: [orders, "prefix:orders."]
  - name: payments-read
    groups: [payments]
    operations: [consume, describe, group]
    topics: ["glob:pay-??-*"]
    consumer_groups: ["glob:payments-*"]
  - name: no-secrets
    effect: deny
    identities: ["*"]
    operations: [consume, produce]
    topics: ["prefix:secret"]
  - name: everyone-reads-secrets   # after the deny, and loses to it anyway
    identities: ["*"]
    operations: [consume]
    topics: [secrets, orders]
  - name: ledger-owner
    identities: [ledger]
    operations: [delete, alter, delete-records, produce]
    topics: ["*"]
  - name: txn
    identities: [orders]
    operations: [transactions]
    transactional_ids: ["prefix:orders-"]
  - name: ops
    groups: [platform]
    operations: [admin, alter]
    cluster: true
  - name: ops-denied-for-contractors
    effect: deny
    groups: [contractors]
    operations: [admin]
    cluster: true
""", source="table.yaml")

ORDERS = Principal("orders", frozenset({"payments"}))
ALICE = Principal("alice", frozenset({"payments"}))
BOB = Principal("bob")
LEDGER = Principal("ledger")
OPS = Principal("olga", frozenset({"platform"}))
CONTRACTOR = Principal("carl", frozenset({"platform", "contractors"}))


@pytest.mark.parametrize("principal, op, rtype, name, allowed, rule", [
    # exact and prefix topics, identity match
    (ORDERS, Op.PRODUCE, R.TOPIC, "orders", True, "orders-write"),
    (ORDERS, Op.PRODUCE, R.TOPIC, "orders.eu", True, "orders-write"),
    (ORDERS, Op.PRODUCE, R.TOPIC, "orders-eu", False, "default-deny"),
    (ORDERS, Op.PRODUCE, R.TOPIC, "order", False, "default-deny"),
    (ORDERS, Op.DELETE, R.TOPIC, "orders", False, "default-deny"),
    (BOB, Op.PRODUCE, R.TOPIC, "orders", False, "default-deny"),
    # glob topics and consumer groups, group match
    (ALICE, Op.CONSUME, R.TOPIC, "pay-eu-1", True, "payments-read"),
    (ALICE, Op.CONSUME, R.TOPIC, "pay-e-1", False, "default-deny"),
    (ALICE, Op.GROUP, R.GROUP, "payments-batch", True, "payments-read"),
    (ALICE, Op.GROUP, R.GROUP, "Payments-batch", False, "default-deny"),  # case-sensitive
    (ALICE, Op.GROUP, R.TOPIC, "payments-batch", False, "default-deny"),  # group patterns are not topic patterns
    (BOB, Op.CONSUME, R.TOPIC, "pay-eu-1", False, "default-deny"),
    # an explicit deny beats any allow, before or after it
    (ORDERS, Op.PRODUCE, R.TOPIC, "secret-orders", False, "no-secrets"),
    (BOB, Op.CONSUME, R.TOPIC, "secrets", False, "no-secrets"),
    (BOB, Op.CONSUME, R.TOPIC, "orders", True, "everyone-reads-secrets"),
    (ORDERS, Op.DESCRIBE, R.TOPIC, "secrets", False, "default-deny"),
    # immutable topics beat every allow, for delete, alter and delete-records only
    (LEDGER, Op.DELETE, R.TOPIC, "audit-log", False, "immutable-topics"),
    (LEDGER, Op.ALTER, R.TOPIC, "ledger.2024", False, "immutable-topics"),
    (LEDGER, Op.DELETE_RECORDS, R.TOPIC, "ledger.x", False, "immutable-topics"),
    (LEDGER, Op.PRODUCE, R.TOPIC, "audit-log", True, "ledger-owner"),
    (LEDGER, Op.DELETE, R.TOPIC, "ledger", True, "ledger-owner"),
    (LEDGER, Op.DELETE, R.TOPIC, "anything-else", True, "ledger-owner"),
    # transactional ids
    (ORDERS, Op.TRANSACTIONS, R.TRANSACTIONAL_ID, "orders-1", True, "txn"),
    (ORDERS, Op.TRANSACTIONS, R.TRANSACTIONAL_ID, "billing-1", False, "default-deny"),
    (ORDERS, Op.TRANSACTIONS, R.TOPIC, "orders-1", False, "default-deny"),
    # the cluster (a name is ignored)
    (OPS, Op.ADMIN, R.CLUSTER, None, True, "ops"),
    (OPS, Op.ALTER, R.CLUSTER, "kafka-cluster", True, "ops"),
    (OPS, Op.ALTER, R.TOPIC, "orders", False, "default-deny"),
    (CONTRACTOR, Op.ADMIN, R.CLUSTER, None, False, "ops-denied-for-contractors"),
    (ORDERS, Op.ADMIN, R.CLUSTER, None, False, "default-deny"),
    # a resource that needs a name and has none is refused
    (ORDERS, Op.PRODUCE, R.TOPIC, None, False, "default-deny"),
])
def test_decision_table(principal, op, rtype, name, allowed, rule):
    decision = POLICY.decide(principal, op, rtype, name)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason


def test_reasons_say_why():
    assert POLICY.decide(ORDERS, Op.PRODUCE, R.TOPIC, "orders.eu").reason == (
        "identity 'orders' is listed and topic 'orders.eu' matches 'prefix:orders.'")
    assert POLICY.decide(ALICE, Op.GROUP, R.GROUP, "payments-x").reason == (
        "group 'payments' is listed and consumer group 'payments-x' matches 'glob:payments-*'")
    assert "an explicit deny beats any allow" in POLICY.decide(BOB, Op.CONSUME, R.TOPIC, "secrets").reason
    assert "matches immutable_topics pattern 'prefix:ledger.'" in POLICY.decide(
        LEDGER, Op.DELETE, R.TOPIC, "ledger.1").reason
    assert POLICY.decide(BOB, Op.CREATE, R.TOPIC, "t").reason == (
        "no rule grants create on topic 't' to identity 'bob' (which has no groups)")
    assert POLICY.decide(OPS, Op.ADMIN, R.CLUSTER, None).reason == (
        "group 'platform' is listed and it has cluster: true")


def test_operations_given_as_plain_strings_decide_the_same():
    assert POLICY.decide(ORDERS, "produce", "topic", "orders") == POLICY.decide(ORDERS, Op.PRODUCE, R.TOPIC, "orders")


def test_allows_any():
    assert POLICY.allows_any(ORDERS, Op.PRODUCE, R.TOPIC).allowed
    assert POLICY.allows_any(ORDERS, Op.PRODUCE, R.TOPIC).rule == "orders-write"
    assert not POLICY.allows_any(BOB, Op.PRODUCE, R.TOPIC).allowed
    assert POLICY.allows_any(OPS, Op.ADMIN, R.CLUSTER).allowed
    assert POLICY.allows_any(CONTRACTOR, Op.ADMIN, R.CLUSTER).rule == "ops-denied-for-contractors"
    # a deny of specific names leaves other names allowed
    assert POLICY.allows_any(BOB, Op.CONSUME, R.TOPIC).allowed
    wall = Policy(rules=POLICY.rules + (Rule("wall", frozenset({Op.PRODUCE}), Effect.DENY, frozenset({"orders"}),
                                             topics=(Pattern.glob("*"),)),))
    assert wall.allows_any(ORDERS, Op.PRODUCE, R.TOPIC).rule == "wall"
    every_topic_immutable = Policy(rules=POLICY.rules, immutable_topics=(Pattern.any(),))
    assert every_topic_immutable.allows_any(LEDGER, Op.DELETE, R.TOPIC).rule == "immutable-topics"
    assert POLICY.allows_any(LEDGER, Op.DELETE, R.TOPIC).allowed


def test_deny_all_and_empty_policies_deny_everything():
    nothing = Policy.deny_all()
    assert nothing.source == "no policy"
    for op in Op:
        for rtype in R:
            assert nothing.decide(ORDERS, op, rtype, "x").rule == "default-deny"
            assert not nothing.allows_any(ORDERS, op, rtype).allowed


def test_decisions_are_cached_per_policy_and_bounded():
    policy = Policy(rules=POLICY.rules, source="cache")
    for i in range(DECISION_CACHE_SIZE + 10):
        policy.decide(ORDERS, Op.PRODUCE, R.TOPIC, f"orders.{i}")
    info = policy._decide_cached.cache_info()
    assert info.currsize == DECISION_CACHE_SIZE and info.misses == DECISION_CACHE_SIZE + 10
    policy.decide(ORDERS, Op.PRODUCE, R.TOPIC, f"orders.{DECISION_CACHE_SIZE + 9}")
    assert policy._decide_cached.cache_info().hits == 1
    assert Policy(rules=POLICY.rules)._decide_cached.cache_info().currsize == 0  # not shared


def test_policy_refuses_duplicate_rule_names():
    rule = Rule("same", frozenset({Op.PRODUCE}), identities=frozenset({"a"}), topics=(Pattern.any(),))
    with pytest.raises(ValueError, match="rule names must be unique; repeated: same"):
        Policy(rules=(rule, rule))


# --- patterns ------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, value", [
    ("orders", PatternKind.EXACT, "orders"),
    ("prefix:orders.", PatternKind.PREFIX, "orders."),
    ("glob:orders-*", PatternKind.GLOB, "orders-*"),
    ("*", PatternKind.ANY, "*"),
    ("app:orders", PatternKind.EXACT, "app:orders"),  # a colon is fine in a group or transactional id
])
def test_pattern_parse_and_round_trip(text, kind, value):
    pattern = Pattern.parse(text)
    assert (pattern.kind, pattern.value) == (kind, value)
    assert str(pattern) == text and Pattern.parse(str(pattern)) == pattern


@pytest.mark.parametrize("text, message", [
    ("orders-*", "'orders-*' contains '*' but a bare name is matched exactly; write 'glob:orders-*' for a glob, "
                 "or 'prefix:orders-' for a prefix"),
    ("ord?rs", "'ord?rs' contains '?' but a bare name is matched exactly; write 'glob:ord?rs' for a glob"),
    ("[ab]x", "write 'glob:[ab]x' for a glob"),
    ("prefix:orders-*", "a prefix is matched literally, so '*' would have to be in the name; "
                        "write 'prefix:orders-' or 'glob:orders-*'"),
    ("prefix:*", "write 'glob:*'"),
    ("prefix:", "has nothing after 'prefix:'"),
    ("glob:", "has nothing after 'glob:'"),
    ("Prefix:orders", "'Prefix:' is not a pattern kind"),
    ("regex:orders.*", "'regex:' is not a pattern kind"),
    ("", "is empty"),
])
def test_pattern_mistakes_say_what_to_write(text, message):
    with pytest.raises(PatternError) as caught:
        Pattern.parse(text)
    assert message in str(caught.value)


NAMES = st.text(alphabet="ab.-_x*?[]!:", max_size=8)
LITERAL = st.text(alphabet="ab.-_x", min_size=1, max_size=6)


@given(LITERAL, NAMES)
def test_prefix_matches_exactly_the_names_starting_with_it(prefix, name):
    assert Pattern.parse(f"prefix:{prefix}").matches(name) == name.startswith(prefix)
    assert Pattern.parse(f"prefix:{prefix}").matches(prefix + name)


@given(LITERAL, NAMES)
def test_exact_matches_only_itself(value, name):
    assert Pattern.parse(value).matches(name) == (name == value)
    assert Pattern.parse(value).matches(value)


@given(st.text(alphabet="ab.-*?[]!", min_size=1, max_size=8), NAMES)
def test_glob_agrees_with_fnmatchcase(glob, name):
    assert Pattern.parse(f"glob:{glob}").matches(name) == fnmatch.fnmatchcase(name, glob)


@given(st.text(max_size=20))
def test_star_matches_everything(name):
    assert Pattern.parse("*").matches(name)
    assert Pattern.parse("*").matches_everything and Pattern.parse("glob:**").matches_everything


# --- decide: a reference model and properties ----------------------------------

IDS = ("orders", "alice", "bob")
GROUPS = ("payments", "platform")
PATTERNS = ("orders", "prefix:ord", "glob:o*s", "glob:?a*", "*", "payments", "prefix:pay")
ALL_OPS = tuple(Op)
NAME_PATTERNS = ("prefix:or", "glob:?l*", "glob:pay*", "prefix:plat")

rules_strategy = st.lists(
    st.builds(
        lambda i, effect, ids, groups, ops, topics, cgroups, txids, cluster: Rule(
            name=f"r{i}", effect=effect, identities=frozenset(ids), groups=frozenset(groups),
            operations=frozenset(ops), topics=tuple(map(Pattern.parse, topics)),
            consumer_groups=tuple(map(Pattern.parse, cgroups)), transactional_ids=tuple(map(Pattern.parse, txids)),
            cluster=cluster, approval=Approval(("approvers",)) if effect == Effect.APPROVE else None),
        st.integers(),
        st.sampled_from(tuple(Effect)),
        st.sets(st.sampled_from(IDS + ("*",) + NAME_PATTERNS), max_size=2),
        st.sets(st.sampled_from(GROUPS + NAME_PATTERNS), max_size=2),
        st.sets(st.sampled_from(ALL_OPS), min_size=1, max_size=3),
        st.lists(st.sampled_from(PATTERNS), max_size=3),
        st.lists(st.sampled_from(PATTERNS), max_size=2),
        st.lists(st.sampled_from(PATTERNS), max_size=2),
        st.booleans(),
    ),
    max_size=6,
).map(lambda rules: tuple(Rule(**{**{f: getattr(r, f) for f in Rule.__slots__}, "name": f"rule-{n}"})
                          for n, r in enumerate(rules)))
principals = st.builds(lambda i, g: Principal(i, frozenset(g)), st.sampled_from(IDS), st.sets(st.sampled_from(GROUPS)))
resources = st.one_of(
    st.tuples(st.sampled_from((R.TOPIC, R.GROUP, R.TRANSACTIONAL_ID)), st.sampled_from(
        ("orders", "ords", "oas", "payments", "pay-1", "xa", "audit"))),
    st.just((R.CLUSTER, None)),
)
immutable = st.lists(st.sampled_from(PATTERNS), max_size=2).map(lambda ps: tuple(map(Pattern.parse, ps)))


def reference_decide(rules, immutable_topics, principal, op, rtype, name):
    """The semantics as the docs state them, written as plainly as possible."""
    if rtype == R.TOPIC and op in (Op.DELETE, Op.ALTER, Op.DELETE_RECORDS):
        if any(fnmatch_pattern(p, name) for p in immutable_topics):
            return (False, "immutable-topics")

    def matches(rule):
        names_principal = (any(fnmatch_pattern(p, principal.identity) for p in rule.identities)
                           or any(fnmatch_pattern(p, g) for p in rule.groups for g in principal.groups))
        if rtype == R.CLUSTER:
            on_resource = rule.cluster
        else:
            patterns = {R.TOPIC: rule.topics, R.GROUP: rule.consumer_groups,
                        R.TRANSACTIONAL_ID: rule.transactional_ids}[rtype]
            on_resource = any(fnmatch_pattern(p, name) for p in patterns)
        return names_principal and op in rule.operations and on_resource

    for rule in rules:
        if rule.effect == Effect.DENY and matches(rule):
            return (False, rule.name)
    for rule in rules:  # a person's approval first: not allowed until then
        if rule.effect == Effect.APPROVE and matches(rule):
            return (False, rule.name)
    for rule in rules:
        if rule.effect == Effect.ALLOW and matches(rule):
            return (True, rule.name)
    return (False, "default-deny")


def fnmatch_pattern(pattern, name):
    """Every pattern restated as an fnmatch glob (names here have no glob characters)."""
    glob = {PatternKind.EXACT: pattern.value, PatternKind.PREFIX: pattern.value + "*",
            PatternKind.GLOB: pattern.value, PatternKind.ANY: "*"}[pattern.kind]
    return fnmatch.fnmatchcase(name, glob)


@settings(max_examples=300)
@given(rules_strategy, immutable, principals, st.sampled_from(ALL_OPS), resources)
def test_decide_agrees_with_the_reference_and_is_deterministic(rules, immutable_topics, principal, op, resource):
    rtype, name = resource
    policy = Policy(rules=rules, immutable_topics=immutable_topics)
    first = policy.decide(principal, op, rtype, name)
    assert (first.allowed, first.rule) == reference_decide(rules, immutable_topics, principal, op, rtype, name)
    assert policy.decide(principal, op, rtype, name) == first  # from the cache
    assert Policy(rules=rules, immutable_topics=immutable_topics).decide(principal, op, rtype, name) == first


@settings(max_examples=300)
@given(rules_strategy, principals, st.sampled_from(ALL_OPS), resources, st.integers(min_value=0, max_value=6),
       st.booleans())
def test_a_deny_on_star_denies_every_such_request(rules, principal, op, resource, position, by_group):
    rtype, name = resource
    deny = Rule(name="wall", effect=Effect.DENY, operations=frozenset({op}),
                identities=frozenset() if by_group and principal.groups else frozenset({principal.identity}),
                groups=frozenset(principal.groups) if by_group else frozenset(),
                topics=(Pattern.any(),), consumer_groups=(Pattern.any(),), transactional_ids=(Pattern.any(),),
                cluster=True)
    position = min(position, len(rules))
    policy = Policy(rules=rules[:position] + (deny,) + rules[position:])
    decision = policy.decide(principal, op, rtype, name)
    assert not decision.allowed
    assert decision.rule in ("wall", "immutable-topics") or (
        decision.rule != "default-deny" and policy.rule_named(decision.rule).effect == Effect.DENY)
    assert not policy.allows_any(principal, op, rtype).allowed


def test_grants_every_needs_an_allow_for_star_and_no_deny_for_the_principal():
    from appliance.policy.model import Operation, Principal, ResourceType
    from appliance.policy.parser import parse_policy
    p = parse_policy("""
version: 1
rules:
  - name: all
    identities: [a, b]
    operations: [consume]
    topics: ["*"]
  - name: some
    identities: [c]
    operations: [consume]
    topics: ["prefix:x"]
  - name: not-secrets
    effect: deny
    identities: [b]
    operations: [consume]
    topics: [secret]
""", source="t")
    assert p.grants_every(Principal("a"), Operation.CONSUME, ResourceType.TOPIC)
    assert not p.grants_every(Principal("b"), Operation.CONSUME, ResourceType.TOPIC)  # a deny names one
    assert not p.grants_every(Principal("c"), Operation.CONSUME, ResourceType.TOPIC)  # a prefix is not all
    assert not p.grants_every(Principal("a"), Operation.UNMASK, ResourceType.TOPIC)
