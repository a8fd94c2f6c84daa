"""Every guarantee, for every client family: the same checks with kcat, confluent-kafka, kafka-python,
aiokafka, franz-go, the Java 4.x consumer (classic and KIP-848 group protocols) and the Java admin client.

Each family runs unmodified in an enrolled cgroup (identity `fam-app`; `fam-revoked` for the revocation
cell) through the real `appliance serve`, under this module's rules on top of the integration policy.
The cells of the matrix:

  (a) round trip     an allowed topic: what the family produces, it consumes back
  (b) refused        a topic it may not use: produce and consume fail fast with Kafka's authorization error
  (c) masked tail    a fetch-masked topic read while tailing (consumers started and in steady state, with
                     incremental fetch sessions where the family has them, before anything is produced):
                     every value arrives masked (defect D)
      revocation     a policy reload that takes away the consume right stops a live fetch session:
                     nothing produced after it is delivered (defect D)
  (d) listing        a listing of all topics, and a pattern subscription's assignment (classic and
                     KIP-848), name only topics the identity may describe (defect E)
  (e) admin          the Java admin's calls answer within their timeout, as Kafka would answer them:
                     refusals are clear authorization errors, and what Kafka allows anyone
                     (describeCluster) is not refused (defect H)

Each fixture below runs one cell for every family at once, in threads, and the tests read its results,
so the module shares one broker and one appliance and takes under two minutes. Every client
invocation has a deadline, and a failing cell prints everything the client said.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.integration.clients.families import FAMILIES, authorization_error_in, java_admin
from tests.integration.conftest import BROKER4, CLIENTS, POLICY, PY, Cgroup, WORKLOAD_PARENT, cli, eventually
from tests.integration.conftest import java_argv as java_tool_argv

BASE = Path(__file__).resolve().parents[1] / "integration" / "policy.yaml"
IDENTITY = "fam-app"
REVOKED = "fam-revoked"  # a second identity, whose consume right the revocation cell takes away
ALLOWED_PREFIXES = ("fam-ok-", "fam-mask-", "fam-rv-")
EMAIL = "jane.doe@example.com"
RULES = [{"name": "families-app", "identities": [IDENTITY],
          "operations": ["produce", "consume", "describe", "create", "alter", "group"],
          "topics": [f"prefix:{p}" for p in ALLOWED_PREFIXES], "consumer_groups": ["prefix:fam-"]},
         {"name": "families-revocable", "identities": [REVOKED], "operations": ["consume", "describe", "group"],
          "topics": ["prefix:fam-rv-"], "consumer_groups": ["prefix:fam-"]}]
MASKING = [{"name": "families-email-on-read", "topics": ["prefix:fam-mask-"], "on": ["fetch"],
            "detectors": ["email"], "action": "redact"}]
SUFFIX = secrets.token_hex(3)
TOPICS = {
    **{f"rt-{name}": f"fam-ok-{name}-{SUFFIX}" for name in FAMILIES},
    "masked": f"fam-mask-tail-{SUFFIX}",
    "denied": f"fam-no-{SUFFIX}",
    "revoked": f"fam-rv-{SUFFIX}",
}
# Much less than the clients' own timeouts (20 s): a refusal must come back, not be waited out.
FAST = 10.0


def apply_policy(appliance, rules: list[dict]) -> None:
    """The integration policy plus `rules` and this module's masking, in force once the appliance says so."""
    doc = yaml.safe_load(BASE.read_text())
    doc["rules"] = [*doc["rules"], *rules]
    doc["masking"] = [*(doc.get("masking") or []), *MASKING]
    tmp = POLICY.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(POLICY)
    eventually(lambda: (appliance.status() or {}).get("policy", {}).get("rules") == len(doc["rules"]),
               message="the client-family policy reloaded")


@pytest.fixture(scope="module")
def policy(appliance):
    """This module's rules on top of the integration policy (policy.yaml itself belongs to the policy tests)."""
    apply_policy(appliance, RULES)
    yield
    shutil.copy(BASE, POLICY)


@pytest.fixture(scope="module")
def enrolled(appliance, config_path, policy):
    """Enrol a cgroup per identity for the whole module."""
    from appliance.identity import cgroups

    made: list[Cgroup] = []

    def enrol(identity: str) -> Cgroup:
        cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{identity}-{SUFFIX}"))
        cli(config_path, "enroll", cg.cgroup.path, "--identity", identity)
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in appliance.status()["workloads"]),
                   message=f"{identity} enrolled")
        made.append(cg)
        return cg

    yield enrol
    for cg in made:
        cli(config_path, "unenroll", cg.cgroup.path, check=False)
        cg.cleanup()


