"""Measure a retention prune of 1,000,000 operation rows: total time, batches, the longest write-lock hold.

    PYTHONPATH=. .venv/bin/python tests/bench/prune_bench.py [--rows N] [--batch B] [--dir DIR]

Writes N operations (1000 sessions, through store.write_batch in chained batches of 5000), then prunes
every one of them by age with the Pruner the writer thread uses, timing each batch's transaction and each
incremental-vacuum step, then verifies the chain. Prints one JSON object.
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from appliance.audit import store
from appliance.audit.append import Appender
from appliance.audit.prune import Pruner, sizes
from appliance.audit.records import Event, SessionClosed
from appliance.audit.verify import verify
from tests.audit.test_store import op, opened


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="prune-bench-"))
    path = directory / "audit.db"
    db = store.open_db(path)
    started = time.monotonic()
    per_session = max(args.rows // 1000, 1)
    for s in range(0, args.rows, per_session):
        sid = f"{s:032x}"
        rows = [replace(opened(sid), started_at=100.0 + s)] + [op(sid, at=100.0 + s + i) for i in range(per_session)]
        for start in range(0, len(rows), 5000):
            store.write_batch(db, rows[start:start + 5000])
        store.write_batch(db, [SessionClosed(sid, 100.0 + s + per_session, 1, 1, per_session, "client closed")])
    store.write_batch(db, [Event(at=9e9, kind="start", message="kept")])  # the one new entry
    written_s = time.monotonic() - started
    before, _ = sizes(db.conn)
    appender = Appender(db.conn)
    holds, vacuums = [], []
    pruner = Pruner(appender, now=9e9, max_age_s=1.0, batch=args.batch)
    started = time.monotonic()
    while True:
        t0 = time.monotonic()
        deleting = pruner._deleting
        if not pruner.step():
            break
        (holds if deleting and pruner._deleting else vacuums).append(time.monotonic() - t0)
    prune_s = time.monotonic() - started
    summary = pruner.summary()
    started = time.monotonic()
    report = verify(db.conn, None)
    verify_s = time.monotonic() - started
    db.conn.close()
    print(json.dumps({
        "rows": args.rows, "batch": args.batch, "write_s": round(written_s, 1), "bytes_before": before,
        "prune_s": round(prune_s, 2), "batches": summary["batches"], "entries": summary["entries"],
        "longest_hold_ms": summary["longest_hold_ms"], "median_batch_ms": round(sorted(holds)[len(holds) // 2] * 1000, 1)
        if holds else None, "longest_batch_step_ms": round(max(holds) * 1000, 1) if holds else None,
        "vacuum_steps": summary["vacuum_steps"], "longest_vacuum_ms": summary["longest_vacuum_ms"],
        "bytes_after": summary["bytes_after"], "verify_ok": report.ok, "verify_faults": [str(f) for f in report.faults[:3]],
        "verify_s": round(verify_s, 2)}, indent=2))


if __name__ == "__main__":
    main()
