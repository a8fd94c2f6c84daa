"""Masking with real clients and every codec: stored masked, read masked unless unmasked, batches intact."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.integration.conftest import (BROKER4, PY, Cgroup, audit, enrolled, eventually, java_argv,
                                        policy_extended)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CARD, SSN, EMAIL, NOT_A_CARD = "4111 1111 1111 1111", "123-45-6789", "jane.doe@example.com", "4111111111111112"
MASKING = """
  - name: mask-writers
    identities: [mask-writer, mask-reader, mask-auditor]
    operations: [produce, consume, describe, create, group, transactions]
    topics: ["prefix:mask-"]
    consumer_groups: ["*"]
    transactional_ids: ["prefix:mask-"]
  - name: mask-auditor-sees-clear
    identities: [mask-auditor]
    operations: [unmask]
    topics: ["prefix:mask-"]
masking:
  - name: pii-at-rest
    topics: ["prefix:mask-in-"]
    on: [produce]
    detectors: [card, ssn, email]
    action: redact
  - name: pii-on-read
    topics: ["prefix:mask-out-"]
    on: [fetch]
    detectors: [card, ssn, email]
    action: redact
"""


@pytest.fixture(scope="module")
def masking_policy(appliance):
    with policy_extended(appliance, MASKING, "the masking policy"):
        yield


@pytest.fixture(scope="module")
def identities(appliance, config_path, masking_policy):
    with enrolled(appliance, config_path, ("mask-writer", "mask-reader", "mask-auditor")) as made:
        yield made


def pii(cg: Cgroup, *args: str) -> dict:
    return cg.client("pii.py", *args, timeout=90)


def assert_clear(value: dict) -> None:
    assert (value["card"], value["ssn"], value["email"]) == (CARD, SSN, EMAIL), value


def assert_masked(value: dict) -> None:
    text = json.dumps(value)
    assert CARD not in text and CARD.replace(" ", "") not in text and SSN not in text and EMAIL not in text, value
    assert value["ref"] == NOT_A_CARD, "a Luhn-failing number of card length must be left alone"
    assert value["order"] >= 0 and value["note"].startswith("order ")


def assert_intact(records: list[dict], n: int) -> None:
    """Offsets, timestamps, keys and headers exactly as produced."""
    assert [r["offset"] for r in records] == list(range(records[0]["offset"], records[0]["offset"] + n))
    assert [r["timestamp"] for r in records] == [1_700_000_000_000 + r["value"]["order"] for r in records]
    assert [r["key"] for r in records] == [f"k{r['value']['order']}" for r in records]
    assert all(r["headers"] == [["source", "pii-test"]] for r in records)


def create(direct, sasl_args, topic):
    result = direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    assert result["errors"] == []


@pytest.mark.parametrize("codec", CODECS)
def test_produce_side_masking_stores_masked_values(codec, identities, direct, sasl_args, config_path):
    topic = f"mask-in-{codec}-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    produced = pii(identities["mask-writer"], "produce", BROKER4, topic, "20", "--compression", codec)
    assert produced == {"produced": 20, "errors": []}
    stored = pii(direct, "consume", BROKER4, topic, "20", *sasl_args)  # straight from the broker
    assert len(stored["records"]) == 20
    for r in stored["records"]:
        assert_masked(r["value"])
    assert_intact(stored["records"], 20)
    # Even the identity granted unmask reads what is stored: produce-side masking is at rest.
    read = pii(identities["mask-auditor"], "consume", BROKER4, topic, "20")
    assert all(CARD not in json.dumps(r["value"]) for r in read["records"])
    ops = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "mask-writer", "--topic", topic)
                              if o["api_name"] == "Produce" and o["masked"]], message="masked counts audited")
    assert sum(o["masked"] for o in ops) == 60  # card, ssn and e-mail in each of 20 records


@pytest.mark.parametrize("codec", CODECS)
def test_fetch_side_masking_depends_on_who_reads(codec, identities, direct, sasl_args):
    topic = f"mask-out-{codec}-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    assert pii(identities["mask-writer"], "produce", BROKER4, topic, "10", "--compression", codec)["produced"] == 10
    stored = pii(direct, "consume", BROKER4, topic, "10", *sasl_args)
    for r in stored["records"]:
        assert_clear(r["value"])  # the broker keeps the raw value
    masked = pii(identities["mask-reader"], "consume", BROKER4, topic, "10")
    assert len(masked["records"]) == 10 and masked["errors"] == []
    for r in masked["records"]:
        assert_masked(r["value"])
    assert_intact(masked["records"], 10)
    assert [r["offset"] for r in masked["records"]] == [r["offset"] for r in stored["records"]]
    clear = pii(identities["mask-auditor"], "consume", BROKER4, topic, "10")
    for r in clear["records"]:
        assert_clear(r["value"])


def test_transactional_producer_commits_through_masking(identities, direct, sasl_args):
    topic = f"mask-in-tx-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    produced = pii(identities["mask-writer"], "produce", BROKER4, topic, "10", "--compression", "lz4",
                   "--transactional-id", f"mask-tx-{secrets.token_hex(3)}")
    assert produced == {"produced": 10, "errors": []}
    stored = pii(direct, "consume", BROKER4, topic, "10", *sasl_args)  # read_committed
    assert len(stored["records"]) == 10
    for r in stored["records"]:
        assert_masked(r["value"])


@pytest.mark.parametrize("codec", CODECS)
def test_java_console_producer_is_masked_too(codec, identities, direct, sasl_args, broker):
    topic = f"mask-in-java-{codec}-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    lines = "".join(json.dumps({"order": i, "card": CARD, "ssn": SSN, "email": EMAIL, "ref": NOT_A_CARD,
                                "note": f"order {i}"}) + "\n" for i in range(5))
    identities["mask-writer"].run(java_argv(broker, "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server",
                                            BROKER4, "--topic", topic, "--compression-codec", codec,
                                            "--producer-property", "enable.idempotence=true"),
                                  input=lines, timeout=90)
    stored = pii(direct, "consume", BROKER4, topic, "5", *sasl_args)
    assert len(stored["records"]) == 5
    for r in stored["records"]:
        assert_masked(r["value"])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_a_zstd_bomb_to_a_produce_masked_topic_is_refused_without_expanding_it(identities, direct, sasl_args,
                                                                                appliance):
    """F: 256 MiB of zeros in a few KB of zstd was decompressed, scanned and forwarded; now INVALID_RECORD
    at the 16 MiB cap, and serve's peak memory does not grow by anything like the value's size."""
    topic = f"mask-in-bomb-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    before = _peak_rss_kib(appliance.proc.pid)
    raw = str(Path(__file__).resolve().parents[1] / "adversarial" / "raw_client.py")
    out = identities["mask-writer"].run([PY, raw, "zstd-bomb", "127.0.0.1", "39092", topic, "256"], timeout=120)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["wire_bytes"] < 64 * 1024, answer
    assert answer["error"] == 87 and "decompresses to more than" in answer["message"], answer  # INVALID_RECORD
    grown_mib = (_peak_rss_kib(appliance.proc.pid) - before) / 1024
    print(f"serve peak RSS grew by {grown_mib:.1f} MiB for a {answer['wire_bytes']}-byte bomb")
    assert grown_mib < 64, f"serve's peak RSS grew by {grown_mib:.0f} MiB"
