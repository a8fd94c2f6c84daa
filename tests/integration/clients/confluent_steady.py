"""One librdkafka producer and consumer (confluent-kafka) working steadily for a while; print a JSON summary.

Usage: confluent_steady.py BOOTSTRAP TOPIC GROUP --seconds S [--every E]

A record is produced every E seconds for S seconds and read back by the
consumer as it goes. The summary counts what was delivered and consumed, the
errors of each (`errors`: deliveries and polls; `client_errors`: the
clients' own, a lost connection among them), and librdkafka's own count of
connects and disconnects per broker connection (from its statistics), which
is how a test knows no connection was cut and re-opened.
"""

import argparse
import json
import os
import time

from confluent_kafka import Consumer, Producer

p = argparse.ArgumentParser()
p.add_argument("bootstrap")
p.add_argument("topic")
p.add_argument("group")
p.add_argument("--seconds", type=float, required=True)
p.add_argument("--every", type=float, default=0.5)
args = p.parse_args()

summary = {"pid": os.getpid(), "produced": 0, "consumed": 0, "sent": 0, "errors": [], "client_errors": [],
           "connections": {}}
values: set[str] = set()


def stats_of(role: str):
    def record(text: str) -> None:
        for name, broker in json.loads(text).get("brokers", {}).items():
            if broker.get("nodeid", -1) == -1 and not broker.get("connects"):
                continue  # a broker entry never connected (none here, but be precise)
            summary["connections"][f"{role} {name}"] = {"connects": broker["connects"],
                                                        "disconnects": broker["disconnects"],
                                                        "state": broker["state"]}
    return record


def client_error(role: str):
    return lambda e: summary["client_errors"].append(f"{role}: {e}")


common = {"bootstrap.servers": args.bootstrap, "socket.timeout.ms": 10000, "statistics.interval.ms": 1000,
          "reconnect.backoff.ms": 100}
producer = Producer({**common, "client.id": "steady-producer", "acks": "all", "linger.ms": 5,
                     "error_cb": client_error("producer"), "stats_cb": stats_of("producer")})
consumer = Consumer({**common, "client.id": "steady-consumer", "group.id": args.group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": True,
                     "error_cb": client_error("consumer"), "stats_cb": stats_of("consumer")})
consumer.subscribe([args.topic])


def delivered(err, msg):
    if err is not None:
        summary["errors"].append(f"delivery: {err}")
    else:
        summary["produced"] += 1


def poll_consumer(timeout: float) -> None:
    msg = consumer.poll(timeout)
    if msg is None:
        return
    if msg.error():
        summary["errors"].append(f"poll: {msg.error()}")
        return
    values.add(msg.value().decode())


started = time.monotonic()
next_at = started
while time.monotonic() - started < args.seconds:
    if time.monotonic() >= next_at:
        producer.produce(args.topic, value=f"steady-{summary['sent']}".encode(), callback=delivered)
        summary["sent"] += 1
        next_at += args.every
    producer.poll(0)
    poll_consumer(0.1)
producer.flush(30)
deadline = time.monotonic() + 30
while len(values) < summary["sent"] and time.monotonic() < deadline:
    poll_consumer(0.5)
time.sleep(1.5)  # one more statistics interval, so the counts include the end
producer.poll(0)
consumer.poll(0)
summary["consumed"] = len(values)
summary["missing"] = sorted(set(f"steady-{i}" for i in range(summary["sent"])) - values)[:20]
consumer.close()
print(json.dumps(summary))
