"""Recording at depth excerpts with real clients of every family: excerpts of what was produced and fetched,
masked by every rule covering the topic, even for a reader holding unmask; no clear card number or e-mail
address anywhere in the audit database's bytes (its WAL included).

The values never carry a whole card number or e-mail address on a client's command line (the audit keeps
command lines): the card is `4111 1111 1111 111{i}` (a Luhn-valid card only for i = 1, the others are
numbers no detector takes) and the address `jane.doe{i}@example.com`, so the PII exists only in the records.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.integration.clients.families import FAMILIES, run_parallel
from tests.integration.conftest import BROKER4, PY, STATE, cli, enrolled, eventually, policy_extended

ACCESS = """
  - name: rec-access
    identities: [rec-writer, rec-reader, rec-auditor]
    operations: [produce, consume, describe, create, group]
    topics: ["prefix:rec-"]
    consumer_groups: ["prefix:rec-"]
  - name: rec-auditor-unmasks
    identities: [rec-auditor]
    operations: [unmask]
    topics: ["prefix:rec-"]
masking:
  - name: rec-cards-at-rest
    topics: ["prefix:rec-"]
    on: [produce]
    detectors: [card]
  - name: rec-mail-on-read
    topics: ["prefix:rec-"]
    on: [fetch]
    detectors: [email]
"""
N = 5
# One {i} a format: the Java and Go clients format the value with printf and one argument.
CARDS = "card 4111 1111 1111 111{i}"
MAILS = "mail jane.doe{i}@example.com"
CARD = "4111 1111 1111 1111"
FAMILY_NAMES = ("confluent-kafka", "kcat", "java-classic", "java-kip848", "franz-go", "kafka-python")


def clear_pii() -> list[bytes]:
    return [CARD.encode(), CARD.replace(" ", "").encode()] + [f"jane.doe{i}@example.com".encode() for i in range(N)]


@pytest.fixture(scope="module")
def recording_policy(appliance):
    with policy_extended(appliance, ACCESS, "the recording test's policy") as text:
        assert yaml.safe_load(text)["recording"], "tests/integration/policy.yaml lost its recording section"
        yield


@pytest.fixture(scope="module")
def identities(appliance, config_path, recording_policy):
    with enrolled(appliance, config_path, ("rec-writer", "rec-reader", "rec-auditor")) as made:
        yield made


def create(direct, sasl_args, topic: str) -> None:
    assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []


def excerpts(topic: str, direction: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{STATE / 'audit.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [{k: v for k, v in dict(r).items() if k != "chain_hash"} for r in conn.execute(
            "SELECT x.*, s.identity FROM record_excerpts x JOIN sessions s USING (session_id) "
            "WHERE x.topic = ? AND x.direction = ? ORDER BY x.id", (topic, direction))]
    finally:
        conn.close()


def round_trip(family: str, identities: dict, reader: str, topic: str) -> dict:
    """`reader` tails `topic` in a group; rec-writer produces the card values, then the e-mail values."""
    fam = FAMILIES[family]
    consumer = fam.consume(identities[reader], BROKER4, topic, f"rec-{family}-{secrets.token_hex(3)}", n=2 * N,
                           timeout=60)
    ready = consumer.wait_ready(50)
    cards = fam.produce(identities["rec-writer"], BROKER4, topic, n=N, fmt=CARDS).finish()
    mails = fam.produce(identities["rec-writer"], BROKER4, topic, n=N, fmt=MAILS).finish()
    return {"ready": ready, "cards": cards, "mails": mails, "read": consumer.finish()}


def assert_excerpts_masked(topic: str, rows: list[dict], direction: str, identity: str) -> None:
    values = [r["value"] for r in rows if r["value_length"] is not None]
    assert values, f"no {direction} excerpts of {topic}: {rows}"
    assert {r["identity"] for r in rows} == {identity} and {r["rule"] for r in rows} == {"integration-rec-excerpts"}
    assert all(v.startswith(("card ", "mail ")) for v in values), values
    text = json.dumps(rows)
    assert CARD not in text and "jane.doe" not in text, text
    assert "card [REDACTED]" in values, values  # the one Luhn-valid card
    assert "card 4111 1111 1111 1110" in values, values  # not a card (fails Luhn): left as it was
    assert "mail [REDACTED]" in values, values  # masked for the audit whoever read it
    if direction == "fetch":
        assert all(r["offset"] is not None for r in rows if r["value_length"] is not None)


def test_every_family_produces_and_consumes_with_masked_excerpts_even_for_an_unmask_holder(identities, direct,
                                                                                            sasl_args, config_path):
    topics = {family: f"rec-{family}-{secrets.token_hex(3)}" for family in FAMILY_NAMES}
    for topic in topics.values():
        create(direct, sasl_args, topic)
    results = run_parallel({family: lambda family=family: round_trip(family, identities, "rec-auditor", topics[family])
                            for family in FAMILY_NAMES}, workers=3)
    for family, r in results.items():
        assert r["ready"], f"{family}: the consumer never became ready{r['read']}"
        for step in ("cards", "mails"):
            made = r[step].summary
            assert made.get("acked") == N and not made.get("errors"), f"{family}: {step} not produced{r[step]}"
        read = r["read"].summary.get("values", [])
        assert len(read) == 2 * N, f"{family}: the auditor did not read back what was produced{r['read']}"
        assert "card [REDACTED]" in read, read  # masked at rest: nobody reads it
        assert "mail jane.doe2@example.com" in read, read  # unmask: the auditor reads it in the clear
    for family, topic in topics.items():
        produced = eventually(lambda topic=topic: excerpts(topic, "produce") if len(excerpts(topic, "produce")) >= 2 * N
                              else None, timeout=10, message=f"{family}: produce excerpts of {topic}")
        assert_excerpts_masked(topic, produced, "produce", "rec-writer")
        fetched = eventually(lambda topic=topic: excerpts(topic, "fetch") if len(excerpts(topic, "fetch")) >= 2 * N
                             else None, timeout=10, message=f"{family}: fetch excerpts of {topic}")
        assert_excerpts_masked(topic, fetched, "fetch", "rec-auditor")
    assert_no_clear_pii()
    # The chain holds them (verify), and the session's replay shows them under their requests.
    verified = json.loads(cli(config_path, "audit", "verify", "--json", check=False).stdout)
    assert verified["ok"] and verified["rows"]["record_excerpts"] >= 4 * N * len(FAMILY_NAMES), verified
    session = fetched[0]["session_id"]
    replayed = cli(config_path, "replay", session).stdout
    assert f" excerpt {topics[family]}[0]@" in replayed and "jane.doe" not in replayed, replayed
    entries = [json.loads(line) for line in cli(config_path, "replay", session, "--json").stdout.splitlines()]
    assert any(x["value"] == "mail [REDACTED]" for e in entries for x in e.get("excerpts", [])), entries


def test_a_reader_without_unmask_gets_masked_values_and_masked_excerpts(identities, direct, sasl_args):
    topic = f"rec-reader-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    r = round_trip("confluent-kafka", identities, "rec-reader", topic)
    read = r["read"].summary.get("values", [])
    assert len(read) == 2 * N and "mail [REDACTED]" in read and not any("jane.doe" in v for v in read), r["read"]
    fetched = eventually(lambda: excerpts(topic, "fetch") if len(excerpts(topic, "fetch")) >= 2 * N else None,
                         timeout=10, message=f"fetch excerpts of {topic}")
    assert_excerpts_masked(topic, fetched, "fetch", "rec-reader")
    assert_no_clear_pii()


@pytest.mark.parametrize("kind, note", [
    ("bad-crc", "its CRC32C does not match its bytes"),
    ("varint-overflow", "its records are malformed (a varint longer than 10 bytes)"),
    ("huge-count", "its records are malformed (a length runs past the end of the batch)"),
])
def test_a_hostile_batch_to_a_recorded_topic_costs_its_excerpts_a_note_and_the_session_goes_on(
        kind, note, identities, direct, sasl_args, config_path):
    topic = f"rec-hostile-{kind}-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    raw = str(Path(__file__).resolve().parents[1] / "adversarial" / "raw_client.py")
    out = identities["rec-writer"].run([PY, raw, "hostile-batch", "127.0.0.1", "39092", topic, kind], timeout=60)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["metadata_error"] == 0, answer  # the same connection answered the next request
    rows = eventually(lambda: excerpts(topic, "produce"), message=f"the excerpt note of {topic}")
    assert rows[-1]["value_length"] is None and rows[-1]["note"].endswith(note), rows
    session = json.loads(cli(config_path, "audit", "sql", f"SELECT close_reason FROM sessions WHERE session_id = "
                             f"'{rows[-1]['session_id']}'", "--json").stdout)
    assert "internal fault" not in (session[0]["close_reason"] or ""), session


def test_only_the_identities_a_recording_rule_covers_get_excerpts(identities, config_path):
    """Every other identity of the suite is recorded at depth operations: no excerpt of theirs."""
    rows = json.loads(cli(config_path, "audit", "sql", "SELECT count(*) AS n FROM record_excerpts x JOIN sessions s "
                          "USING (session_id) WHERE s.identity NOT LIKE 'rec-%'", "--json").stdout)
    assert rows == [{"n": 0}], "an identity no recording rule covers got excerpts"


def assert_no_clear_pii() -> None:
    """No clear card number or e-mail address anywhere in the audit database's bytes, WAL included."""
    found = []
    for path in (STATE / "audit.db", STATE / "audit.db-wal"):
        if path.exists():
            data = path.read_bytes()
            found += [f"{path.name}: {secret.decode()}" for secret in clear_pii() if secret in data]
    assert not found, f"clear PII in the audit database: {found}"


