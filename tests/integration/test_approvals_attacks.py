"""Attacks on approvals with the real broker: raw frames behind a held request, a mixed request, a flood.

Each either proves a defence holds or was a defect, fixed, that its docstring names.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from appliance.approvals.model import OPERATOR, ApprovalError, Approver
from appliance.approvals.store import ApprovalStore
from tests.integration.conftest import BROKER4, PY, audit, eventually
from tests.integration.fixtures import STATE
from tests.integration.test_approvals import ADMIN, approvals, events, pending_for, result_of

ROOT = str(Path(__file__).resolve().parents[2])

# Raw frames from the workload: argv bootstrap, mode, topics...
RAW = """
import datetime, json, socket, struct, sys, time
sys.path.insert(0, %r)
from kio.schema.create_topics.v7.request import CreatableTopic, CreateTopicsRequest
from kio.schema.create_topics.v7.response import CreateTopicsResponse
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.serial import entity_reader
from tests.kafka.builders import request_frame
host, port = sys.argv[1].rsplit(":", 1)
mode, topics = sys.argv[2], sys.argv[3:]

def create(names, cid):
    return request_frame(CreateTopicsRequest(topics=tuple(CreatableTopic(name=n, num_partitions=1, replication_factor=1,
        assignments=(), configs=()) for n in names), timeout=datetime.timedelta(seconds=30), validate_only=False),
        correlation_id=cid)

def meta(name, cid):
    return request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name=name),),
        allow_auto_topic_creation=True, include_topic_authorized_operations=False), correlation_id=cid)

