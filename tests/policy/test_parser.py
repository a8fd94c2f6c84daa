"""Reading policy files: every kind of mistake names the file, line and key; plus `appliance policy`.

The CLI tests live here until the `policy` group is registered in
appliance/cli/__init__.py (then they belong in tests/cli/test_policy.py).
"""

import json
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from appliance.cli.docgen import _walk
from appliance.cli.policy import policy as policy_cli
from appliance.config import Config
from appliance.identity.enrollment import EnrollmentStore
from appliance.policy.model import Effect, Operation as Op, Pattern, PatternKind, Principal, ResourceType as R
from appliance.policy.parser import PolicyError, load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "appliance" / "policy" / "embedded.yaml"

GOOD = """\
version: 1
immutable_topics: [audit-log, "prefix:ledger."]
rules:
  - name: orders-write            # required, unique
    effect: allow
    identities: [orders]
    groups: [payments]
    operations: [produce, describe]
    topics: [orders, "prefix:orders."]
    consumer_groups: ["glob:orders-*"]
    transactional_ids: ["prefix:orders-"]
    cluster: false
  - name: deny-it
    effect: deny
    identities: ["*"]
    operations: [unmask]
    topics: ["*"]
"""


def parse(text: str):
    return parse_policy(textwrap.dedent(text), source="p.yaml")


def test_the_documented_example_parses_to_the_model():
    policy = parse_policy(GOOD, source="good.yaml")
    assert policy.source == "good.yaml"
    assert [str(p) for p in policy.immutable_topics] == ["audit-log", "prefix:ledger."]
    first, second = policy.rules
    assert first.name == "orders-write" and first.effect == Effect.ALLOW and first.line == 4
    assert first.identities == (Pattern.exact("orders"),) and first.groups == (Pattern.exact("payments"),)
    assert first.operations == {Op.PRODUCE, Op.DESCRIBE}
    assert first.topics == (Pattern(PatternKind.EXACT, "orders"), Pattern(PatternKind.PREFIX, "orders."))
    assert first.consumer_groups == (Pattern.glob("orders-*"),)
    assert first.transactional_ids == (Pattern.prefix("orders-"),) and first.cluster is False
    assert second.effect == Effect.DENY and second.topics == (Pattern.any(),)
    assert policy.decide(Principal("x", frozenset({"payments"})), Op.PRODUCE, R.TOPIC, "orders.1").rule == "orders-write"


def test_names_are_taken_as_written_not_as_yaml_types():
    policy = parse("""
        version: 1
        rules:
          - name: 2024
            identities: [123, "on"]
            groups: [yes]
            operations: [produce]
            topics: [no, 1e3, 007, null]
            cluster: yes
    """)
    rule = policy.rules[0]
    assert rule.name == "2024" and {str(p) for p in rule.identities} == {"123", "on"} and rule.groups == (Pattern.exact("yes"),)
    assert [str(p) for p in rule.topics] == ["no", "1e3", "007", "null"] and rule.cluster is True


def test_empty_lists_and_an_empty_rules_key_are_valid():
    assert parse("version: 1\nrules:\n").rules == ()
    assert parse("version: 1\n").rules == ()
    policy = parse("""
        version: 1
        immutable_topics:
        rules:
          - name: a
            identities:
            groups: [g]
            operations: [produce]
            topics: []
            cluster: true
    """)
    assert policy.immutable_topics == () and policy.rules[0].topics == ()


