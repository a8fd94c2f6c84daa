"""The benchmark's fixed set-up, as data: ports, paths, cgroups, the appliance's configuration,
the policies, topic and group names, the masking payload. Pure: nothing here starts or writes anything.

The bench keeps clear of the demo (19xxx) and of the integration tests
(29xxx, 39xxx, 49xxx): its broker listens on 59092 (IPv4), 59093 (IPv6),
59094 (controller) and 59095 (inter-broker); its proxy on 59190.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

STATE_DIR = Path("/var/lib/appliance-bench")
RUN_DIR = Path("/run/appliance-bench")
BPFFS_DIR = Path("/sys/fs/bpf/appliance-bench")
CONFIG_FILE = STATE_DIR / "appliance.yaml"
POLICY_FILE = STATE_DIR / "policy.yaml"
BROKER_DIR = STATE_DIR / "broker"
WORK_DIR = STATE_DIR / "work"  # client configs, payload file

BROKER_HOST4, BROKER_PORT4 = "127.0.0.1", 59092
BROKER_HOST6, BROKER_PORT6 = "::1", 59093
CONTROLLER_PORT = 59094  # and 59095 for the inter-broker listener
PROXY_PORT = 59190
BOOTSTRAP = f"{BROKER_HOST4}:{BROKER_PORT4}"

CGROUP_BROKER = "appliance-bench-broker"
CGROUP_PROXY = "appliance-bench-proxy"
CGROUP_DIRECT = "appliance-bench-direct"      # exempt: straight to the broker, with SASL
CGROUP_WORKLOAD = "appliance-bench-workload"  # enrolled: steered to the appliance, plaintext
IDENTITY = "bench"
TOPIC_PREFIX = "bench-"

MASKING_RULE = {"name": "bench-all", "topics": [f"prefix:{TOPIC_PREFIX}"], "on": ["produce"],
                "detectors": ["email"], "action": "redact"}
MASKING_EMAIL_DOMAIN = "example.com"
# `--recording excerpts`: every bench topic recorded at depth excerpts, with the default bounds
# (docs/recording.md, Depth), so the cost of excerpts is measured on every figure.
RECORDING_RULE = {"name": "bench-excerpts", "identities": [IDENTITY], "topics": [f"prefix:{TOPIC_PREFIX}"],
                  "depth": "excerpts"}
RECORDING_DEPTHS = ("operations", "excerpts")


def appliance_config() -> dict:
    """The `--config` YAML of the bench appliance: production defaults except where it lives and listens."""
    return {
        "state_dir": str(STATE_DIR),
        "run_dir": str(RUN_DIR),
        "listen_port": PROXY_PORT,
        "brokers": [f"{BROKER_HOST4}:{BROKER_PORT4}", f"[{BROKER_HOST6}]:{BROKER_PORT6}"],
        "bpffs_dir": str(BPFFS_DIR),
        "proxy_cgroup": CGROUP_PROXY,
        "exempt_cgroups": [CGROUP_BROKER, CGROUP_DIRECT],
        "policy_file": str(POLICY_FILE),
        "embedded_broker": {"port4": BROKER_PORT4, "port6": BROKER_PORT6, "controller_port": CONTROLLER_PORT,
                            "data_dir": str(BROKER_DIR), "cgroup": CGROUP_BROKER},
    }


def policy(*, masking: bool = False, recording: str = "operations") -> str:
    """The bench identity may produce, consume, describe, create and use groups on bench-* topics and groups.

    An idempotent producer's InitProducerId (no transactional id) is allowed to an identity that may produce
    to some topic, so no `transactions` grant is needed. With `masking`, a rule redacting e-mail addresses
    in every produced record on bench-* topics is added (the masking section of docs/policy.md). With
    `recording="excerpts"`, the bench identity's records on bench-* topics are recorded at depth excerpts.
    """
    doc: dict = {
        "version": 1,
        "rules": [{
            "name": "bench",
            "identities": [IDENTITY],
            "operations": ["produce", "consume", "describe", "create", "group"],
            "topics": [f"prefix:{TOPIC_PREFIX}"],
            "consumer_groups": [f"prefix:{TOPIC_PREFIX}"],
        }],
    }
    if masking:
        doc["masking"] = [dict(MASKING_RULE)]
    if recording != "operations":
        doc["recording"] = [dict(RECORDING_RULE)]
    header = "# Written by scripts/bench (appliance/bench/plan.py) at every run.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


SMALL_RECORD_FACTOR = 4
CONSUME_FACTOR = 3


@dataclass(frozen=True, slots=True)
class Options:
    """What one invocation runs; `--quick` is Options.quick()."""

    repeat: int = 3
    records: int = 200_000          # per produce / consume run of 1 KiB records (4x at 100 B)
    latency_rate: int = 1000        # records/s, well below saturation
    latency_seconds: float = 10.0
    connects: int = 20              # fresh connections per connect run
    masking_records: int | None = None  # default: records
    quick: bool = False
    recording: str = "operations"  # the depth the bench identity is recorded at (RECORDING_DEPTHS)

    @classmethod
    def quick_mode(cls) -> Options:
        return cls(repeat=1, records=2000, latency_rate=500, latency_seconds=2.0, connects=5, quick=True)

    def records_for(self, size: int, group: str = "produce") -> int:
        """Records per run: `records` for a produce run of 1 KiB records, four times as many at 100 B, and
        three times as many again for a consume run (reading is several times faster than writing), so that
        every run lasts seconds and does not time little more than the JVM's start."""
        records = self.records * SMALL_RECORD_FACTOR if size < 1024 else self.records
        return records * CONSUME_FACTOR if group == "consume" else records

    @property
    def masked_records(self) -> int:
        return self.masking_records or self.records

    def to_json(self) -> dict:
        return {"repeat": self.repeat, "records": self.records,
                "records_per_run": {f"{g}.{s}": self.records_for(s, g) for g in ("produce", "consume") for s in (100, 1024)},
                "latency_rate": self.latency_rate,
                "latency_seconds": self.latency_seconds, "connects": self.connects,
                "masking_records": self.masked_records, "quick": self.quick, "recording": self.recording}


