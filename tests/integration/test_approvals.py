"""Approvals with the real broker and real clients: a held CreateTopics approved, denied, or left pending.

The integration policy (policy.yaml) makes `approval-bot`'s topic creations under apr- and its first writes to
apr-vault- topics wait for a person. The operator decides with `appliance approvals` while the client waits.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from tests.integration.clients.families import FAMILIES, java_admin
from tests.integration.conftest import BROKER4, PY, audit, cli, eventually
from tests.integration.fixtures import CONSOLE_URL

# librdkafka's AdminClient creating (or with a third argument "delete", deleting) one topic.
ADMIN = """
import json, sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
topic = sys.argv[2]
if sys.argv[3:] == ["delete"]:
    future = admin.delete_topics([topic], request_timeout=40)[topic]
else:
    future = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)], request_timeout=40)[topic]
try:
    future.result(45)
    print(json.dumps({"ok": True}))
except Exception as e:
    err = e.args[0] if e.args else e
    print(json.dumps({"ok": False, "code": getattr(err, "name", lambda: str(err))(),
                      "message": getattr(err, "str", lambda: str(err))()}))
"""
IDEMPOTENT = """
import json, sys
from confluent_kafka import Consumer, Producer
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                     "message.timeout.ms": 40000})
failed = []
for i in range(n):
    producer.produce(topic, f"record-{i}".encode(), on_delivery=lambda err, msg: err and failed.append(str(err)))
left = producer.flush(45)
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"apr-{topic}", "auto.offset.reset": "earliest"})
consumer.subscribe([topic])
values, deadline = [], __import__("time").monotonic() + 20
while len(values) < n + 1 and __import__("time").monotonic() < deadline:
    m = consumer.poll(0.5)
    if m is not None and not m.error():
        values.append(m.value().decode())
consumer.close()
print(json.dumps({"failed": failed, "left": left, "values": values}))
"""


TRANSACTIONAL = """
import json, sys, time
from confluent_kafka import Consumer, Producer
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"apr-tx-{topic}",
                     "transaction.timeout.ms": 60000, "message.timeout.ms": 40000})
producer.init_transactions(30)
producer.begin_transaction()
for i in range(n):
    producer.produce(topic, f"record-{i}".encode())
producer.commit_transaction(45)
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"apr-{topic}", "auto.offset.reset": "earliest",
                     "isolation.level": "read_committed"})
consumer.subscribe([topic])
values, deadline = [], time.monotonic() + 20
while len(values) < n + 1 and time.monotonic() < deadline:
    m = consumer.poll(0.5)
    if m is not None and not m.error():
        values.append(m.value().decode())
consumer.close()
print(json.dumps({"values": values}))
"""
# Everything the topic's one partition holds, read directly from the broker to its end.
STORED = """
import json, sys
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, sasl = sys.argv[1:4]
mechanism, user, password = sasl.split(":", 2)
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "apr-read", "enable.auto.commit": False,
                     "enable.partition.eof": True, "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
consumer.assign([TopicPartition(topic, 0, 0)])
values = []
while True:
    m = consumer.poll(15)
    if m is None:
        raise SystemExit("nothing from the broker in 15 s")
    if m.error():
        if m.error().code() == -191:  # the partition's end
            break
        raise SystemExit(str(m.error()))
    values.append(m.value().decode())
consumer.close()
print(json.dumps(values))
"""


def approvals(config_path, *args: str, check: bool = True):
    return cli(config_path, "approvals", *args, check=check)


def pending_for(config_path, topic: str) -> dict | None:
    rows = json.loads(approvals(config_path, "list", "--json").stdout)
    return next((r for r in rows if f"'{topic}'" in r["needs"]), None)


def admin_create(workload, topic: str) -> subprocess.Popen:
    return workload.popen([PY, "-c", ADMIN, BROKER4, topic])


def result_of(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert out.strip(), err
    return json.loads(out.strip().splitlines()[-1])


def events(config_path, kind: str) -> list[dict]:
    return audit(config_path, "events", "--kind", kind)


class Webhook:
    """The rule's webhook (policy.yaml): a real HTTP receiver on 127.0.0.1:39880, keeping what is posted."""

    def __init__(self) -> None:
        import http.server
        import threading

        posted = self.posted = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 39880), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_held_create_topics_goes_on_when_the_operator_approves_it_while_the_client_waits(appliance, config_path,
                                                                                          enroll):
    webhook = Webhook()
    try:
        _approved_while_waiting(config_path, enroll, webhook)
    finally:
        webhook.close()


