"""The Python client families (librdkafka by confluent-kafka, kafka-python, aiokafka), unmodified, one interface.

Usage: pyfamily.py FAMILY MODE BOOTSTRAP ... [--timeout S]      FAMILY: confluent | kafka-python | aiokafka
  produce  BOOTSTRAP TOPIC N FORMAT   acks=all; FORMAT's {i} is the record's index
                                      prints {"acked", "failed", "errors": {text: count}}
  consume  BOOTSTRAP TOPIC GROUP N    prints {"ready": true} once the group assigned it partitions and a
                                      second has passed, then {"values": [...], "errors": [...]};
                                      stops at the first authorization error
  metadata BOOTSTRAP                  the client's listing of all topics: {"topics": [...], "errors": [...]}

Every mode gives up after --timeout seconds, so no invocation can hang a test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import sys
import time


def emit(value: dict) -> None:
    print(json.dumps(value), flush=True)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ClientLog(logging.Handler):
    """Errors a client only logs: kafka-python reports a refused subscription this way and no other."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.name}: {record.getMessage()}")


CLIENT_LOG = ClientLog()


class Tail:
    """What a consumer saw, and when to say it is ready (assigned, then a second of fetching)."""

    def __init__(self, n: int, timeout: float):
        self.n, self.deadline = n, time.monotonic() + timeout
        self.values: list[str] = []
        self.errors: list[str] = []
        self.assigned_at: float | None = None
        self.said_ready = False

    def running(self) -> bool:
        final = False
        while CLIENT_LOG.texts:
            final = self.error(CLIENT_LOG.texts.pop(0)) or final
        return not final and len(self.values) < self.n and time.monotonic() < self.deadline

    def saw_assignment(self, assigned: bool) -> None:
        if assigned and self.assigned_at is None:
            self.assigned_at = time.monotonic()
        if self.assigned_at is not None and not self.said_ready and time.monotonic() - self.assigned_at > 1.0:
            self.said_ready = True
            emit({"ready": True})

    def error(self, text: str) -> bool:
        """Record an error; true when it is final (an authorization error: retrying will not help)."""
        self.errors.append(text)
        return "authoriz" in text.lower()

    def summary(self) -> dict:
        if len(self.values) < self.n and not self.errors:
            self.errors.append(f"timed out with {len(self.values)} of {self.n} records")
        return {"values": self.values, "errors": self.errors}


# --- confluent-kafka (librdkafka) ---------------------------------------------------------------

def confluent_produce(a) -> dict:
    from confluent_kafka import Producer

    errors: collections.Counter = collections.Counter()
    acked = 0

    def delivered(err, _msg):
        nonlocal acked
        if err is None:
            acked += 1
        else:
            errors[str(err)] += 1

    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": int(a.timeout * 1000)})
    for i in range(a.n):
        producer.produce(a.topic, a.format.format(i=i).encode(), callback=delivered)
    producer.flush(a.timeout)
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


def confluent_consume(a) -> dict:
    from confluent_kafka import Consumer

    tail = Tail(a.n, a.timeout)
    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 500})
    consumer.subscribe([a.topic])
    while tail.running():
        msg = consumer.poll(0.2)
        tail.saw_assignment(bool(consumer.assignment()))
        if msg is None:
            continue
        if msg.error():
            if tail.error(str(msg.error())):
                break
            continue
        tail.values.append(msg.value().decode())
    consumer.close()
    return tail.summary()


def confluent_metadata(a) -> dict:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": a.bootstrap}).list_topics(timeout=a.timeout)
        return {"topics": sorted(md.topics), "errors": [str(t.error) for t in md.topics.values() if t.error]}
    except Exception as e:  # noqa: BLE001 - the client's own words are the result
        return {"topics": [], "errors": [describe(e)]}


# --- kafka-python ------------------------------------------------------------------------------

def kafka_python_produce(a) -> dict:
    from kafka import KafkaProducer

    errors: collections.Counter = collections.Counter()
    acked = 0
    ms = int(a.timeout * 1000)
    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", max_block_ms=ms,
                             request_timeout_ms=min(ms, 10000))
    futures = []
    for i in range(a.n):
        try:
            futures.append(producer.send(a.topic, a.format.format(i=i).encode()))
        except Exception as e:  # noqa: BLE001 - send() raises when the topic's metadata is refused
            errors[describe(e)] += 1
    for f in futures:
        try:
            f.get(timeout=a.timeout)
            acked += 1
        except Exception as e:  # noqa: BLE001
            errors[describe(e)] += 1
    producer.close(timeout=2)
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


