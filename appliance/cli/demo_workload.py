"""The demo's workload: an unmodified confluent-kafka client producing and consuming `demo-orders`.

It knows nothing of the appliance: no credentials, plain connection to the
broker's address. Every fifth round it also tries `demo-secrets`, which the
embedded policy denies to everyone. Run as `demo_workload.py HOST:PORT` (loop) or with `--once`
(one attempt, which the kernel refuses when the cgroup is not enrolled).
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer

once = "--once" in sys.argv
bootstrap = sys.argv[-1]
producer = Producer({"bootstrap.servers": bootstrap, "client.id": "demo-orders-producer",
                     "socket.timeout.ms": 5000, "message.timeout.ms": 5000})
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-orders", "client.id": "demo-orders-consumer",
                     "auto.offset.reset": "earliest"})
consumer.subscribe(["demo-orders"])
n = 0
while True:
    producer.produce("demo-orders", json.dumps({"order": n, "amount": 10 + n % 7, "email": f"buyer{n}@example.com"}))
    if n % 5 == 4:  # the policy denies demo-secrets to everyone: the proxy answers TOPIC_AUTHORIZATION_FAILED
        try:
            producer.produce("demo-secrets", b"should never arrive")
        except KafkaException as e:  # once the client knows the topic is refused, it refuses at once itself
            print(f"demo-secrets refused: {e.args[0].str()}", file=sys.stderr)
    producer.flush(5)
    consumer.poll(0.5)
    n += 1
    if once:
        break
    time.sleep(1)
consumer.close()