def _approved_while_waiting(config_path, enroll, webhook) -> None:
    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(3)}"
    started = time.monotonic()
    client = admin_create(bot, topic)
    request = eventually(lambda: pending_for(config_path, topic), timeout=15, message="the request filed")
    assert request["identity"] == "approval-bot" and request["rule"] == "integration-apr-create"
    assert client.poll() is None  # the client is still waiting for its answer
    approved = approvals(config_path, "approve", request["id"], "--reason", "ticket OPS-1")
    assert "approved by operator:root" in approved.stdout
    assert result_of(client) == {"ok": True}
    assert time.monotonic() - started < 8  # answered on approval, not at the end of the hold
    metadata = json.loads(cli(config_path, "audit", "operations", "--identity", "approval-bot", "--json").stdout)
    creates = [o for o in metadata if o["api_name"] == "CreateTopics" and topic in (o["topics"] or "")]
    assert creates and creates[0]["decision"] == "allowed" and creates[0]["error_code"] == 0, creates
    (requested,) = [e for e in events(config_path, "approval-requested") if request["id"] in e["message"]]
    assert requested["identity"] == "approval-bot"
    assert [e for e in events(config_path, "approval-approved") if request["id"] in e["message"]]
    grants = json.loads(approvals(config_path, "grants", "--json").stdout)
    assert [g for g in grants if g["request"] == request["id"] and g["state"] == "active"]
    (posted,) = [p for p in webhook.posted if request["id"] in p["text"]]  # the approvers were told, once
    assert f"approval-bot asks for create on topic '{topic}'" in posted["text"]
    assert posted["text"].endswith(f"approve or deny at {CONSOLE_URL}/approvals/{request['id']}")  # the console's
    assert eventually(lambda: [e for e in events(config_path, "approval-notified") if request["id"] in e["message"]])


def test_a_denied_create_topics_is_refused_with_who_denied_it_and_why(appliance, config_path, enroll):
    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(3)}"
    client = admin_create(bot, topic)
    request = eventually(lambda: pending_for(config_path, topic), timeout=15, message="the request filed")
    approvals(config_path, "deny", request["id"], "--reason", "not during the freeze")
    result = result_of(client)
    assert result["ok"] is False and result["code"] == "TOPIC_AUTHORIZATION_FAILED", result
    assert "denied by operator:root" in result["message"] and "not during the freeze" in result["message"]
    assert [e for e in events(config_path, "approval-denied") if request["id"] in e["message"]]
    again = approvals(config_path, "approve", request["id"], "--reason", "changed my mind", check=False)
    assert again.returncode != 0 and "already denied" in again.stderr
    assert [e for e in events(config_path, "approval-refused") if request["id"] in e["message"]]
    # The workload asks again: answered at once with the same denial, and no new request for the approvers.
    started = time.monotonic()
    retry = result_of(admin_create(bot, topic))
    assert retry["code"] == "TOPIC_AUTHORIZATION_FAILED" and request["id"] in retry["message"], retry
    assert "refused without a new request" in retry["message"] and time.monotonic() - started < 6, retry
    assert len([e for e in events(config_path, "approval-requested") if topic in e["message"]]) == 1


def test_a_request_left_pending_is_answered_with_its_id_and_the_retry_after_approval_passes(appliance, config_path,
                                                                                           enroll):
    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(3)}"
    started = time.monotonic()
    result = result_of(admin_create(bot, topic))
    waited = time.monotonic() - started
    assert result["ok"] is False and result["code"] == "TOPIC_AUTHORIZATION_FAILED", result
    request = pending_for(config_path, topic)
    assert request is not None and f"held for approval as request {request['id']}" in result["message"]
    assert f"appliance approvals approve {request['id']}" in result["message"]
    assert 8 <= waited < 20, waited  # the rule's hold_s, then the answer
    approvals(config_path, "approve", request["id"], "--reason", "after the fact")
    assert result_of(admin_create(bot, topic)) == {"ok": True}  # the retry passes under the grant at once
    assert [e for e in events(config_path, "grant-used") if request["id"] in e["message"]]


