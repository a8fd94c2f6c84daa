"""A steady librdkafka producer that measures each record's latency (produce() to delivery report).

Usage: steady_producer.py BOOTSTRAP TOPIC RATE SECONDS
Prints {"produced": n, "errors": [...], "p50_ms": ..., "p99_ms": ..., "max_ms": ...}.
"""

import json
import sys
import time

from confluent_kafka import Producer

bootstrap, topic, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1, "client.id": "steady"})
latencies, errors = [], []


def delivered(err, msg, sent=None):
    if err is not None:
        errors.append(str(err))
    else:
        latencies.append((time.monotonic() - sent) * 1000)


started = time.monotonic()
n = 0
while time.monotonic() - started < seconds:
    due = started + n / rate
    if due > time.monotonic():
        time.sleep(due - time.monotonic())
    sent = time.monotonic()
    producer.produce(topic, value=f"steady-{n}".encode(), callback=lambda err, msg, sent=sent: delivered(err, msg, sent))
    producer.poll(0)
    n += 1
producer.flush(30)
latencies.sort()


def pct(p):
    return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 2) if latencies else None


print(json.dumps({"produced": len(latencies), "errors": errors[:5], "error_count": len(errors),
                  "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(latencies[-1], 2) if latencies else None}))
