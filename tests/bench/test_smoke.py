"""scripts/bench: a quick run end to end on the real kernel, broker and appliance, and its pure parts.

The smoke test runs `scripts/bench --quick` (a few seconds of load; about half a
minute with the broker's start) and checks that the JSON result has every
figure for both arms, with positive ratios, and that the bench left nothing
running. It needs root, like the integration tests, and fails without it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from appliance.bench import parse, plan
from appliance.bench.figures import FIGURES, parse_only
from appliance.bench.report import build_document, render_table
from appliance.bench.stats import paired_ratios, percentile, summarize

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_bench_measures_every_figure_in_both_arms_and_leaves_nothing_running(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("scripts/bench needs root (BPF programs, cgroups); run the suite as root", pytrace=False)
    out = tmp_path / "quick.json"
    done = subprocess.run([str(REPO / "scripts" / "bench"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"scripts/bench --quick exited {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert "proxied/direct" in done.stdout  # the table
    assert "produce 1 KiB" in done.stderr and "proxied" in done.stderr  # progress while it ran

    doc = json.loads(out.read_text())
    assert doc["schema"] == "appliance-bench/1" and doc["options"]["quick"] and not doc["interrupted"]
    assert set(doc["figures"]) == {f.key for f in FIGURES}
    for figure in FIGURES:
        entry = doc["figures"][figure.key]
        if entry["status"] == "not available":
            # Only the masking arm may be missing, and only while the policy has no masking section.
            assert figure.group == "masking" and entry["reason"], entry
            continue
        assert entry["status"] == "ok", (figure.key, entry)
        for arm in figure.arms:
            samples = entry[arm]["samples"]
            assert len(samples) == 1 and all(math.isfinite(v) and v >= 0 for v in samples), (figure.key, arm, entry)
        if figure.arms == ("direct", "proxied"):
            assert isinstance(entry["ratio"], float) and entry["ratio"] > 0, (figure.key, entry)
            assert entry["direct"]["summary"]["median"] > 0 and entry["proxied"]["summary"]["median"] > 0

    _assert_nothing_left()


def _assert_nothing_left() -> None:
    status = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "appliance", "--config",
                             str(plan.CONFIG_FILE), "status", "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert not snapshot["serving"]
    assert [p for p in snapshot["attached_programs"] if p.get("bpffs_dir") == str(plan.BPFFS_DIR)] == []
    assert not (plan.BROKER_DIR / "broker.pid").exists()
    from appliance.identity import cgroups

    root = cgroups.cgroup2_root()
    left = [p for p in (plan.CGROUP_BROKER, plan.CGROUP_PROXY, plan.CGROUP_DIRECT, plan.CGROUP_WORKLOAD)
            if (root / p).exists()]
    assert left == [], f"cgroups left behind: {left}"
    mine = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, str(plan.STATE_DIR))]
    assert mine == [], f"processes of the bench still running: {mine}"


def _mentions(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


# --- the pure parts: no root, no broker -------------------------------------------------

PRODUCER_OUT = """\
24929 records sent, 4985.8 records/sec (4.87 MB/sec), 1488.3 ms avg latency, 2346.0 ms max latency.
50000 records sent, 7109.341674 records/sec (6.94 MB/sec), 1611.11 ms avg latency, 2351.00 ms max latency, 1718 ms 50th, 2255 ms 95th, 2318 ms 99th, 2344 ms 99.9th.
"""
CONSUMER_OUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2025-11-02 15:10:06:312, 2025-11-02 15:10:07:201, 4.8828, 5.4925, 5000, 5624.2970, 536, 353, 13.8324, 14164.3059
"""