def kafka_python_consume(a) -> dict:
    from kafka import KafkaConsumer

    tail = Tail(a.n, a.timeout)
    consumer = KafkaConsumer(bootstrap_servers=a.bootstrap, group_id=a.group, auto_offset_reset="earliest",
                             fetch_max_wait_ms=500, request_timeout_ms=10000)
    # kafka-python may join the group before its metadata names the topic's partitions, assign itself
    # nothing, and not rejoin for minutes (seen here); asking for the partitions first avoids that.
    refused = False
    try:
        consumer.partitions_for_topic(a.topic)
    except Exception as e:  # noqa: BLE001 - a refused topic says so here already
        refused = tail.error(describe(e))
    consumer.subscribe([a.topic])
    while not refused and tail.running():
        try:
            for records in consumer.poll(timeout_ms=200).values():
                tail.values.extend(r.value.decode() for r in records)
        except Exception as e:  # noqa: BLE001
            if tail.error(describe(e)):
                break
        tail.saw_assignment(bool(consumer.assignment()))
    consumer.close(autocommit=False)
    return tail.summary()


def kafka_python_metadata(a) -> dict:
    from kafka import KafkaConsumer

    try:
        consumer = KafkaConsumer(bootstrap_servers=a.bootstrap, request_timeout_ms=int(a.timeout * 1000))
        topics = sorted(consumer.topics())
        consumer.close()
        return {"topics": topics, "errors": []}
    except Exception as e:  # noqa: BLE001
        return {"topics": [], "errors": [describe(e)]}


# --- aiokafka ----------------------------------------------------------------------------------

async def aiokafka_produce(a) -> dict:
    from aiokafka import AIOKafkaProducer

    errors: collections.Counter = collections.Counter()
    acked = 0
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=min(int(a.timeout * 1000), 10000))
    await producer.start()
    try:
        for i in range(a.n):
            try:
                await asyncio.wait_for(producer.send_and_wait(a.topic, a.format.format(i=i).encode()), a.timeout)
                acked += 1
            except Exception as e:  # noqa: BLE001
                errors[describe(e)] += 1
    finally:
        await producer.stop()
    return {"acked": acked, "failed": a.n - acked, "errors": dict(errors)}


async def aiokafka_consume(a) -> dict:
    from aiokafka import AIOKafkaConsumer

    tail = Tail(a.n, a.timeout)
    consumer = AIOKafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=a.group,
                                auto_offset_reset="earliest", fetch_max_wait_ms=500, request_timeout_ms=10000)
    await consumer.start()
    try:
        while tail.running():
            try:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    tail.values.extend(r.value.decode() for r in records)
            except Exception as e:  # noqa: BLE001
                if tail.error(describe(e)):
                    break
            tail.saw_assignment(bool(consumer.assignment()))
    finally:
        await consumer.stop()
    return tail.summary()


async def aiokafka_metadata(a) -> dict:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=a.bootstrap, request_timeout_ms=int(a.timeout * 1000))
    try:
        await consumer.start()
        return {"topics": sorted(await consumer.topics()), "errors": []}
    except Exception as e:  # noqa: BLE001
        return {"topics": [], "errors": [describe(e)]}
    finally:
        await consumer.stop()


FAMILIES = {
    "confluent": {"produce": confluent_produce, "consume": confluent_consume, "metadata": confluent_metadata},
    "kafka-python": {"produce": kafka_python_produce, "consume": kafka_python_consume,
                     "metadata": kafka_python_metadata},
    "aiokafka": {"produce": aiokafka_produce, "consume": aiokafka_consume, "metadata": aiokafka_metadata},
}


def main() -> None:
    # The clients' own warnings and errors go to stderr: when a cell fails, they say why.
    # PYFAMILY_DEBUG=DIR: the clients' debug logs, one file per process, for a failure stderr cannot explain.
    debug = os.environ.get("PYFAMILY_DEBUG")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        handler = logging.FileHandler(os.path.join(debug, f"{os.getpid()}-{sys.argv[1]}-{sys.argv[2]}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger().handlers[0].setLevel(logging.WARNING)
    logging.getLogger().addHandler(CLIENT_LOG)
    p = argparse.ArgumentParser()
    p.add_argument("family", choices=sorted(FAMILIES))
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, positional in (("produce", ("topic", "n", "format")), ("consume", ("topic", "group", "n")),
                             ("metadata", ())):
        s = sub.add_parser(mode)
        s.add_argument("bootstrap")
        for name in positional:
            s.add_argument(name, type=int if name == "n" else str)
        s.add_argument("--timeout", type=float, default=20)
    a = p.parse_args()
    run = FAMILIES[a.family][a.mode]
    try:
        result = asyncio.run(asyncio.wait_for(run(a), a.timeout + 5)) if asyncio.iscoroutinefunction(run) else run(a)
    except Exception as e:  # noqa: BLE001 - a client that raises has still answered: say what it said
        logging.exception("%s %s raised", a.family, a.mode)
        result = {"acked": 0, "failed": getattr(a, "n", 0), "values": [], "topics": [], "errors": [describe(e)]}
    emit(result)


if __name__ == "__main__":
    main()