def recv(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data

sock = socket.create_connection((host, int(port)), timeout=40)
if mode == "pipeline":  # held create, then: the same correlation id, a metadata auto-create, a huge length
    sock.sendall(create([topics[0]], 1) + create([topics[1]], 1) + meta(topics[2], 2))
    time.sleep(1.0)
    sock.sendall(struct.pack(">i", 0x7fffffff) + b"x" * 64)
    time.sleep(2.0)
    print(json.dumps({"sent": True}))
elif mode == "mixed":  # one CreateTopics naming an approve-rule topic and one nothing allows
    sock.sendall(create(topics, 1))
    size = struct.unpack(">i", recv(sock, 4))[0]
    response, _ = entity_reader(CreateTopicsResponse)(recv(sock, size), 5)
    print(json.dumps({str(t.name): int(t.error_code.value) for t in response.topics}))
elif mode == "flood":  # a fresh name on each connection, closed at once
    for name in topics:
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(create([name], 1))
        time.sleep(0.02)
        s.close()
    print(json.dumps({"sent": len(topics)}))
""" % ROOT

EXISTS = """
import json, sys
from confluent_kafka.admin import AdminClient
mech, user, password = sys.argv[2].split(":", 2)
admin = AdminClient({"bootstrap.servers": sys.argv[1], "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mech, "sasl.username": user, "sasl.password": password})
names = set(admin.list_topics(timeout=15).topics)
print(json.dumps({t: t in names for t in sys.argv[3:]}))
"""


def exists(direct, sasl_args, *topics: str) -> dict:
    result = direct.run([PY, "-c", EXISTS, BROKER4, sasl_args[1], *topics])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_nothing_pipelined_behind_a_held_create_reaches_the_broker(appliance, config_path, enroll, direct,
                                                                   sasl_args):
    """Defence: a held CreateTopics, then on the same connection a second CreateTopics reusing its correlation
    id, a Metadata asking to auto-create an apr- topic, and a frame claiming 2 GiB: none of it reaches the
    broker while held, and none after the workload leaves and the request is denied."""
    bot = enroll("approval-bot")
    held, same_id, auto = (f"apr-{secrets.token_hex(3)}" for _ in range(3))
    proc = bot.popen([PY, "-c", RAW, BROKER4, "pipeline", held, same_id, auto])
    request = eventually(lambda: pending_for(config_path, held), timeout=15, message="the request filed")
    assert result_of(proc) == {"sent": True}
    assert exists(direct, sasl_args, held, same_id, auto) == {held: False, same_id: False, auto: False}
    approvals(config_path, "deny", request["id"], "--reason", "attack test")
    time.sleep(1)
    assert exists(direct, sasl_args, held, same_id, auto) == {held: False, same_id: False, auto: False}
    assert pending_for(config_path, same_id) is None  # the parked ones were never decided, so never filed


def test_a_mixed_create_goes_on_only_for_what_was_approved(appliance, config_path, enroll, direct, sasl_args):
    """Defence: one CreateTopics naming an apr- topic (approve rule) and one nothing allows: held as a whole;
    approved, only the apr- one is created, the other is refused TOPIC_AUTHORIZATION_FAILED (29)."""
    bot = enroll("approval-bot")
    wanted, forbidden = f"apr-{secrets.token_hex(3)}", f"zz-{secrets.token_hex(3)}"
    proc = bot.popen([PY, "-c", RAW, BROKER4, "mixed", wanted, forbidden])
    request = eventually(lambda: pending_for(config_path, wanted), timeout=15, message="the request filed")
    assert forbidden not in request["needs"]
    approvals(config_path, "approve", request["id"], "--reason", "attack test")
    assert result_of(proc) == {wanted: 0, forbidden: 29}
    assert exists(direct, sasl_args, wanted, forbidden) == {wanted: True, forbidden: False}
    # scope requested: the grant does not cover another apr- name
    other = f"apr-{secrets.token_hex(3)}"
    proc = bot.popen([PY, "-c", RAW, BROKER4, "mixed", other])
    again = eventually(lambda: pending_for(config_path, other), timeout=15, message="the other name held")
    approvals(config_path, "deny", again["id"], "--reason", "attack test")
    assert result_of(proc) == {other: 29}


def test_a_workload_cannot_flood_the_operator_with_approval_requests(appliance, config_path, enroll):
    """Was a DEFECT: a workload whose only right is an approve rule opened 200 connections in a few seconds,
    each sending a CreateTopics for a fresh apr- name and closing: 200 pending approval requests, 200
    `approval-requested` events, and `appliance approvals list` full of them. Now one identity has at most
    MAX_PENDING_PER_IDENTITY (20) pending; beyond that the request is refused at once, unfiled."""
    bot = enroll("approval-bot")
    tag = secrets.token_hex(2)
    names = [f"apr-flood-{tag}-{n}" for n in range(200)]
    started = time.monotonic()
    assert result_of(bot.popen([PY, "-c", RAW, BROKER4, "flood", *names]), timeout=120) == {"sent": 200}

    def filed():
        rows = json.loads(approvals(config_path, "list", "--json", "--limit", "1000").stdout)
        return [r for r in rows if f"apr-flood-{tag}-" in r["needs"]]

    time.sleep(2)
    rows = filed()
    took = time.monotonic() - started
    requested = [e for e in events(config_path, "approval-requested") if f"apr-flood-{tag}-" in e["message"]]
    store = ApprovalStore(STATE / "approvals.db")  # leave nothing pending to bury the next run's requests
    for row in rows:
        try:
            store.vote(row["id"], Approver(OPERATOR), False, "flood test cleanup", time.time())
        except ApprovalError:
            pass
    store.close()
    assert len(rows) <= 20, (f"one workload filed {len(rows)} pending approval requests "
                             f"({len(requested)} approval-requested events) in {took:.1f} s")


def test_parallel_connections_of_one_identity_race_for_a_one_time_grant_and_one_deletion_goes_on(
        appliance, config_path, enroll, direct, sasl_args):
    """Four librdkafka admins of approval-bot delete the same apr-once- topic at once: their holds join one
    request; once it is approved (uses: 1), exactly one DeleteTopics reaches the broker, the others are refused,
    and the grant is used once."""
    topic = f"apr-once-{secrets.token_hex(3)}"
    bot = enroll("approval-bot")
    assert direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)["errors"] == []
    deleting = [bot.popen([PY, "-c", ADMIN, BROKER4, topic, "delete"]) for _ in range(4)]
    request = eventually(lambda: pending_for(config_path, topic), timeout=20, message="the deletions held")
    time.sleep(3)  # every connection's DeleteTopics is held by now (hold_s 15)
    requested = [e for e in events(config_path, "approval-requested") if topic in e["message"]]
    assert len(requested) == 1, requested  # all four joined one request
    approvals(config_path, "approve", request["id"], "--reason", "one deletion")
    results = [result_of(p) for p in deleting]
    assert sum(1 for r in results if r.get("ok")) == 1, results
    assert all(r.get("code") == "TOPIC_AUTHORIZATION_FAILED" for r in results if not r.get("ok")), results
    (grant,) = [g for g in json.loads(approvals(config_path, "grants", "--all", "--json").stdout)
                if g["request"] == request["id"]]
    assert grant["uses"] == "1/1", grant
    used = [e for e in events(config_path, "grant-used") if grant["id"] in e["message"]]
    assert len(used) == 1, used
    forwarded = [o for o in audit(config_path, "operations", "--topic", topic)
                 if o["api_name"] == "DeleteTopics" and o["outcome"] == "forwarded"]
    assert len(forwarded) == 1, forwarded
