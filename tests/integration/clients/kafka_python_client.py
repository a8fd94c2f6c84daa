"""An unmodified kafka-python client: produce N records and read them back; print a JSON summary.

Usage: kafka_python_client.py BOOTSTRAP TOPIC N [CAFILE]

CAFILE: speak TLS (security_protocol SSL), verifying the broker's certificate with that CA.
"""

import json
import os
import sys

from kafka import KafkaConsumer, KafkaProducer

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tls = {"security_protocol": "SSL", "ssl_cafile": sys.argv[4]} if len(sys.argv) > 4 else {}
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=15000, **tls)
for i in range(n):
    producer.send(topic, f"kp-{i}".encode()).get(timeout=15)
producer.close()
consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         consumer_timeout_ms=10000, group_id=f"{'idp-' if tls else ''}kp-{os.getpid()}", **tls)
values = [m.value.decode() for m, _ in zip(consumer, range(n))]
consumer.close()
print(json.dumps({"pid": os.getpid(), "produced": n, "consumed": len(values), "values": values}))
