"""The demo's workload: an unmodified confluent-kafka client producing and consuming `demo-orders`.

It knows nothing of the appliance: no credentials, plain connection to the
broker's address. Every fifth round it also tries `demo-secrets`, which the
embedded policy denies to everyone. Run as `demo_workload.py HOST:PORT` (loop) or with `--once`
(one attempt, which the kernel refuses when the cgroup is not enrolled).

With `--oauth CLIENT_ID:SECRET@TOKEN_ENDPOINT --topic T --group G` it is the token-authenticated
workload instead: librdkafka fetches its own OIDC token from the identity provider
(client_credentials) and presents it over SASL/OAUTHBEARER, as a service configured for a token-secured
Kafka would; it produces to and consumes T in consumer group G.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer

def option(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


once = "--once" in sys.argv
bootstrap = sys.argv[1 if sys.argv[1] != "--once" else 2]
topic, group = option("--topic", "demo-orders"), option("--group", "demo-orders")
auth = {}
if "--oauth" in sys.argv:
    client, _, endpoint = option("--oauth").partition("@")
    client_id, _, secret = client.partition(":")
    auth = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": client_id, "sasl.oauthbearer.client.secret": secret,
            "sasl.oauthbearer.token.endpoint.url": endpoint}
producer = Producer({"bootstrap.servers": bootstrap, "client.id": f"{topic}-producer",
                     "socket.timeout.ms": 5000, "message.timeout.ms": 5000, **auth})
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": f"{topic}-consumer",
                     "auto.offset.reset": "earliest", **auth})
consumer.subscribe([topic])
seen = open(sys.argv[sys.argv.index("--seen") + 1], "w") if "--seen" in sys.argv else None
archive_state = option("--archive")  # where to say how creating demo-orders-archive went, for the demo's screen


def create_archive() -> None:
    """Ask for demo-orders-archive, which the embedded policy holds for a person's approval; ask again each
    time the hold runs out unanswered (the retry joins the same pending request), until it is decided."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "demo-orders-admin"})
    while True:
        future = admin.create_topics([NewTopic("demo-orders-archive", num_partitions=1, replication_factor=1)],
                                     request_timeout=30)["demo-orders-archive"]
        try:
            future.result(40)
            state = "created, after a person approved it"
        except KafkaException as e:
            error = e.args[0]
            state = f"{error.name()}: {error.str()}"
            if "held for approval" in error.str():
                state = "waiting for approval"
        if archive_state:
            with open(archive_state, "w") as out:
                out.write(state + "\n")
        if state != "waiting for approval":
            return
        time.sleep(1)


if archive_state and not once and not auth:
    import threading

    threading.Thread(target=create_archive, daemon=True).start()
n = 0
while True:
    order = {"order": n, "amount": 10 + n % 7, "email": f"buyer{n}@example.com", "card": "4111 1111 1111 1111"}
    producer.produce(topic, json.dumps(order))
    if n % 5 == 4 and not auth:  # the policy denies demo-secrets to everyone: the proxy answers TOPIC_AUTHORIZATION_FAILED
        try:
            producer.produce("demo-secrets", b"should never arrive")
        except KafkaException as e:  # once the client knows the topic is refused, it refuses at once itself
            print(f"demo-secrets refused: {e.args[0].str()}", file=sys.stderr)
    producer.flush(5)
    message = consumer.poll(0.5)
    if seen is not None and message is not None and not message.error():
        seen.seek(0)
        seen.write(message.value().decode() + "\n")  # what the workload last read, for the demo's screen
        seen.truncate()
        seen.flush()
    n += 1
    if once:
        break
    time.sleep(1)
consumer.close()
