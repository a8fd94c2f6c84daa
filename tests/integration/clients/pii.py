"""A librdkafka (confluent-kafka) client that writes and reads JSON records carrying personal data.

Usage:
  pii.py produce BOOTSTRAP TOPIC N [--compression C] [--transactional-id T] [--sasl MECH:USER:PASS]
      N records {"order": i, "card": <Luhn-valid>, "ssn": ..., "email": ..., "ref": <Luhn-failing 16 digits>}
      with idempotence on and timestamps 1_700_000_000_000 + i ms; prints {"produced": N, "errors": [...]}
  pii.py consume BOOTSTRAP TOPIC N [--sasl MECH:USER:PASS]
      prints {"records": [{"offset", "timestamp", "value"}...], "errors": [...]}
"""

import argparse
import json
import os
import time

from confluent_kafka import Consumer, Producer

CARD = "4111 1111 1111 1111"  # Luhn-valid test card
NOT_A_CARD = "4111111111111112"  # same length, fails Luhn: an order reference
SSN = "123-45-6789"
EMAIL = "jane.doe@example.com"
BASE_TS = 1_700_000_000_000

p = argparse.ArgumentParser()
p.add_argument("mode")
p.add_argument("bootstrap")
p.add_argument("topic")
p.add_argument("n", type=int)
p.add_argument("--compression", default="none")
p.add_argument("--transactional-id")
p.add_argument("--sasl")
args = p.parse_args()
common = {"bootstrap.servers": args.bootstrap}
if args.sasl:
    mech, user, password = args.sasl.split(":", 2)
    common.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mech,
                   "sasl.username": user, "sasl.password": password})

if args.mode == "produce":
    conf = {**common, "enable.idempotence": True, "compression.type": args.compression, "linger.ms": 20,
            "message.timeout.ms": 20000}
    if args.transactional_id:
        conf["transactional.id"] = args.transactional_id
    producer = Producer(conf)
    errors = []
    if args.transactional_id:
        producer.init_transactions(20)
        producer.begin_transaction()
    for i in range(args.n):
        value = {"order": i, "card": CARD, "ssn": SSN, "email": EMAIL, "ref": NOT_A_CARD, "note": f"order {i}"}
        producer.produce(args.topic, json.dumps(value).encode(), key=f"k{i}".encode(), timestamp=BASE_TS + i,
                         headers=[("source", b"pii-test")],
                         on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
    if args.transactional_id:
        producer.commit_transaction(20)
    remaining = producer.flush(20)
    print(json.dumps({"produced": args.n - remaining - len(errors), "errors": errors}))
else:
    consumer = Consumer({**common, "group.id": f"mask-{os.getpid()}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.subscribe([args.topic])
    records, errors = [], []
    deadline = time.monotonic() + 30
    while len(records) < args.n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            errors.append(str(msg.error()))
            continue
        records.append({"offset": msg.offset(), "timestamp": msg.timestamp()[1],
                        "key": msg.key().decode() if msg.key() is not None else None,
                        "headers": [[k, v.decode()] for k, v in (msg.headers() or [])],
                        "value": json.loads(msg.value())})
    consumer.close()
    print(json.dumps({"records": records, "errors": errors}))