def test_an_idempotent_producers_held_first_write_loses_and_duplicates_nothing(appliance, config_path, enroll,
                                                                               direct, sasl_args):
    topic = f"apr-vault-{secrets.token_hex(3)}"
    assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []
    bot = enroll("approval-bot")
    producer = bot.popen([PY, "-c", IDEMPOTENT, BROKER4, topic, "20"])
    request = eventually(lambda: pending_for(config_path, topic), timeout=15, message="the write held")
    time.sleep(1)  # the producer keeps sending meanwhile: everything after the held request waits behind it
    approvals(config_path, "approve", request["id"], "--reason", "first write to the vault")
    result = result_of(producer, timeout=90)
    assert result["failed"] == [] and result["left"] == 0, result
    requested = [e for e in events(config_path, "approval-requested") if topic in e["message"]]
    assert [json.loads(e["detail"])["api"] for e in requested] == ["Produce"]  # metadata's auto-create is not held
    assert sorted(result["values"]) == sorted(f"record-{i}" for i in range(20)), result  # each once, none lost


def vault_topic(direct, sasl_args) -> str:
    topic = f"apr-vault-{secrets.token_hex(3)}"
    assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []
    return topic


def test_a_transactional_producers_held_write_commits_each_record_once(appliance, config_path, enroll, direct,
                                                                       sasl_args):
    topic = vault_topic(direct, sasl_args)
    bot = enroll("approval-bot")
    producer = bot.popen([PY, "-c", TRANSACTIONAL, BROKER4, topic, "15"])
    request = eventually(lambda: pending_for(config_path, topic), timeout=20, message="the transaction's write held")
    approvals(config_path, "approve", request["id"], "--reason", "the vault's first transaction")
    result = result_of(producer, timeout=90)
    assert sorted(result["values"]) == sorted(f"record-{i}" for i in range(15)), result


def test_the_java_admins_held_create_topics_is_approved_while_it_waits(appliance, config_path, enroll):
    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(3)}"
    client = java_admin(bot, BROKER4, timeout=25, new_topic=topic, new_denied=f"other-{topic}", allowed=topic,
                        denied="nothing", group="apr-g", denied_group="nothing")
    request = eventually(lambda: pending_for(config_path, topic), timeout=40, message="the Java admin's request filed")
    assert request["api"] == "CreateTopics"
    approvals(config_path, "approve", request["id"], "--reason", "java admin")
    calls = client.finish().summary["calls"]
    assert calls["createTopics"]["ok"] is True, calls["createTopics"]
    assert calls["describeTopics"]["value"] == {"partitions": 1}, calls["describeTopics"]


@pytest.mark.parametrize("family", ["franz-go", "java-classic", "kafka-python", "aiokafka"])
def test_each_familys_held_first_write_goes_on_once_approved_with_each_record_once(appliance, config_path, enroll,
                                                                                  direct, sasl_args, family):
    """librdkafka's producers are above; here every other family's producer waits for the same approval."""
    topic = vault_topic(direct, sasl_args)
    bot = enroll("approval-bot")
    client = FAMILIES[family].produce(bot, BROKER4, topic, n=12, fmt=family + "-{i}", timeout=40)
    try:
        request = eventually(lambda: pending_for(config_path, topic), timeout=25, message=f"{family}'s write held")
    except AssertionError:
        raise AssertionError(client.finish()) from None
    approvals(config_path, "approve", request["id"], "--reason", family)
    result = client.finish()
    assert result.summary["acked"] == 12 and result.summary["failed"] == 0, result
    stored = json.loads(direct.run([PY, "-c", STORED, BROKER4, topic, sasl_args[1]]).stdout)
    assert sorted(stored) == sorted(f"{family}-{i}" for i in range(12)), stored  # each once, none lost


def test_a_one_time_grant_lets_the_approved_deletion_through_and_the_next_one_waits_again(appliance, config_path,
                                                                                         enroll, direct, sasl_args):
    topic = f"apr-once-{secrets.token_hex(3)}"
    bot = enroll("approval-bot")
    for attempt in ("first", "second"):
        assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []
        deleting = bot.popen([PY, "-c", ADMIN, BROKER4, topic, "delete"])
        request = eventually(lambda: pending_for(config_path, topic), timeout=20,
                             message=f"the {attempt} deletion held")
        approvals(config_path, "approve", request["id"], "--reason", f"{attempt} deletion")
        assert result_of(deleting) == {"ok": True}
        (grant,) = [g for g in json.loads(approvals(config_path, "grants", "--all", "--json").stdout)
                    if g["request"] == request["id"]]
        assert grant["uses"] == "1/1" and grant["state"] == "used up", grant
        used = [e for e in events(config_path, "grant-used") if grant["id"] in e["message"]]
        assert len(used) == 1 and used[0]["message"].endswith("(use 1 of 1)"), used
    requested = [e for e in events(config_path, "approval-requested") if topic in e["message"]]
    assert len(requested) == 2  # the second deletion was its own request: the first grant had been used
