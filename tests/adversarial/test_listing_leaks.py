"""E: no topic or group names leak to identities with no rights, and what Kafka allows still works.

Raw kio frames for the "all" spellings (Metadata v0 empty list,
DescribeTopicPartitions empty list, OffsetFetch null topics), a KIP-848
regex subscription, ListGroups, authorized operations, and the Java
`kafka-topics --describe` that needs DescribeCluster.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.adversarial import policies
from tests.integration.conftest import BROKER4, PY, java_argv

RAW = str(Path(__file__).with_name("raw_client.py"))
SUFFIX = secrets.token_hex(3)
OK, NO = f"adv-leak-ok-{SUFFIX}", f"adv-leak-no-{SUFFIX}"
RULES = f"""
  - name: adv-peeker-topics
    identities: [adv-peeker]
    operations: [describe, consume]
    topics: ["prefix:adv-leak-ok-"]
  - name: adv-peeker-groups
    identities: [adv-peeker]
    operations: [group, describe]
    consumer_groups: ["prefix:adv-own-"]
"""
# describe (bit 8) and describe-configs (bit 10) from describe; read (bit 3) from consume
PEEKER_TOPIC_OPS = (1 << 3) | (1 << 8) | (1 << 10)


@pytest.fixture(scope="module")
def leak_policy(appliance, config_path, direct, sasl_args):
    for topic in (OK, NO):
        assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []
    policies.apply(config_path, RULES)
    yield
    policies.restore(config_path)


@pytest.fixture
def peeker(leak_policy, enroll):
    return enroll("adv-peeker")


def raw(cg, *args: str) -> dict:
    return json.loads(cg.run([PY, RAW, *args[:1], "127.0.0.1", "39092", *args[1:]]).stdout.strip().splitlines()[-1])


def only_allowed(names) -> list:
    return [n for n in names if not n.startswith("adv-leak-ok-")]


def test_metadata_v0_with_an_empty_list_answers_only_describable_topics(peeker):
    seen = raw(peeker, "metadata-v0")["topics"]
    assert OK in seen and only_allowed(seen) == [], seen


def test_metadata_v1_with_a_null_list_answers_only_describable_topics(peeker):
    seen = raw(peeker, "metadata-v1-all")["topics"]
    assert OK in seen and only_allowed(seen) == [], seen


def test_describe_topic_partitions_with_an_empty_list_answers_only_describable_topics(peeker):
    answer = raw(peeker, "dtp-all")
    assert OK in answer["topics"] and only_allowed(answer["topics"]) == [], answer
    assert answer["ops"][OK] == PEEKER_TOPIC_OPS


def test_authorized_operations_are_the_workloads_not_the_super_users(peeker):
    answer = raw(peeker, "metadata-ops", OK)
    assert answer[OK] == {"error": 0, "ops": PEEKER_TOPIC_OPS}


def test_a_kip848_regex_subscription_is_assigned_only_describable_topics(peeker):
    answer = raw(peeker, "heartbeat-regex", f"adv-own-{SUFFIX}", "adv-leak-.*")
    assert answer["errors"] == [], answer
    names = answer["describable_ids"]
    assert answer["assigned"], f"no assignment arrived: {answer}"
    assert all(i in names for i in answer["assigned"]), answer
    assigned = {names[i] for i in answer["assigned"]}
    # Earlier runs' adv-leak-ok-* topics may be assigned too (the broker keeps its topics); never a -no- one.
    assert OK in assigned and only_allowed(assigned) == [], assigned


# The broker's topic ids, read directly as the appliance's super user.
_TOPIC_IDS = """
import json, sys, uuid
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient
mech, user, password = sys.argv[2].split(":", 2)
admin = AdminClient({"bootstrap.servers": sys.argv[1], "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mech, "sasl.username": user, "sasl.password": password})
ids = {}
for name, future in admin.describe_topics(TopicCollection(sys.argv[3:])).items():
    tid = future.result(timeout=20).topic_id
    ids[name] = str(uuid.UUID(int=((tid.get_most_significant_bits() % 2**64) << 64)
                               | (tid.get_least_significant_bits() % 2**64)))
print(json.dumps(ids))
"""


def test_metadata_by_topic_id_names_only_describable_topics(peeker, direct, sasl_args):
    # A workload that learns the id of a topic it may not describe (ids are not secret in Kafka) asks for
    # it by id, beside an allowed one and one that does not exist; first before the proxy has seen the ids
    # named by any answer, then after.
    ids = json.loads(direct.run([PY, "-c", _TOPIC_IDS, BROKER4, sasl_args[1], OK, NO]).stdout.strip().splitlines()[-1])
    stranger = "00000000-0000-4000-8000-00000000beef"
    for attempt in ("unseen", "seen"):
        answer = raw(peeker, "metadata-by-id", ids[OK], ids[NO], stranger)
        assert answer == {ids[OK]: [OK, 0], ids[NO]: [None, 29], stranger: [None, 100]}, (attempt, answer)
        raw(peeker, "metadata-v1-all")  # names every describable topic: the proxy has now seen OK's id


def test_list_groups_answers_only_groups_the_workload_may_describe(peeker, enroll):
    raw(peeker, "heartbeat-regex", f"adv-own-lg-{SUFFIX}", "adv-leak-ok-.*")  # a group of its own
    other = enroll("orders")  # allowed everything: makes a group the peeker may not describe
    raw(other, "offset-commit", f"adv-other-{SUFFIX}", OK)
    answer = raw(peeker, "list-groups")
    assert answer["error"] == 0 and f"adv-own-lg-{SUFFIX}" in answer["groups"], answer
    assert [g for g in answer["groups"] if not g.startswith("adv-own-")] == [], answer


def test_offset_fetch_of_all_topics_leaves_out_topics_it_may_not_consume(peeker, enroll):
    group = f"adv-own-of-{SUFFIX}"
    other = enroll("orders")
    assert raw(other, "offset-commit", group, NO) == {NO: 0}
    assert raw(other, "offset-commit", group, OK) == {OK: 0}
    answer = raw(peeker, "offset-fetch-all", group)
    assert answer == {"error": 0, "topics": [OK]}, answer


def test_kafka_topics_describe_works_for_a_topic_it_may_describe(peeker, broker):
    out = peeker.run(java_argv(broker, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BROKER4,
                               "--describe", "--topic", OK), timeout=90)
    assert f"Topic: {OK}" in out.stdout, out.stdout + out.stderr
