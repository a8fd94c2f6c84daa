"""`scripts/bench`: the appliance against the embedded broker, direct and proxied, alternately.

Usage: scripts/bench [--repeat N] [--records N] [--quick] [--only produce,consume,latency,connect,masking]
                     [--latency-rate R] [--latency-seconds S] [--connects N] [--recording DEPTH]
                     [--results-dir DIR | --json FILE]

Prints progress while it runs, then a table (each figure direct, proxied, the
ratio and the spread over repetitions), and writes the whole result to
bench-results/<UTC timestamp>.json. Exit status: 0 when every figure was
measured (or is not available yet, like masking before it exists), 1 when a
figure failed, 2 when the bench cannot run here, 130 when interrupted.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from appliance.bench import plan
from appliance.bench.figures import figures_of, parse_only
from appliance.bench.report import build_document, render_table

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark the appliance against the embedded broker: the same load, direct (exempt cgroup, "
                    "SASL) and through the appliance (enrolled cgroup, plaintext, policy on), run alternately.",
        epilog="Figures, method and targets: docs/performance.md.")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions of each figure in each arm (default 3)")
    p.add_argument("--records", type=int, metavar="N",
                   help="records per produce run of 1 KiB records (default 200000); runs of 100 B records move 4 "
                        "times as many, consume runs 3 times as many as the produce run of their size")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds of load: tiny record counts, 1 repetition (the smoke test's mode)")
    p.add_argument("--only", metavar="LIST", help="comma-separated: produce,consume,latency,connect,masking (default all)")
    p.add_argument("--latency-rate", type=int, metavar="R", help="records/s for the latency run (default 1000)")
    p.add_argument("--latency-seconds", type=float, metavar="S", help="length of each latency run (default 10)")
    p.add_argument("--connects", type=int, metavar="N", help="fresh connections per connect run (default 20)")
    p.add_argument("--masking-records", type=int, metavar="N", help="records per masking run (default: --records)")
    p.add_argument("--recording", choices=plan.RECORDING_DEPTHS, metavar="DEPTH",
                   help="the depth the proxied arm's sessions are recorded at: operations (the default, no recording "
                        "rule) or excerpts (a recording rule for every bench topic; docs/recording.md, Depth)")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench-results", metavar="DIR",
                   help="where the JSON result goes, as <UTC timestamp>.json (default: bench-results/ in the checkout)")
    p.add_argument("--json", type=Path, dest="json_file", metavar="FILE", help="write the JSON result to FILE instead")
    return p


def options_from(args: argparse.Namespace) -> plan.Options:
    options = plan.Options.quick_mode() if args.quick else plan.Options()
    given = {"repeat": args.repeat, "records": args.records, "latency_rate": args.latency_rate,
             "latency_seconds": args.latency_seconds, "connects": args.connects,
             "masking_records": args.masking_records, "recording": args.recording}
    options = replace(options, **{k: v for k, v in given.items() if v is not None})
    for name in ("repeat", "records", "latency_rate", "connects"):
        if getattr(options, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if options.latency_seconds <= 0:
        raise ValueError("--latency-seconds must be positive")
    return options


class Progress:
    def __init__(self):
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)


def _git() -> dict:
    """The commit, and a digest of the uncommitted changes to the code, so that two runs of a dirty tree can
    still be told apart (or matched)."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    diff = git("diff", "HEAD", "--", "appliance", "bpf") or ""
    return {"commit": (git("rev-parse", "HEAD") or "").strip() or None, "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}


def _host() -> dict:
    return {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_at_start": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        options = options_from(args)
        groups = parse_only(args.only)
    except ValueError as e:
        _parser().error(str(e))
    progress = Progress()

    from appliance.bench.environment import BenchError, Environment, check_prerequisites
    from appliance.bench.runner import Runner

    try:
        check_prerequisites()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2

    started_at = datetime.now(timezone.utc)
    meta = {"started_at": started_at.isoformat(timespec="seconds"), "options": options.to_json(),
            "groups": list(groups), "host": _host(), "git": _git(),
            "load": {"throughput": "org.apache.kafka.tools.ProducerPerformance / ConsumerPerformance (Kafka 4.1.1 jars)",
                     "latency_and_connect": "librdkafka via confluent-kafka (appliance/bench/clients.py)"},
            "arms": {"direct": f"cgroup {plan.CGROUP_DIRECT} (exempt), SASL to {plan.BOOTSTRAP}",
                     "proxied": f"cgroup {plan.CGROUP_WORKLOAD} (enrolled as {plan.IDENTITY}), plaintext, "
                                f"steered to `appliance serve` on port {plan.PROXY_PORT}"}}
    runner = None
    status, interrupted, fatal = 0, False, None
    progress(f"bench: {', '.join(groups)}; {options.repeat} repetition(s), arms alternating"
             f"{' (quick)' if options.quick else ''}")
    try:
        with Environment(progress, recording=options.recording) as env:
            env.start()
            runner = Runner(env, options, groups, progress)
            runner.run()
            progress("stopping: unenrol, `appliance serve` (detaches its programs), broker")
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted; everything the bench started has been stopped")
    except BenchError as e:
        fatal = str(e)
        progress(f"bench failed: {e}")
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["host"]["loadavg_at_end"] = list(os.getloadavg())
    meta["interrupted"], meta["fatal"] = interrupted, fatal
    if runner is None:
        return 130 if interrupted else 1
    meta["notes"] = runner.notes
    meta["runs"] = runner.runs
    if interrupted or fatal:
        for figure in figures_of(groups):
            if figure.key not in runner.problems and not any(runner.samples.get(figure.key, {}).values()):
                runner.problems[figure.key] = ("not run", "interrupted" if interrupted else "the bench stopped early")
    doc = build_document(figures_of(groups), runner.samples, runner.problems, meta)
    out = args.json_file or args.results_dir / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(render_table(doc))
    for note in runner.notes:
        print(f"! {note}")
    print(f"\nresults: {out}")
    if interrupted:
        return 130
    if fatal or any(f["status"] == "failed" for f in doc["figures"].values()):
        status = 1
    return status
