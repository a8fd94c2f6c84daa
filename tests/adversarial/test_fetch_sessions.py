"""D: Fetch is decided and masked on what the response carries, with a real Java consumer's fetch sessions.

Java's ConsoleConsumer tails with KIP-227 incremental fetches (steady-state
requests list no partitions) and here joins with KIP-848
(`group.protocol=consumer`). At 753e6e2 it read every fetch-masked e-mail in
the clear, and kept reading a topic after a reload revoked `consume`.
"""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from tests.adversarial import policies
from tests.integration.conftest import BROKER4, audit, eventually, java_argv

EMAIL = "jane.doe@example.com"
CONSOLE = "org.apache.kafka.tools.consumer.ConsoleConsumer"
RULES = """
  - name: adv-reader-topics
    identities: [adv-reader]
    operations: [consume, describe]
    topics: ["prefix:adv-fs-"]
  - name: adv-reader-groups
    identities: [adv-reader]
    operations: [group, describe]
    consumer_groups: ["prefix:adv-fs-"]
"""
MASKING = """
  - name: adv-emails-on-read
    topics: ["prefix:adv-fs-mask-"]
    on: [fetch]
    detectors: [email]
    action: redact
"""
REVOKED = """
  - name: adv-reader-groups
    identities: [adv-reader]
    operations: [group, describe]
    consumer_groups: ["prefix:adv-fs-"]
  - name: adv-reader-describe
    identities: [adv-reader]
    operations: [describe]
    topics: ["prefix:adv-fs-"]
"""


@pytest.fixture
def reader_policy(appliance, config_path):
    policies.apply(config_path, RULES, MASKING)
    yield
    policies.restore(config_path)


def create(direct, sasl_args, topic: str) -> None:
    assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []


def produce(direct, sasl_args, topic: str, n: int) -> None:
    result = direct.client("pii.py", "produce", BROKER4, topic, str(n), *sasl_args, timeout=90)
    assert result["produced"] == n, result


def tail(cg, broker, topic: str, out_path):
    """A Java ConsoleConsumer (KIP-848 group) tailing `topic` from the beginning, its output in `out_path`."""
    return cg.popen(java_argv(broker, CONSOLE, "--bootstrap-server", BROKER4, "--topic", topic,
                              "--group", f"adv-fs-{secrets.token_hex(3)}", "--from-beginning",
                              "--consumer-property", "group.protocol=consumer"),
                    stdout=open(out_path, "w"), stderr=subprocess.STDOUT)


def lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


def fetching(config_path, identity: str) -> bool:
    """The consumer is in its steady state: incremental Fetches that name no partition."""
    return any(o["api_name"] == "Fetch" and not o["topics"]
               for o in audit(config_path, "operations", "--identity", identity, "--since", "5m"))


def test_java_consumer_tailing_with_fetch_sessions_reads_fetch_masked_values_masked(
        reader_policy, enroll, direct, sasl_args, broker, config_path, tmp_path):
    topic = f"adv-fs-mask-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    cg = enroll("adv-reader")
    out = tmp_path / "consumer.out"
    proc = tail(cg, broker, topic, out)
    try:
        eventually(lambda: fetching(config_path, "adv-reader"), timeout=60,
                   message="the Java consumer tailing with incremental fetches")
        produce(direct, sasl_args, topic, 40)
        got = eventually(lambda: len(lines(out)) >= 40 and lines(out), timeout=60,
                         message="40 records read by the Java consumer")
    finally:
        proc.kill()
        proc.wait()
    assert len(got) == 40
    assert not [line for line in got if EMAIL in line], "an e-mail address reached the consumer in the clear"


def test_a_reload_revoking_consume_stops_a_live_java_fetch_session(
        reader_policy, enroll, direct, sasl_args, broker, config_path, tmp_path):
    topic = f"adv-fs-revoke-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    cg = enroll("adv-reader")
    out = tmp_path / "consumer.out"
    proc = tail(cg, broker, topic, out)
    try:
        eventually(lambda: fetching(config_path, "adv-reader"), timeout=60,
                   message="the Java consumer tailing with incremental fetches")
        produce(direct, sasl_args, topic, 10)
        eventually(lambda: len(lines(out)) >= 10, timeout=60, message="10 records before the revocation")
        policies.apply(config_path, REVOKED)
        produce(direct, sasl_args, topic, 60)
        time.sleep(8)  # many fetch round trips
        after = lines(out)
        exited = proc.poll()
    finally:
        proc.kill()
        proc.wait()
    text = out.read_text()
    assert len(after) == 10, f"{len(after) - 10} records delivered after consume was revoked"
    # The consumer was told why, as Kafka would tell it, and gave up (ConsoleConsumer exits on it).
    assert "TopicAuthorizationException" in text or "Not authorized" in text, text[-2000:]
    assert exited is not None, "the consumer kept polling a revoked topic"