def test_record_values_on_a_clients_command_line_are_masked_in_the_audit_and_the_status(identities, direct,
                                                                                       sasl_args, appliance):
    """A client may pass record values as arguments: the audit and the status keep its command line, so every
    masking rule's detectors scan it (here the card number and the e-mail address of the rules above)."""
    topic = f"rec-argv-{secrets.token_hex(3)}"
    create(direct, sasl_args, topic)
    card, mail = "4111 1111 1111 1111", "jane.argv@example.com"
    script = ("import sys, time; from confluent_kafka import Producer; p = Producer({'bootstrap.servers': sys.argv[1]});"
              " p.produce(sys.argv[2], b'x'); p.flush(20); time.sleep(3)")
    # (A flag before the card: digits run on from the topic's hex suffix would read as one hex word, which the
    # card detector leaves alone by design.)
    proc = identities["rec-writer"].popen([PY, "-c", script, BROKER4, topic, "--key", card, "--mail", mail])
    live = eventually(lambda: [s for s in (appliance.status() or {}).get("sessions", [])
                               if topic in str(s.get("command"))], timeout=15, message="the session in the status")
    proc.wait(30)
    command = live[0]["command"]
    assert card not in command and card.replace(" ", "") not in command and mail not in command, command
    conn = sqlite3.connect(f"file:{STATE / 'audit.db'}?mode=ro", uri=True)
    try:
        (stored,) = conn.execute("SELECT command FROM sessions WHERE command LIKE ?", (f"%{topic}%",)).fetchone()
    finally:
        conn.close()
    assert stored == command and topic in stored and card not in stored and mail not in stored, stored