@pytest.fixture(scope="module")
def workload(enrolled):
    return enrolled(IDENTITY)


@pytest.fixture(scope="module")
def topics(direct, sasl_args):
    """Every topic this module uses, made at once straight at the broker with the appliance's credentials."""
    direct.run([PY, str(CLIENTS / "create_topics.py"), BROKER4, sasl_args[1], *TOPICS.values()], timeout=60)
    return TOPICS


def expect(condition, message) -> None:
    """An assertion whose message pytest shows whole: a failing cell must show what the client said."""
    if not condition:
        pytest.fail(str(message))


def parallel(jobs: dict, workers: int = 4) -> dict:
    with ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


# --- (a) round trip ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def round_trips(workload, topics):
    def trip(name):
        fam = FAMILIES[name]
        topic = topics[f"rt-{name}"]
        consumer = fam.consume(workload, BROKER4, topic, f"fam-rt-{name}-{SUFFIX}", n=5)
        ready = consumer.wait_ready(40)
        produced = fam.produce(workload, BROKER4, topic, n=5, fmt=f"{name}-rt-{{i}}").finish()
        return ready, produced, consumer.finish()

    return parallel({name: (lambda name=name: trip(name)) for name in FAMILIES})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_round_trip_on_an_allowed_topic(family, round_trips):
    ready, produced, consumed = round_trips[family]
    expect(produced.summary["acked"] == 5 and produced.summary["failed"] == 0, produced)
    expect(ready, f"the consumer never became ready{consumed}")
    expect(sorted(consumed.summary["values"]) == [f"{family}-rt-{i}" for i in range(5)], consumed)
    expect(consumed.summary["errors"] == [], consumed)