@pytest.mark.parametrize("text, message", [
    # the document
    ("", "p.yaml: the policy is empty; it needs at least 'version: 1'"),
    ("- a\n", "p.yaml line 1: the top level must be a mapping with the keys version, immutable_topics, deny_static_credentials, rules"),
    ("version: 1\nrules: [\n", "p.yaml line 3: not valid YAML: expected the node content"),
    ("version: 1\n---\nversion: 1\n", "p.yaml line 2: not valid YAML: but found another document"),
    ("rules: []\n", "p.yaml line 1: key 'version' is missing; start the file with 'version: 1'"),
    ("version: 2\n", "p.yaml line 1: key 'version' must be 1 (the only format so far), not '2'"),
    ("version: '1'\n", "p.yaml line 1: key 'version' must be 1"),
    ("version: 1\nrule: []\n",
     "p.yaml line 2: key 'rule' is not a policy setting (did you mean 'rules'?); "
     "valid keys are: version, immutable_topics, deny_static_credentials, rules"),
    ("version: 1\nrules: []\nrules: []\n", "p.yaml line 3: key 'rules' appears twice (first at line 2)"),
    ("version: 1\nrules: {a: 1}\n", "p.yaml line 2: key 'rules' must be a list, e.g. rules: [{name: ..."),
    ("version: 1\nrules: [orders]\n",
     "p.yaml line 2: key 'rules' item 1 must be a mapping with the keys name, effect, identities, groups"),
    # immutable topics
    ("version: 1\nimmutable_topics: audit\n",
     "p.yaml line 2: key 'immutable_topics' must be a list, e.g. immutable_topics: [audit-log, 'prefix:ledger.']"),
    ("version: 1\nimmutable_topics:\n  - ok\n  - audit-*\n",
     "p.yaml line 4: key 'immutable_topics' item 2 'audit-*' contains '*' but a bare name is matched exactly; "
     "write 'glob:audit-*' for a glob, or 'prefix:audit-' for a prefix"),
    ("version: 1\nimmutable_topics: [prefx:audit]\n",
     "p.yaml line 2: key 'immutable_topics' item 1 'prefx:audit' is not a topic name (topics cannot contain ':'); "
     "patterns are written 'prefix:NAME', 'glob:PATTERN' or '*'"),
])
def test_document_mistakes(text, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.yaml")
    assert message in str(caught.value)


RULE = """\
version: 1
rules:
  - name: ok
    identities: [orders]
    operations: [produce]
    topics: [orders]
  - name: r
{body}"""


@pytest.mark.parametrize("body, message", [
    # rule keys
    ("    identities: [a]\n    operations: [produce]\n    topic: [orders]\n",
     "p.yaml line 10: key 'topic' of rule 'r' is not a rule setting (did you mean 'topics'?); valid keys are: "
     "name, effect, identities, groups, operations, topics, consumer_groups, transactional_ids, cluster"),
    ("    identities: [a]\n    identities: [b]\n",
     "p.yaml line 9: key 'identities' of rule 'r' appears twice (first at line 8)"),
    # effect
    ("    effect: permit\n    identities: [a]\n    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 8: key 'effect' of rule 'r' must be allow, deny or approve, not 'permit'"),
    # principals
    ("    identities: orders\n",
     "p.yaml line 8: key 'identities' of rule 'r' must be a list, e.g. identities: [orders, 'prefix:ci-']"),
    ("    identities: [ok, 'bad name']\n",
     "p.yaml line 8: key 'identities' of rule 'r' item 2 'bad name' is not a valid identity name or pattern (so it "
     "could never match): names use 1-128 letters, digits and . _ @ : - (starting with a letter or digit), and "
     "identities may be SPIFFE IDs (spiffe://trust-domain/path); write 'prefix:NAME' or 'glob:PATTERN' for more "
     "than one, or '*' for every identity"),
    ("    identities: ['spiffe://Example.org/sa']\n",  # a trust domain is lowercase
     "p.yaml line 8: key 'identities' of rule 'r' item 1 'spiffe://Example.org/sa' is not a valid identity name"),
    ("    groups: ['spiffe://example.org/sa']\n",  # groups are plain names
     "p.yaml line 8: key 'groups' of rule 'r' item 1 'spiffe://example.org/sa' is not a valid group name or pattern "
     "(so it could never match): names use 1-128 letters, digits and . _ @ : - (starting with a letter or digit); "
     "write"),
    ("    identities: ['prefix:-x']\n",
     "p.yaml line 8: key 'identities' of rule 'r' item 1 'prefix:-x' is not a valid identity name or pattern"),
    ("    identities: ['regex:ci-.*']\n",
     "p.yaml line 8: key 'identities' of rule 'r' item 1 'regex:ci-.*': 'regex:' is not a pattern kind"),
    ("    groups: ['team-*']\n",
     "p.yaml line 8: key 'groups' of rule 'r' item 1 'team-*' contains '*' but a bare name is matched exactly; "
     "write 'glob:team-*' for a glob, or 'prefix:team-' for a prefix"),
    ("    groups: ['*']\n",
     "p.yaml line 8: key 'groups' of rule 'r' item 1 is '*', which is not a group; to cover everyone write "
     "identities: ['*']"),
    ("    groups:\n      - [nested]\n",
     "p.yaml line 9: key 'groups' of rule 'r' item 1 must be a group name or pattern, not a list"),
    ("    identities:\n      - ok\n      -\n",
     "p.yaml line 10: key 'identities' of rule 'r' item 2 is empty; expected an identity name"),
    # operations
    ("    identities: [a]\n    operations: [produce, write]\n",
     "p.yaml line 9: key 'operations' of rule 'r' item 2 'write' is not an operation; valid operations are: "
     "produce, consume, describe, create, delete, alter, delete-records, group, transactions, admin, unmask"),
    ("    identities: [a]\n    operations: [delete_records]\n",
     "item 1 'delete_records' is not an operation (did you mean 'delete-records'?)"),
    # resources
    ("    identities: [a]\n    operations: [consume]\n    topics: [orders, 'prefix:orders.*']\n",
     "p.yaml line 10: key 'topics' of rule 'r' item 2 'prefix:orders.*': a prefix is matched literally, so '*' "
     "would have to be in the name; write 'prefix:orders.' or 'glob:orders.*'"),
    ("    identities: [a]\n    operations: [consume]\n    topics: ['orders topic']\n",
     "p.yaml line 10: key 'topics' of rule 'r' item 1 'orders topic' cannot match any topic: Kafka topic names use "
     "only letters, digits, '.', '_' and '-'"),
    ("    identities: [a]\n    operations: [consume]\n    topics: ['" + "t" * 250 + "']\n",
     "cannot match any topic: Kafka topic names are at most 249 characters"),
    ("    identities: [a]\n    operations: [group]\n    consumer_groups: ['billing-?']\n",
     "p.yaml line 10: key 'consumer_groups' of rule 'r' item 1 'billing-?' contains '?' but a bare name is matched "
     "exactly; write 'glob:billing-?' for a glob"),
    ("    identities: [a]\n    operations: [transactions]\n    transactional_ids: ['glob:']\n",
     "p.yaml line 10: key 'transactional_ids' of rule 'r' item 1 'glob:' has nothing after 'glob:'"),
    ("    identities: [a]\n    operations: [admin]\n    cluster: 'true'\n",
     "p.yaml line 10: key 'cluster' of rule 'r' must be true or false, not 'true'"),
    # what every rule needs
    ("    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 7: rule 'r' names no one: give key 'identities' (names or '*') and/or key 'groups'"),
    ("    identities: []\n    groups: []\n    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 7: rule 'r' names no one"),
    ("    identities: [a]\n    topics: [t]\n",
     "p.yaml line 7: rule 'r' grants no operation: give key 'operations' with at least one of produce, consume"),
    ("    identities: [a]\n    operations: [admin]\n    cluster: false\n",
     "p.yaml line 7: rule 'r' names no resource: give at least one of the keys topics, consumer_groups, "
     "transactional_ids (non-empty) or 'cluster: true'"),
])
def test_rule_mistakes(body, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(RULE.format(body=body), source="p.yaml")
    assert message in str(caught.value)


@pytest.mark.parametrize("rule, message", [
    ("  - identities: [a]\n    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 7: key 'name' is missing from rule 2; every rule needs a unique name"),
    ("  - name: ok\n    identities: [a]\n    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 7: key 'name' of rule 2 'ok' is already the name of the rule at line 3; rule names must be unique"),
    ("  - name: default-deny\n    identities: [a]\n    operations: [produce]\n    topics: [t]\n",
     "p.yaml line 7: key 'name' of rule 2 'default-deny' is reserved for decisions no rule made"),
    ("  - name: ''\n    identities: [a]\n",
     "p.yaml line 7: key 'name' of rule 2 is empty; expected the rule's name"),
    ("  - name: [a, b]\n",
     "p.yaml line 7: key 'name' of rule 2 must be the rule's name, not a list"),
    ("  - nme: x\n",
     "p.yaml line 7: key 'nme' of rule 2 is not a rule setting (did you mean 'name'?)"),
])
def test_rule_name_mistakes(rule, message):
    text = RULE.split("  - name: r\n")[0] + rule
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.yaml")
    assert message in str(caught.value)


def test_load_policy_names_the_file(tmp_path):
    with pytest.raises(PolicyError, match=r"nope.yaml: cannot read the policy file: No such file or directory"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    identities: [a]\n    operations: [fly]\n")
    with pytest.raises(PolicyError, match=rf"^{bad} line 5: key 'operations' of rule 'a' item 1 'fly'"):
        load_policy(bad)
    assert load_policy(EXAMPLE).source == str(EXAMPLE)


def test_the_example_policy_says_what_the_demo_needs():
    policy = load_policy(EXAMPLE)
    orders = Principal("orders", frozenset({"payments"}))
    for op in (Op.PRODUCE, Op.CONSUME, Op.DESCRIBE):
        assert policy.decide(orders, op, R.TOPIC, "demo-orders").allowed
    for op in (Op.GROUP, Op.CONSUME, Op.DESCRIBE):
        assert policy.decide(orders, op, R.GROUP, "demo-orders").allowed
    assert policy.decide(orders, Op.CONSUME, R.TOPIC, "demo-secrets").rule == "no-demo-secrets"
    assert policy.decide(Principal("ledger"), Op.DELETE, R.TOPIC, "demo-ledger").rule == "immutable-topics"
    assert policy.decide(Principal("ledger"), Op.DELETE, R.TOPIC, "demo-ledger.2024").allowed
    assert policy.decide(orders, Op.GROUP, R.GROUP, "payments-reports").rule == "payments-read-ledger"
    assert not policy.decide(orders, Op.ADMIN, R.CLUSTER, None).allowed


# --- appliance policy ------------------------------------------------------------

def invoke(args, tmp_path, **config):
    """Run `appliance policy ARGS` with the enrolment file in tmp_path and (unless given) no configured policy."""
    obj = SimpleNamespace(enrollments_file=tmp_path / "enrollments.json", **config)
    return CliRunner().invoke(policy_cli, args, obj=obj)


def test_every_policy_command_has_help_with_an_example():
    for path, command in _walk(policy_cli, ["appliance", "policy"]):
        assert command.help and "Example:" in command.help, f"`{' '.join(path)}` lacks help with an example"


def test_check(tmp_path):
    result = invoke(["check", str(EXAMPLE)], tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output == f"{EXAMPLE}: 10 rules, 1 immutable topic patterns: OK\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    identities: [a]\n    operations: [fly]\n")
    result = invoke(["check", str(bad)], tmp_path)
    assert result.exit_code == 1 and f"{bad} line 5: key 'operations' of rule 'a'" in result.output


def test_explain_allow_and_deny(tmp_path):
    base = ["explain", "--policy", str(EXAMPLE), "--identity", "orders", "--member-of", "payments"]
    result = invoke(base + ["--operation", "produce", "--topic", "demo-orders"], tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "ALLOW produce on topic 'demo-orders' for orders (groups: payments) — rule 'orders-demo' (")
    result = invoke(base + ["--operation", "delete", "--topic", "demo-orders"], tmp_path)
    assert result.output == ("DENY delete on topic 'demo-orders' for orders (groups: payments) — default-deny (no rule "
                             "grants delete on topic 'demo-orders' to identity 'orders' or its groups (payments))\n")
    result = invoke(base + ["--operation", "group", "--group", "payments-x", "--json"], tmp_path)
    out = json.loads(result.output)
    line = EXAMPLE.read_text().splitlines().index("  - name: payments-read-ledger") + 1
    assert out["allowed"] and out["rule"] == "payments-read-ledger" and out["rule_line"] == line
    assert out["resource_type"] == "group" and out["groups"] == ["payments"]
    result = invoke(base + ["--operation", "admin", "--cluster"], tmp_path)
    assert result.output.startswith("DENY admin on the cluster for orders (groups: payments) — default-deny")


def test_explain_takes_groups_from_enrolment(tmp_path):
    EnrollmentStore(tmp_path / "enrollments.json").enroll(identity="olga", groups=("platform",),
                                                        cgroup_path="/ops", cgroup_id=1)
    args = ["explain", "--policy", str(EXAMPLE), "--operation", "admin", "--cluster"]
    result = invoke(args + ["--identity", "olga"], tmp_path)
    assert result.output.startswith("ALLOW admin on the cluster for olga (groups: platform) — rule 'platform-admin'")
    result = invoke(args + ["--identity", "nobody"], tmp_path)
    assert "note: nobody is not enrolled; evaluating with no groups" in result.output
    EnrollmentStore(tmp_path / "enrollments.json").enroll(identity="olga", groups=(), cgroup_path="/ops2",
                                                        cgroup_id=2)
    result = invoke(args + ["--identity", "olga"], tmp_path)
    assert result.exit_code == 2 and "olga is enrolled with different groups" in result.output


def test_explain_usage_errors(tmp_path):
    args = ["explain", "--identity", "orders", "--operation", "produce"]
    result = invoke(args + ["--topic", "t"], tmp_path)
    assert result.exit_code == 2 and "no policy file: pass --policy FILE" in result.output
    result = invoke(args + ["--policy", str(EXAMPLE)], tmp_path)
    assert result.exit_code == 2 and "give exactly one of --topic, --group, --transactional-id or --cluster" \
        in result.output
    result = invoke(args + ["--policy", str(EXAMPLE), "--topic", "t", "--cluster"], tmp_path)
    assert result.exit_code == 2
    result = invoke(["explain", "--identity", "o", "--operation", "fly", "--cluster"], tmp_path)
    assert result.exit_code == 2 and "'fly' is not one of" in result.output
    result = invoke(args + ["--policy", str(tmp_path / "missing.yaml"), "--topic", "t"], tmp_path)
    assert result.exit_code == 1 and "missing.yaml: cannot read the policy file" in result.output


def test_explain_uses_the_configured_policy_file(tmp_path):
    config = Config(state_dir=tmp_path)
    result = CliRunner().invoke(policy_cli, ["explain", "--identity", "orders", "--member-of", "payments",
                                             "--operation", "consume", "--topic", "demo-orders"],
                                obj=replace(config, policy_file=EXAMPLE))
    assert result.exit_code == 0 and result.output.startswith("ALLOW consume on topic 'demo-orders'")


def test_spiffe_ids_are_identities_and_prefixes_of_them_cover_a_trust_domains_path():
    policy = parse_policy("""
version: 1
rules:
  - name: payments
    identities: ['prefix:spiffe://example.org/ns/payments/', 'spiffe://example.org/ns/ops/sa/auditor',
                 'glob:spiffe://example.org/ns/*/sa/ledger']
    operations: [produce]
    topics: [t]
""", source="p.yaml")

    def produce(who):
        return policy.decide(Principal(who, frozenset()), Op.PRODUCE, R.TOPIC, "t").allowed

    assert produce("spiffe://example.org/ns/payments/sa/orders")
    assert produce("spiffe://example.org/ns/ops/sa/auditor") and not produce("spiffe://example.org/ns/ops/sa/other")
    assert produce("spiffe://example.org/ns/billing/sa/ledger")
    assert not produce("spiffe://evil.example/ns/payments/sa/orders")
    assert not produce("spiffe://example.org/ns/payments")  # the prefix names the path below it, with its "/"


def test_identity_and_group_patterns_match_as_topic_patterns_do():
    policy = parse_policy("""
version: 1
rules:
  - name: ci
    identities: ['prefix:ci-', 'glob:job-?']
    groups: ['glob:team-*']
    operations: [produce]
    topics: [t]
""", source="p.yaml")

    def produce(who, groups=()):
        return policy.decide(Principal(who, frozenset(groups)), Op.PRODUCE, R.TOPIC, "t")

    assert produce("ci-build-7").allowed and "identity 'ci-build-7' matches 'prefix:ci-'" in produce("ci-build-7").reason
    assert produce("job-1").allowed and not produce("job-12").allowed
    assert produce("svc", {"team-payments"}).allowed
    assert "group 'team-payments' matches 'glob:team-*'" in produce("svc", {"team-payments"}).reason
    # Before, 'prefix:ci-' was a literal identity name: only a workload called "prefix:ci-" matched.
    assert not produce("prefix:ci-").allowed
