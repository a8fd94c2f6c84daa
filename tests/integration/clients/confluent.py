"""An unmodified librdkafka client (confluent-kafka): produce and/or consume, print a JSON summary.

Usage: confluent.py BOOTSTRAP TOPIC [--produce N] [--consume N] [--sasl MECH:USER:PASS] [--acks A]
                                     [--create] [--group G] [--timeout S]
                                     [--oauth CLIENT_ID:SECRET@TOKEN_ENDPOINT] [--tls [--ca FILE]]

--oauth: OAUTHBEARER with librdkafka's own OIDC client (sasl.oauthbearer.method=oidc): it fetches
its token from the endpoint by client_credentials.
Errors of a delivery or a poll go to "errors"; the client's own (authentication, connection) to
"client_errors".
"""

import argparse
import json
import os
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

p = argparse.ArgumentParser()
p.add_argument("bootstrap")
p.add_argument("topic")
p.add_argument("--produce", type=int, default=0)
p.add_argument("--consume", type=int, default=0)
p.add_argument("--sasl")
p.add_argument("--acks", default="all")
p.add_argument("--create", action="store_true")
p.add_argument("--group", default=None)
p.add_argument("--timeout", type=float, default=20)
p.add_argument("--oauth")
p.add_argument("--tls", action="store_true", help="security.protocol=SSL, SASL_SSL with --sasl or --oauth (certificate "
                                                  "checks off unless --ca is given)")
p.add_argument("--ca", help="with --tls: the CA file to verify the broker's certificate with (ssl.ca.location)")
args = p.parse_args()

summary = {"pid": os.getpid(), "produced": 0, "consumed": 0, "values": [], "errors": [], "client_errors": []}
common = {"bootstrap.servers": args.bootstrap, "socket.timeout.ms": 5000,
          "error_cb": lambda e: summary["client_errors"].append(str(e))}
if args.sasl:
    mech, user, password = args.sasl.split(":", 2)
    common.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mech,
                   "sasl.username": user, "sasl.password": password})
if args.oauth:
    client, _, endpoint = args.oauth.partition("@")
    client_id, _, secret = client.partition(":")
    common.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
                   "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": client_id,
                   "sasl.oauthbearer.client.secret": secret, "sasl.oauthbearer.token.endpoint.url": endpoint})
if args.tls:
    common["security.protocol"] = "SASL_SSL" if args.sasl or args.oauth else "SSL"
    common.update({"ssl.ca.location": args.ca} if args.ca else {"enable.ssl.certificate.verification": False})

if args.create:
    admin = AdminClient(common)
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=1, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(15)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                summary["errors"].append(str(e))

if args.produce:
    producer = Producer({**common, "acks": args.acks, "message.timeout.ms": int(args.timeout * 1000),
                         "client.id": "itest-producer"})

    produce_started = time.monotonic()

    def delivered(err, msg):
        if err is not None:
            summary["errors"].append(str(err))
            summary.setdefault("first_error_after_s", round(time.monotonic() - produce_started, 3))
        else:
            summary["produced"] += 1

    for i in range(args.produce):
        producer.produce(args.topic, value=f"record-{i}".encode(), callback=delivered)
    producer.flush(args.timeout)
    if args.acks == "0":
        summary["produced"] = args.produce - len(producer)

if args.consume:
    consumer = Consumer({**common, "group.id": args.group or f"itest-{os.getpid()}", "auto.offset.reset": "earliest",
                         "client.id": "itest-consumer", "enable.auto.commit": True})
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout
    while summary["consumed"] < args.consume and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            summary["errors"].append(str(msg.error()))
            continue
        summary["consumed"] += 1
        summary["values"].append(msg.value().decode())
    consumer.commit(asynchronous=False) if summary["consumed"] else None
    consumer.close()

print(json.dumps(summary))