# --- (b) refused topic ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def refusals(workload, topics):
    jobs = {}
    for name, fam in FAMILIES.items():
        jobs[(name, "produce")] = (lambda fam=fam: fam.produce(workload, BROKER4, topics["denied"], n=3,
                                                               fmt="never-{i}").finish())
        jobs[(name, "consume")] = (lambda fam=fam, name=name: fam.consume(
            workload, BROKER4, topics["denied"], f"fam-deny-{name}-{SUFFIX}", n=1, timeout=20).finish())
    return parallel(jobs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_b_produce_to_a_refused_topic_fails_fast_with_an_authorization_error(family, refusals):
    result = refusals[(family, "produce")]
    expect(result.summary["acked"] == 0, result)
    expect(authorization_error_in(FAMILIES[family], result.summary["errors"]), result)
    expect(result.elapsed < FAST, f"the refusal took {result.elapsed:.1f}s{result}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_b_consume_from_a_refused_topic_fails_fast_with_an_authorization_error(family, refusals):
    result = refusals[(family, "consume")]
    expect(result.summary["values"] == [], result)
    expect(authorization_error_in(FAMILIES[family], result.summary["errors"]), result)
    expect(result.elapsed < FAST + 5, f"the refusal took {result.elapsed:.1f}s{result}")


# --- (c) fetch-side masking while tailing (defect D) ------------------------------------------------

MASKED_N = 10


@pytest.fixture(scope="module")
def masked_tail(workload, topics):
    """All families tail the masked topic at once; only when every one of them is in steady state
    are the records produced."""
    consumers = {name: fam.consume(workload, BROKER4, topics["masked"], f"fam-mt-{name}-{SUFFIX}", n=MASKED_N,
                                   timeout=60)
                 for name, fam in FAMILIES.items()}
    ready = {name: c.wait_ready(45) for name, c in consumers.items()}
    produced = FAMILIES["confluent-kafka"].produce(workload, BROKER4, topics["masked"], n=MASKED_N,
                                                   fmt=f"tail-{{i}} mail {EMAIL} now").finish()
    expect(produced.summary["acked"] == MASKED_N, produced)
    return {name: (ready[name], c.finish()) for name, c in consumers.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_c_a_tailing_consumer_reads_fetch_masked_values_masked(family, masked_tail):
    ready, consumed = masked_tail[family]
    expect(ready, f"the consumer never became ready, so the records were not read while tailing{consumed}")
    values = consumed.summary["values"]
    expect(len(values) == MASKED_N, consumed)
    leaked = [v for v in values if EMAIL in v]
    expect(leaked == [], f"{len(leaked)} of {len(values)} values read in the clear{consumed}")
    expect(all(re.fullmatch(r"tail-\d+ mail \[REDACTED\] now", v) for v in values), consumed)


# --- (c') a revocation reaches a live fetch session (defect D) --------------------------------------

@pytest.fixture(scope="module")
def revocation(appliance, enrolled, workload, topics):
    """Every family tails a topic as `fam-revoked`; five records arrive; the policy then takes away that
    identity's rule; five more are produced. None of those may reach a consumer."""
    reader = enrolled(REVOKED)
    consumers = {name: fam.consume(reader, BROKER4, topics["revoked"], f"fam-rv-{name}-{SUFFIX}", n=10, timeout=35)
                 for name, fam in FAMILIES.items()}
    ready = {name: c.wait_ready(45) for name, c in consumers.items()}
    producer = FAMILIES["confluent-kafka"]
    before = producer.produce(workload, BROKER4, topics["revoked"], n=5, fmt="before-{i}").finish()
    expect(before.summary["acked"] == 5, before)
    time.sleep(3)  # consumers in steady state take a fetch or two to read them
    apply_policy(appliance, [r for r in RULES if REVOKED not in r["identities"]])
    after = producer.produce(workload, BROKER4, topics["revoked"], n=5, fmt="after-{i}").finish()
    expect(after.summary["acked"] == 5, after)
    results = {name: (ready[name], c.finish()) for name, c in consumers.items()}
    apply_policy(appliance, RULES)
    return results


@pytest.mark.parametrize("family", list(FAMILIES))
def test_c_a_revoked_consume_right_stops_a_live_fetch_session(family, revocation):
    ready, consumed = revocation[family]
    values = consumed.summary["values"]
    expect(ready and sorted(v for v in values if v.startswith("before-")) == [f"before-{i}" for i in range(5)],
           f"the consumer was not tailing when the right was revoked, so the cell proves nothing{consumed}")
    delivered = [v for v in values if v.startswith("after-")]
    expect(delivered == [], f"{len(delivered)} records produced after the revocation were delivered{consumed}")


# --- (d) listing (defect E) -------------------------------------------------------------------------

LISTERS = ["kcat", "confluent-kafka", "kafka-python", "aiokafka", "franz-go", "java-consumer"]


@pytest.fixture(scope="module")
def listings(workload, topics):
    families = {**FAMILIES, "java-consumer": FAMILIES["java-classic"]}
    return parallel({name: (lambda fam=families[name]: fam.metadata(workload, BROKER4).finish())
                     for name in LISTERS})


@pytest.mark.parametrize("family", LISTERS)
def test_d_listing_all_topics_names_only_describable_topics(family, listings, topics):
    result = listings[family]
    seen = result.summary["topics"]
    expect(topics["rt-kcat"] in seen, f"an allowed topic is missing from the listing{result}")
    hidden = [t for t in seen if not t.startswith(ALLOWED_PREFIXES)]
    expect(hidden == [], f"the listing names topics {IDENTITY} may not describe: {hidden}{result}")


@pytest.fixture(scope="module")
def pattern_subscriptions(workload, topics):
    """A pattern that matches this module's allowed topics and its refused one. The classic consumer
    resolves it from (filtered) metadata; a KIP-848 consumer sends it to the group coordinator, which
    resolves it against every topic the broker has."""
    from tests.integration.clients.build import java_argv
    from tests.integration.clients.families import Client, last_json

    pattern = f"re:fam-.*-{SUFFIX}"
    return parallel({protocol: (lambda protocol=protocol: Client(
        workload, java_argv("consume", BROKER4, pattern, f"fam-re-{protocol}-{SUFFIX}", "0", protocol, "30000"),
        timeout=30, parse=last_json).finish()) for protocol in ("classic", "consumer")})


# A Java KIP-848 consumer with a pattern learns its assigned topics' names with Metadata by topic id.
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_d_a_pattern_subscription_is_assigned_only_describable_topics(protocol, pattern_subscriptions, topics):
    result = pattern_subscriptions[protocol]
    assigned = result.summary.get("assigned_topics", [])
    expect(topics["rt-kcat"] in assigned, f"the pattern's allowed topics were not assigned{result}")
    hidden = [t for t in assigned if not t.startswith(ALLOWED_PREFIXES)]
    expect(hidden == [], f"the group assigned topics {IDENTITY} may not describe: {hidden}{result}")


# --- (e) the Java admin client (defect H) -----------------------------------------------------------

ADMIN_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def admin(workload, topics):
    result = java_admin(workload, BROKER4, timeout=ADMIN_TIMEOUT, allowed=topics["rt-java-classic"],
                        denied=topics["denied"], new_topic=f"fam-ok-admin-{SUFFIX}",
                        new_denied=f"fam-no-admin-{SUFFIX}", group=f"fam-rt-java-classic-{SUFFIX}",
                        denied_group=f"other-{SUFFIX}").finish()
    expect("calls" in result.summary, result)
    return result


@pytest.fixture(scope="module")
def topic_command(workload, topics, broker):
    """`kafka-topics --describe` of a topic the identity may describe: the tool an operator reaches for."""
    from tests.integration.clients.families import Client

    argv = java_tool_argv(broker, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BROKER4,
                          "--describe", "--topic", topics["rt-java-classic"])
    return Client(workload, argv, timeout=30, parse=lambda r: {"errors": []}).finish()


def test_e_kafka_topics_describes_a_describable_topic(topic_command, topics):
    out = topic_command.stdout
    expect(topic_command.returncode == 0 and f"Topic: {topics['rt-java-classic']}" in out
           and "Partition: 0" in out, f"kafka-topics --describe failed{topic_command}\n--- stdout\n{out[-2000:]}")


def call(admin, name: str) -> dict:
    expect(name in admin.summary["calls"], admin)
    return admin.summary["calls"][name]


def context(admin) -> str:
    """The admin run around one call's result: the command, its exit and its log (the other calls'
    results are their own cells)."""
    return (f"\n$ {' '.join(admin.argv[-8:])}\nexit {admin.returncode} after {admin.elapsed:.1f}s"
            f"\n--- stderr (tail)\n{admin.stderr[-2000:]}")


@pytest.mark.parametrize("name", ["createTopics", "describeTopics", "listTopics", "describeConsumerGroups",
                                  "incrementalAlterConfigs"])
def test_e_admin_calls_the_identity_may_make_succeed(name, admin):
    expect(call(admin, name)["ok"], f"{name}: {call(admin, name)}{context(admin)}")


def test_e_admin_listing_names_only_describable_topics(admin, topics):
    names = call(admin, "listTopics").get("value") or []
    expect(f"fam-ok-admin-{SUFFIX}" in names and topics["rt-java-classic"] in names, admin)
    hidden = [t for t in names if not t.startswith(ALLOWED_PREFIXES)]
    expect(hidden == [], f"listTopics names topics {IDENTITY} may not describe: {hidden}{admin}")


@pytest.mark.parametrize("name, error", [
    ("createTopics.denied", "TopicAuthorizationException"),
    ("describeTopics.denied", "TopicAuthorizationException"),
    ("incrementalAlterConfigs.denied", "TopicAuthorizationException"),
    ("describeConsumerGroups.denied", "GroupAuthorizationException"),
    ("createAcls", "ClusterAuthorizationException"),
    ("alterClientQuotas", "ClusterAuthorizationException"),
])
def test_e_admin_refusals_are_clear_authorization_errors_within_the_timeout(name, error, admin):
    result = call(admin, name)
    expect(not result["ok"] and result["error"].endswith("." + error), f"{name}: {result}{context(admin)}")
    expect(result["elapsed_ms"] < ADMIN_TIMEOUT * 1000, f"{name} waited out its timeout: {result}")


def test_e_describe_cluster_answers_as_kafka_would(admin):
    """Kafka answers DescribeCluster for any authenticated principal: only the authorized-operations
    field needs describe on the cluster (the embedded broker gives its cluster id to `intruder`, who
    has no ACL at all). The Java admin's describeTopics, and so `kafka-topics --describe`, depends on
    it, so refusing it breaks clients for topics the identity may describe."""
    result = call(admin, "describeCluster")
    expect(result["ok"], f"describeCluster was refused: {result}{context(admin)}")
    expect(result["elapsed_ms"] < ADMIN_TIMEOUT * 1000, result)
