"""librdkafka (confluent-kafka) load for the benchmark, run as a child process inside an arm's cgroup.

    python -m appliance.bench.clients latency BOOTSTRAP TOPIC --rate R --seconds S --size B [--sasl-file F]
    python -m appliance.bench.clients connect BOOTSTRAP --count N [--sasl-file F]
    python -m appliance.bench.clients create-topics BOOTSTRAP TOPIC... --sasl-file F
    python -m appliance.bench.clients sample BOOTSTRAP TOPIC --count N --sasl-file F

Each prints one JSON object on its last stdout line. The direct arm passes
`--sasl-file`, a JSON file (mode 0600) with mechanism, username and password,
so the password never appears on a command line; the proxied arm passes
nothing and speaks plaintext, as an enrolled workload does.

The process is started in its cgroup before it connects, so the kernel sees
every connection it makes as the arm's: exempt (direct) or enrolled (steered
to the appliance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _common(bootstrap: str, sasl_file: str | None) -> dict:
    conf = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "log_level": 3}
    if sasl_file:
        with open(sasl_file) as f:
            creds = json.load(f)
        conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": creds["mechanism"],
                     "sasl.username": creds["username"], "sasl.password": creds["password"]})
    return conf


def latency(args) -> dict:
    """Produce at a fixed rate; each record's latency is librdkafka's own, from produce() to its acknowledgement."""
    from confluent_kafka import Producer

    producer = Producer({
        **_common(args.bootstrap, args.sasl_file),
        "acks": "all", "enable.idempotence": True, "linger.ms": 0, "client.id": "bench-latency",
    })
    latencies_us: list[float] = []
    errors: list[str] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            latencies_us.append(msg.latency() * 1e6)

    value = b"x" * args.size
    # Warm-up: the connection, SASL (direct) or steering and the appliance's upstream SASL (proxied),
    # InitProducerId and the first metadata are set-up, not publish latency.
    producer.produce(args.topic, value=value, on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
    if producer.flush(30) != 0 or errors:
        return {"error": f"warm-up record not delivered: {errors or 'timeout'}"}
    count = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    start = time.perf_counter()
    for i in range(count):
        due = start + i * interval
        while (wait := due - time.perf_counter()) > 0:
            producer.poll(wait)
        producer.produce(args.topic, value=value, on_delivery=delivered)
        producer.poll(0)
    sent_s = time.perf_counter() - start
    left = producer.flush(30)
    return {"sent": count, "delivered": len(latencies_us), "undelivered": left, "errors": errors[:5],
            "error_count": len(errors), "achieved_rate": count / sent_s if sent_s else None,
            "latencies_us": [round(v, 1) for v in latencies_us]}


def connect(args) -> dict:
    """N fresh clients, one after the other: time from creating the client to its first metadata answer."""
    from confluent_kafka import Producer

    conf = {**_common(args.bootstrap, args.sasl_file), "client.id": "bench-connect"}
    times_ms: list[float] = []
    for _ in range(args.count):
        started = time.perf_counter()
        client = Producer(conf)
        metadata = client.list_topics(timeout=10)
        times_ms.append((time.perf_counter() - started) * 1000)
        if not metadata.brokers:
            return {"error": "metadata answer without brokers"}
        del client
    return {"connect_ms": [round(v, 3) for v in times_ms]}


def create_topics(args) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_common(args.bootstrap, args.sasl_file))
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in args.topics],
                                  operation_timeout=30)
    errors = []
    for topic, future in futures.items():
        try:
            future.result(60)
        except Exception as e:  # noqa: BLE001 - reported, not raised: the harness decides
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                errors.append(f"{topic}: {e}")
    return {"created": len(args.topics) - len(errors), "errors": errors}


def sample(args) -> dict:
    """Read the first records of partition 0 as the broker stored them (to see whether masking happened)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**_common(args.bootstrap, args.sasl_file), "group.id": "bench-sample",
                         "enable.auto.commit": False, "client.id": "bench-sample"})
    consumer.assign([TopicPartition(args.topic, 0, 0)])
    values: list[str] = []
    deadline = time.monotonic() + 20
    while len(values) < args.count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        values.append(msg.value().decode(errors="replace"))
    consumer.close()
    return {"values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.bench.clients")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("latency")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--size", type=int, required=True)
    p = sub.add_parser("connect")
    p.add_argument("bootstrap")
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("create-topics")
    p.add_argument("bootstrap")
    p.add_argument("topics", nargs="+")
    p = sub.add_parser("sample")
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("--count", type=int, default=5)
    for p in sub.choices.values():
        p.add_argument("--sasl-file")
    args = parser.parse_args(argv)
    result = {"latency": latency, "connect": connect, "create-topics": create_topics, "sample": sample}[args.command](args)
    print(json.dumps(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