def arm_order(repetition: int) -> tuple[str, str]:
    """Direct first in odd repetitions (1, 3, ...), proxied first in even ones: neither arm always runs
    on a machine the other has just warmed up (page cache, JIT of the broker, CPU frequency)."""
    return ("direct", "proxied") if repetition % 2 == 1 else ("proxied", "direct")


def topic(group: str, size: int | str, arm: str, repetition: int) -> str:
    return f"{TOPIC_PREFIX}{group}-{size}-{arm}-{repetition}"


def warmup_topic() -> str:
    return f"{TOPIC_PREFIX}warmup"


def fill_topic(size: int) -> str:
    """Filled once (directly) before the consume runs; both arms read the same records."""
    return f"{TOPIC_PREFIX}fill-{size}"


def consumer_group(size: int, arm: str, repetition: int) -> str:
    return f"{TOPIC_PREFIX}consume-{size}-{arm}-{repetition}"


def masking_payloads(count: int = 500, size: int = 1024, seed: int = 7) -> list[str]:
    """JSON records of about `size` bytes, each with one e-mail address, one per line, for
    ProducerPerformance --payload-file (which picks a line at random for each record)."""
    rng = random.Random(seed)
    words = ("order", "shipped", "invoice", "pending", "refund", "parcel", "customer", "warehouse", "priority")
    lines = []
    for i in range(count):
        record = {"id": i, "customer": f"user{rng.randrange(10**6)}@{MASKING_EMAIL_DOMAIN}",
                  "amount": rng.randrange(1, 10**5) / 100, "currency": "EUR", "note": ""}
        base = len(json.dumps(record, separators=(",", ":")))
        note = []
        while base + len(" ".join(note)) < size:
            note.append(rng.choice(words))
        record["note"] = " ".join(note)[: max(size - base, 0)]
        lines.append(json.dumps(record, separators=(",", ":")))
    return lines
