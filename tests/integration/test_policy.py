"""Policy with real clients: refusals the way Kafka's own authorizer gives them, fast, and audited."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import BROKER4, POLICY, audit, cli, eventually, java_argv

BASE = Path(__file__).with_name("policy.yaml")
EXTRA_RULES = """
  - name: pol-writer-topics
    identities: [pol-writer]
    operations: [produce, consume, describe, create, delete, alter]
    topics: ["prefix:pol-ok-", "prefix:pol-ledger-"]
  - name: pol-writer-group
    identities: [pol-writer]
    operations: [group]
    consumer_groups: ["glob:pol-app-*"]
"""


def write_policy(text: str) -> None:
    tmp = POLICY.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(POLICY)


@pytest.fixture(scope="module")
def policy_in_force(appliance):
    """The integration policy plus the rules these tests need, with an immutable topic prefix."""
    base = BASE.read_text()
    text = base.replace("version: 1\n", 'version: 1\nimmutable_topics: ["prefix:pol-ledger-"]\n') + EXTRA_RULES
    write_policy(text)
    expected = len(yaml.safe_load(text)["rules"])
    eventually(lambda: (appliance.status() or {}).get("policy", {}).get("rules") == expected,
               message="the test policy reloaded")
    yield text
    shutil.copy(BASE, POLICY)


@pytest.fixture(scope="module")
def topics(policy_in_force, direct, sasl_args):
    suffix = secrets.token_hex(3)
    names = {"ok": f"pol-ok-{suffix}", "no": f"pol-no-{suffix}", "ledger": f"pol-ledger-{suffix}",
             "doomed": f"pol-ok-doomed-{suffix}"}
    for name in names.values():
        result = direct.client("confluent.py", BROKER4, name, "--create", *sasl_args)
        assert result["errors"] == []
    return names


@pytest.fixture(scope="module")
def writer(appliance, config_path, policy_in_force):
    from tests.integration.conftest import Cgroup, WORKLOAD_PARENT
    from appliance.identity import cgroups

    cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/pol-writer-{secrets.token_hex(3)}"))
    cli(config_path, "enroll", cg.cgroup.path, "--identity", "pol-writer")
    eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in appliance.status()["workloads"]),
               message="pol-writer enrolled")
    yield cg
    cli(config_path, "unenroll", cg.cgroup.path, check=False)
    cg.cleanup()


def test_denied_produce_fails_fast_in_confluent_kafka(writer, topics):
    result = writer.client("confluent.py", BROKER4, topics["no"], "--produce", "1", "--timeout", "10", check=False)
    assert result["produced"] == 0
    assert any("TOPIC_AUTHORIZATION_FAILED" in e for e in result["errors"]), result["errors"]
    # From produce() to the delivery error, not the 10 s message timeout.
    assert result["first_error_after_s"] < 1.0, result


def test_denied_produce_fails_in_kcat_and_kafka_python(writer, topics):
    kcat = writer.run(["kcat", "-b", BROKER4, "-t", topics["no"], "-P", "-m", "5"], input="x\n", check=False)
    assert kcat.returncode != 0 and "authorization failed" in (kcat.stderr + kcat.stdout).lower()
    script = ("import sys\nfrom kafka import KafkaProducer\nfrom kafka.errors import TopicAuthorizationFailedError\n"
              f"p = KafkaProducer(bootstrap_servers='{BROKER4}', max_block_ms=5000)\n"
              "try:\n"
              f"    p.send('{topics['no']}', b'x').get(timeout=5)\n"
              "except TopicAuthorizationFailedError as e:\n"
              "    print('refused:', type(e).__name__); sys.exit(0)\n"
              "sys.exit(3)\n")
    from tests.integration.conftest import PY
    out = writer.run([PY, "-c", script], timeout=30)
    assert "refused: TopicAuthorizationFailedError" in out.stdout


def test_mixed_produce_succeeds_in_part(writer, topics, config_path):
    codes = json.loads(writer.run([__import__("sys").executable, str(Path(__file__).with_name("clients") / "raw_kafka.py"),
                                   "produce2", "127.0.0.1", "39092", topics["ok"], topics["no"]]).stdout)
    assert codes == {topics["ok"]: 0, topics["no"]: 29}  # NONE, TOPIC_AUTHORIZATION_FAILED
    ops = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "pol-writer", "--topic", topics["ok"])
                              if o["decision"] == "partly refused"], message="partial produce audited")
    checks = json.loads(ops[0]["checks"])
    assert [topics["ok"], "produce", "allow", "pol-writer-topics"] in [c[1:] for c in checks]
    assert [topics["no"], "produce", "deny", "default-deny"] in [c[1:] for c in checks]
    # The allowed half really reached the broker.
    read = writer.client("confluent.py", BROKER4, topics["ok"], "--consume", "1", "--group", "pol-app-mixed")
    assert read["values"] == [f"to {topics['ok']}"]


def test_consumer_in_a_denied_group_gets_a_group_authorization_error(writer, topics):
    result = writer.client("confluent.py", BROKER4, topics["ok"], "--consume", "1", "--group", "not-mine",
                           "--timeout", "8", check=False)
    assert result["consumed"] == 0
    assert any("GROUP_AUTHORIZATION_FAILED" in e for e in result["errors"]), result["errors"]


def test_immutable_topic_cannot_be_deleted_or_reconfigured(writer, topics, broker):
    kept = writer.run(java_argv(broker, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BROKER4,
                                "--delete", "--topic", topics["ledger"]), check=False, timeout=90)
    assert kept.returncode != 0 and "PolicyViolation" in kept.stdout + kept.stderr
    altered = writer.run(java_argv(broker, "kafka.admin.ConfigCommand", "--bootstrap-server", BROKER4,
                                   "--alter", "--entity-type", "topics", "--entity-name", topics["ledger"],
                                   "--add-config", "retention.ms=1000"), check=False, timeout=90)
    assert altered.returncode != 0 and "PolicyViolation" in altered.stdout + altered.stderr
    # The same identity may delete a topic that is not immutable.
    deleted = writer.run(java_argv(broker, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BROKER4,
                                   "--delete", "--topic", topics["doomed"]), timeout=90)
    assert deleted.returncode == 0


def test_metadata_hides_topics_the_workload_may_not_describe(writer, topics):
    from tests.integration.conftest import PY
    script = ("import json\nfrom confluent_kafka.admin import AdminClient\n"
              f"md = AdminClient({{'bootstrap.servers': '{BROKER4}'}}).list_topics(timeout=10)\n"
              "print(json.dumps(sorted(md.topics)))\n")
    seen = json.loads(writer.run([PY, "-c", script]).stdout)
    assert topics["ok"] in seen and topics["ledger"] in seen
    assert topics["no"] not in seen and not [t for t in seen if not t.startswith(("pol-ok-", "pol-ledger-"))]


def test_an_api_outside_the_table_is_refused_not_forwarded(writer, config_path):
    from tests.integration.conftest import PY
    out = writer.run([PY, str(Path(__file__).with_name("clients") / "raw_kafka.py"), "unmapped", "127.0.0.1", "39092"])
    assert json.loads(out.stdout) == {"error_code": 31}  # CLUSTER_AUTHORIZATION_FAILED
    ops = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "pol-writer")
                              if o["api_name"] == "DescribeQuorum"], message="unmapped API audited")
    assert ops[0]["outcome"] == "refused" and json.loads(ops[0]["checks"])[0][4] == "unmapped-api"


def test_a_bad_policy_reload_keeps_the_old_policy(appliance, writer, topics, config_path, policy_in_force):
    write_policy(policy_in_force + "  - name: broken\n    identities: [pol-writer]\n    operations: [fly]\n")
    try:
        event = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "policy-error")
                                    if "fly" in e["message"]], message="bad policy reported")[0]
        assert "line" in event["message"] and "operation" in event["message"]
        result = writer.client("confluent.py", BROKER4, topics["ok"], "--produce", "2")
        assert result["produced"] == 2 and result["errors"] == []
    finally:
        write_policy(policy_in_force)
    eventually(lambda: [e for e in audit(config_path, "events", "--kind", "policy-load", "--since", "1m")],
               message="good policy reloaded")


def test_sighup_reloads(appliance, config_path, policy_in_force):
    import signal

    before = len(audit(config_path, "events", "--kind", "policy-load"))
    appliance.proc.send_signal(signal.SIGHUP)
    eventually(lambda: len(audit(config_path, "events", "--kind", "policy-load")) > before, message="SIGHUP reload")


CASES = [
    ("produce", "--topic", "ok", True),
    ("produce", "--topic", "no", False),
    ("delete", "--topic", "ledger", False),
    ("group", "--group", "not-mine", False),
    ("group", "--group", "pol-app-mixed", True),
]


def test_policy_explain_agrees_with_what_the_proxy_did(writer, topics, config_path):
    audited: dict[tuple[str, str, str], str] = {}
    for op in audit(config_path, "operations", "--identity", "pol-writer"):
        for resource, name, operation, verdict, rule in json.loads(op["checks"] or "[]"):
            audited[(operation, resource, name)] = verdict
    assert audited, "no decisions audited for pol-writer"
    for operation, flag, key, expected in CASES:
        name = topics.get(key, key)
        explained = json.loads(cli(config_path, "policy", "explain", "--identity", "pol-writer", "--operation",
                                   operation, flag, name, "--json").stdout)
        resource = "topic" if flag == "--topic" else "group"
        assert explained["allowed"] is expected, explained
        assert audited[(operation, resource, name)] == ("allow" if expected else "deny"), (operation, name)
