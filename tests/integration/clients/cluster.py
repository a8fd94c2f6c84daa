"""A long-lived client of a multi-broker cluster, in two phases around whatever the test does in between.

Usage: cluster.py FAMILY BOOTSTRAP TOPIC PARTITIONS N      (FAMILY: confluent | kafka-python)

The producer and the consumer are made at start (the bootstrap broker may be the one killed). Phase 1
produces N records to each partition (acks=all), then prints {"phase": "produced"} and waits
for a line on stdin (the test kills a broker meanwhile). Phase 2 produces N more to each partition with
the same producer, then a consumer reads every record from the beginning. The last line is the summary:
records acknowledged and read per partition, and the errors seen. No credentials: the appliance holds them.
"""

import json
import os
import sys
import time

family, bootstrap, topic, partitions, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
summary = {"pid": os.getpid(), "family": family, "acked": {}, "read": {}, "errors": []}


def phase_done(name: str) -> None:
    print(json.dumps({"phase": name}), flush=True)


if family == "confluent":
    from confluent_kafka import Consumer, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "socket.timeout.ms": 5000,
                         "message.timeout.ms": 60000, "retry.backoff.ms": 200,
                         "topic.metadata.refresh.interval.ms": 5000,
                         "error_cb": lambda e: summary["errors"].append(f"client: {e}")})

    def produce(phase: int) -> None:
        def delivered(err, msg):
            if err is not None:
                summary["errors"].append(f"delivery: {err}")
            else:
                key = str(msg.partition())
                summary["acked"][key] = summary["acked"].get(key, 0) + 1
        for p in range(partitions):
            for i in range(n):
                producer.produce(topic, f"{family}-{phase}-{p}-{i}".encode(), partition=p, on_delivery=delivered)
        left = producer.flush(90)
        if left:
            summary["errors"].append(f"{left} records not delivered in phase {phase}")

    # Made now, while the bootstrap broker answers: a client made after it died could not bootstrap at all.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"cluster-{os.getpid()}",
                         "auto.offset.reset": "earliest", "socket.timeout.ms": 5000,
                         "error_cb": lambda e: summary["errors"].append(f"consumer: {e}")})
    consumer.subscribe([topic])

    def consume() -> None:
        want, got, deadline = 2 * n * partitions, 0, time.monotonic() + 60
        while got < want and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                summary["errors"].append(f"poll: {msg.error()}")
                continue
            if msg.value().decode().startswith(f"{family}-"):
                key = str(msg.partition())
                summary["read"][key] = summary["read"].get(key, 0) + 1
                got += 1
        consumer.close()
else:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10000, retries=20,
                             retry_backoff_ms=300, metadata_max_age_ms=5000, max_block_ms=60000)

    def produce(phase: int) -> None:
        futures = [(p, producer.send(topic, f"{family}-{phase}-{p}-{i}".encode(), partition=p))
                   for p in range(partitions) for i in range(n)]
        for p, future in futures:
            try:
                future.get(timeout=90)
                summary["acked"][str(p)] = summary["acked"].get(str(p), 0) + 1
            except Exception as e:  # noqa: BLE001 - counted and reported, the test decides
                summary["errors"].append(f"delivery: {type(e).__name__}: {e}")

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"cluster-{os.getpid()}", consumer_timeout_ms=15000,
                             request_timeout_ms=30000, metadata_max_age_ms=5000)
    consumer.subscribe([topic])

    def consume() -> None:
        want, got = 2 * n * partitions, 0
        for message in consumer:
            if message.value.decode().startswith(f"{family}-"):
                key = str(message.partition)
                summary["read"][key] = summary["read"].get(key, 0) + 1
                got += 1
            if got >= want:
                break
        consumer.close()

produce(1)
phase_done("produced")
sys.stdin.readline()
produce(2)
consume()
if family == "confluent":
    producer.flush(10)
else:
    producer.close(10)
print(json.dumps(summary), flush=True)