def test_tool_outputs_are_read_from_their_final_lines():
    p = parse.producer_totals(PRODUCER_OUT)
    assert (p.records, p.records_per_s, p.mb_per_s, p.p99_ms, p.p999_ms) == (50000, 7109.341674, 6.94, 2318, 2344)
    c = parse.consumer_totals(CONSUMER_OUT)
    assert (c.records, c.fetch_records_per_s, c.fetch_mb_per_s, c.rebalance_ms) == (5000, 14164.3059, 13.8324, 536)
    with pytest.raises(parse.ToolOutputError):
        parse.producer_totals(PRODUCER_OUT.splitlines()[0])
    with pytest.raises(parse.ToolOutputError):
        parse.consumer_totals("WARNING: Exiting before consuming the expected number of messages")
    assert parse.java_errors("org.apache.kafka.common.errors.TopicAuthorizationException: Not authorized\n"
                             "\tat org.apache.kafka.Foo.bar(Foo.java:1)\n[x] WARN fine (y)\n") == [
        "org.apache.kafka.common.errors.TopicAuthorizationException: Not authorized"]


def test_statistics_and_the_document():
    assert percentile([5, 1, 4, 2, 3], 50) == 3 and percentile(range(1, 1001), 99.9) == 999
    assert percentile([7], 99.9) == 7
    s = summarize([1.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (2.0, 1.0, 4.0, 3)
    assert paired_ratios([2.0, 4.0], [1.0, 4.0]) == [0.5, 1.0]
    assert parse_only("latency,produce") == ("produce", "latency")
    with pytest.raises(ValueError):
        parse_only("produce,bogus")

    figures = [f for f in FIGURES if f.key in ("produce.1024.records_per_s", "latency.p99_ms", "cpu.produce.1024",
                                              "masking.records_per_s")]
    samples = {"produce.1024.records_per_s": {"direct": [100.0, 110.0], "proxied": [96.0, 99.0]},
               "latency.p99_ms": {"direct": [2.0, 2.2], "proxied": [2.5, 2.9]},
               "cpu.produce.1024": {"proxied": [0.01, 0.012]}}
    problems = {"masking.records_per_s": ("not available", "no masking section yet")}
    doc = build_document(figures, samples, problems, {"options": {"repeat": 2}})
    produce = doc["figures"]["produce.1024.records_per_s"]
    assert produce["ratio"] == pytest.approx(97.5 / 105) and produce["target"]["met"] is False
    assert produce["ratio_spread"] == {"min": 0.9, "max": 0.96}
    latency = doc["figures"]["latency.p99_ms"]
    assert latency["added"] == pytest.approx(0.6) and latency["target"]["met"] is True
    assert doc["figures"]["cpu.produce.1024"]["status"] == "ok" and doc["figures"]["cpu.produce.1024"]["ratio"] is None
    assert doc["figures"]["masking.records_per_s"]["status"] == "not available"
    table = render_table(doc)
    assert "MISSED" in table and "(not available)" in table and "! masking: not available: no masking" in table
    json.dumps(doc)  # the whole document is JSON


def test_arms_alternate_and_the_policy_grants_only_bench_resources():
    assert [plan.arm_order(r)[0] for r in (1, 2, 3)] == ["direct", "proxied", "direct"]
    from appliance.policy.parser import parse_policy

    policy = parse_policy(plan.policy(), source="bench")
    assert len(policy.rules) == 1
    lines = plan.masking_payloads(count=20)
    assert all(f"@{plan.MASKING_EMAIL_DOMAIN}" in line and 900 < len(line) <= 1100 for line in lines)
    assert all(json.loads(line)["customer"] for line in lines)


def test_the_recording_option_adds_an_excerpts_rule_for_the_bench_identity_only():
    from appliance.bench.cli import _parser, options_from
    from appliance.policy.parser import parse_policy

    assert options_from(_parser().parse_args([])).recording == "operations"
    options = options_from(_parser().parse_args(["--recording", "excerpts", "--quick"]))
    assert options.recording == "excerpts" and options.to_json()["recording"] == "excerpts"
    assert not parse_policy(plan.policy(), source="bench").recording
    for masking in (False, True):
        policy = parse_policy(plan.policy(masking=masking, recording="excerpts"), source="bench")
        assert policy.recording.for_topic(plan.IDENTITY, plan.topic("produce", 1024, "proxied", 1)) is not None
        assert policy.recording.for_topic("someone-else", plan.topic("produce", 1024, "proxied", 1)) is None
        assert bool(policy.masking) == masking
    with pytest.raises(SystemExit):
        _parser().parse_args(["--recording", "everything"])
