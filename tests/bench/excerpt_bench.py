"""Measure what record excerpts cost the audit writer's thread: building, chaining and inserting them.

    PYTHONPATH=. .venv/bin/python tests/bench/excerpt_bench.py [--operations N] [--masking] [--codec C]

Writes N Produce operations recorded at depth excerpts (10 records of 1 KiB each, the default bounds)
through the Appender the writer thread uses, in one batch, and prints one JSON object: seconds in all,
microseconds per excerpted record, and how much of it is building (decode, masking, cutting) versus
chaining and inserting. With --masking, a detectors rule (card, email) covers the topic.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from appliance.audit import store
from appliance.audit.append import Appender, excerpt_rows
from appliance.audit.records import RecordedOperation
from appliance.masking.excerpts import Budget, plan_for, take_topic
from appliance.policy.parser import parse_policy
from tests.audit.test_store import op, opened
from tests.masking.builders import CODECS, Rec, build_batch

POLICY = "version: 1\nrecording:\n  - {name: bench, identities: [bench], topics: ['*'], depth: excerpts}\n"
MASKING = "masking:\n  - {name: pii, topics: ['*'], on: [fetch], detectors: [card, email]}\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--masking", action="store_true")
    parser.add_argument("--codec", default="none", choices=sorted(CODECS))
    args = parser.parse_args()
    policy = parse_policy(POLICY + (MASKING if args.masking else ""), source="bench")
    value = lambda i: json.dumps({"i": i, "mail": "jane.doe@example.com", "pad": os.urandom(480).hex()}).encode()
    batch = build_batch([Rec(value(i), key=f"k{i}".encode()) for i in range(16)], codec=CODECS[args.codec])
    plan = plan_for(policy, "bench", "t", None)
    budget = Budget()
    records = [RecordedOperation(op("s1", '{"t": [0]}', 100.0 + i), "produce",
                                 tuple(take_topic("t", [(0, batch)], plan, budget=budget)))
               for i in range(args.operations)]
    with tempfile.TemporaryDirectory() as tmp:
        db = store.open_db(Path(tmp) / "audit.db")
        store.write_batch(db, [opened()])
        appender = Appender(db.conn)
        started = time.perf_counter()
        built = sum(len(excerpt_rows(r)) for r in records[: len(records) // 2])  # building alone
        build_s = time.perf_counter() - started
        again = [RecordedOperation(op("s1", '{"t": [0]}', 200.0 + i), "produce",
                                   tuple(take_topic("t", [(0, batch)], plan, budget=budget)))
                 for i in range(len(records) // 2)]
        started = time.perf_counter()
        appender.write_batch(again)
        write_s = time.perf_counter() - started
        rows = db.conn.execute("SELECT count(*) FROM record_excerpts").fetchone()[0]
        db.conn.close()
    print(json.dumps({"operations": len(again), "excerpts": rows, "codec": args.codec, "masking": args.masking,
                      "us_per_excerpt_built": round(build_s / built * 1e6, 1),
                      "us_per_excerpt_built_chained_written": round(write_s / rows * 1e6, 1),
                      "seconds": round(write_s, 3)}))


if __name__ == "__main__":
    main()
