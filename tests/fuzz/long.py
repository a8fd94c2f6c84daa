"""The long fuzz run: `nice -n 19 python -m tests.fuzz.long --inputs 1000000`.

Runs the harness over consecutive seeds (sessions, and the batch rewriter every fourth seed), and
prints one line per `--report-every` inputs and a summary: inputs, duration, findings (crashes),
known enforcer faults, and RSS at start, after the first report (caches warm) and at the end. Exit status 1 when anything was found. A finding
is replayed with `harness.run_session(SEED)`.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from tests.fuzz import harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.long", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="how many inputs (session conversations)")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--report-every", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rss_start = harness.rss_kib()
    total = harness.Outcome()
    seed = args.start
    rss_warm = None
    while total.inputs < args.inputs:
        chunk = min(args.report_every, args.inputs - total.inputs)
        total.add(harness.run(range(seed, seed + chunk)))
        seed += chunk
        rss_warm = harness.rss_kib() if rss_warm is None else rss_warm
        print(f"{total.inputs} inputs ({seed - args.start} sessions) {time.monotonic() - started:.0f} s "
              f"findings {len(total.findings)} rss {harness.rss_kib()} KiB", flush=True)
    summary = {
        "inputs": total.inputs, "sessions": seed - args.start, "batch_rewrites": total.inputs - (seed - args.start),
        "frames": total.frames, "forwarded": total.forwarded, "closes": total.closes,
        "seconds": round(time.monotonic() - started, 1), "findings": len(total.findings),
        "known_enforcer_faults": total.known_faults, "rss_start_kib": rss_start,
        "rss_after_first_report_kib": rss_warm, "rss_end_kib": harness.rss_kib(),
        "first_findings": total.findings[:20],
        "finding_kinds": collections.Counter(f for _, f in total.findings).most_common(20),
    }
    print(json.dumps(summary, indent=None if args.json else 2))
    return 1 if total.findings else 0


if __name__ == "__main__":
    sys.exit(main())
