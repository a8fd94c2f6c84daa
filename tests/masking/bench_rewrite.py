"""Throughput of rewrite_records on 1 KiB JSON records (not collected by pytest).

    .venv/bin/python -m tests.masking.bench_rewrite

For each rule shape and codec: records/s through rewrite_records for batches
of 16 records (a producer's default 16 KiB batch) where every record holds one
card number, and where none does (the batch pre-check's case). Best of 5 runs.
"""

from __future__ import annotations

import json
import time

from kafka.record.default_records import DefaultRecordBatchBuilder

from appliance.masking import rewrite_records
from appliance.policy.parser import parse_policy

RULES = {
    "detectors: [card]": "detectors: [card]",
    "all five detectors": "detectors: [card, ssn, email, iban, token]",
    "fields: [$.card.number]": "fields: ['$.card.number']",
}
CODECS = {"none": 0, "lz4": 3, "zstd": 4}


def record(i: int, card: bool) -> bytes:
    doc = {"order_id": f"ord-{i:08d}", "ts": 1_700_000_000_000 + i,
           "customer": {"name": "Alice Example", "id": 1000 + i, "tier": "gold"},
           "card": {"number": "4111 1111 1111 1111" if card else "n/a", "expiry": "12/29"},
           "items": [{"sku": f"SKU-{j:05d}", "qty": j, "price": 12.5 * j, "desc": "a fine product of the shop"}
                     for j in range(7)],
           "note": "deliver to the back door please"}
    text = json.dumps(doc)
    return (text[:-1] + ', "pad": "' + "p" * max(0, 1024 - len(text) - 12) + '"}').encode()


def batches(codec: int, count: int, per_batch: int, card: bool) -> list[bytes]:
    out = []
    for b in range(count):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
        for k in range(per_batch):
            builder.append(k, timestamp=1_700_000_000_000 + k, key=b"key", value=record(b * per_batch + k, card),
                           headers=[])
        out.append(bytes(builder.build()))
    return out


def main(records: int = 16_000, per_batch: int = 16) -> None:
    print(f"record value: {len(record(0, True))} bytes; {per_batch} records per batch; best of 5")
    for name, body in RULES.items():
        policy = parse_policy(f"version: 1\nmasking:\n  - name: r\n    topics: [t]\n    on: [produce]\n    {body}\n",
                              source="bench")
        masker = policy.masking.for_topic("t", "produce")
        for codec_name, codec in CODECS.items():
            for card in (True, False):
                run = batches(codec, records // per_batch, per_batch, card)
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for batch in run:
                        rewrite_records(batch, masker)
                    best = min(best, time.perf_counter() - start)
                what = "a card in every record" if card else "no card"
                print(f"{name:26} {codec_name:5} {what:23} {records / best:>10,.0f} records/s")


if __name__ == "__main__":
    main()
