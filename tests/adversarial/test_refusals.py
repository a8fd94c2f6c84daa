"""H: refusals the Java admin tools understand: Kafka's error, per resource, with the policy's reason.

At 753e6e2 a refused CreateAcls, AlterUserScramCredentials or
AlterPartitionReassignments came back as an empty result with error 0
("the broker reported no creation result"), and a refused alterClientQuotas
hung the Java client forever.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adversarial import policies
from tests.integration.conftest import BROKER4, PY, java_argv

RAW = str(Path(__file__).with_name("raw_client.py"))
CLUSTER_AUTHORIZATION_FAILED = 31

RULES = """
  - name: adv-clerk-topics
    identities: [adv-clerk]
    operations: [describe, create]
    topics: ["prefix:adv-ref-"]
"""
DENIED = "ClusterAuthorizationException"
REASON = "refused by the appliance's policy"


@pytest.fixture(scope="module")
def clerk_policy(appliance, config_path):
    policies.apply(config_path, RULES)
    yield
    policies.restore(config_path)


@pytest.fixture
def clerk(clerk_policy, enroll):
    return enroll("adv-clerk")


def refused(cg, broker, main_class: str, *args: str, timeout: float = 60):
    out = cg.run(java_argv(broker, main_class, "--bootstrap-server", BROKER4, *args), check=False, timeout=timeout)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    return text


def test_refused_create_acls_names_the_authorization_failure(clerk, broker):
    text = refused(clerk, broker, "org.apache.kafka.tools.AclCommand", "--add", "--allow-principal", "User:x",
                   "--operation", "Read", "--topic", "adv-ref-t")
    assert DENIED in text and "no creation result" not in text, text[-2000:]
    assert REASON in text


def test_refused_scram_credentials_change_names_the_authorization_failure(clerk, broker):
    text = refused(clerk, broker, "kafka.admin.ConfigCommand", "--alter", "--entity-type", "users",
                   "--entity-name", "adv-user", "--add-config", "SCRAM-SHA-512=[password=secret-secret]")
    assert DENIED in text, text[-2000:]


def test_refused_client_quotas_change_answers_instead_of_hanging(clerk, broker):
    # At 753e6e2 this never returned; the timeout here is the failure.
    text = refused(clerk, broker, "kafka.admin.ConfigCommand", "--alter", "--entity-type", "clients",
                   "--entity-name", "adv-client", "--add-config", "producer_byte_rate=1024", timeout=60)
    assert DENIED in text, text[-2000:]


def test_refused_partition_reassignment_names_the_authorization_failure(clerk, broker, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [{"topic": "adv-ref-t", "partition": 0,
                                                              "replicas": [1]}]}))
    text = refused(clerk, broker, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--execute",
                   "--reassignment-json-file", str(plan))
    assert DENIED in text, text[-2000:]


def raw(cg, *args: str) -> dict:
    return json.loads(cg.run([PY, RAW, *args[:1], "127.0.0.1", "39092", *args[1:]]).stdout.strip().splitlines()[-1])


def test_refused_alter_client_quotas_answers_each_entity_the_java_admin_waits_for(clerk):
    # The Java admin completes one future per entity from the entry naming it: with none, it waited forever.
    answer = raw(clerk, "alter-quotas", "adv-a", "adv-b")["entries"]
    assert [e["entity"] for e in answer] == [["adv-a"], ["adv-b"]], answer
    assert all(e["error"] == CLUSTER_AUTHORIZATION_FAILED and REASON in e["message"] for e in answer), answer


def test_refused_partition_reassignment_answers_every_partition(clerk):
    answer = raw(clerk, "reassign", "adv-ref-t")
    assert answer["error"] == CLUSTER_AUTHORIZATION_FAILED and REASON in answer["message"], answer
    assert [p[:3] for p in answer["partitions"]] == [["adv-ref-t", 0, 31], ["adv-ref-t", 1, 31]], answer
    assert all(REASON in p[3] for p in answer["partitions"])


def test_refused_scram_credentials_change_answers_every_user(clerk):
    answer = raw(clerk, "scram", "adv-old", "adv-new")["results"]
    assert [r[:2] for r in answer] == [["adv-old", 31], ["adv-new", 31]] and all(REASON in r[2] for r in answer)
