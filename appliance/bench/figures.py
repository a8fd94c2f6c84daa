"""What the benchmark measures: every figure, its unit, which way is better, and the target it is read against.

Pure data. The runner fills samples in under these keys; report.py turns the
samples into the JSON document and the terminal table. Targets are reported,
never asserted: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUPS = ("produce", "consume", "latency", "connect", "masking")
ARMS = ("direct", "proxied")
SIZES = (100, 1024)  # record sizes, bytes


@dataclass(frozen=True, slots=True)
class Target:
    """`ratio_at_least`: proxied/direct >= threshold.  `added_at_most`: proxied - direct <= threshold (the unit's)."""

    kind: str
    threshold: float
    text: str

    def met(self, ratio: float | None, added: float | None) -> bool | None:
        if self.kind == "ratio_at_least":
            return None if ratio is None else ratio >= self.threshold
        if self.kind == "added_at_most":
            return None if added is None else added <= self.threshold
        raise ValueError(f"unknown target kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    group: str
    title: str
    unit: str
    better: str  # "higher" or "lower"
    arms: tuple[str, ...] = ARMS  # appliance CPU exists only in the proxied arm
    target: Target | None = None


def size_label(size: int) -> str:
    return "1 KiB" if size == 1024 else f"{size} B"


def _figures() -> tuple[Figure, ...]:
    out: list[Figure] = []
    throughput_target = Target("ratio_at_least", 0.95, "proxied/direct >= 0.95")
    for group, verb in (("produce", "produce"), ("consume", "consume")):
        for size in SIZES:
            target = throughput_target if size == 1024 else None
            out.append(Figure(f"{group}.{size}.records_per_s", group, f"{verb} {size_label(size)}", "records/s",
                              "higher", target=target))
            out.append(Figure(f"{group}.{size}.mb_per_s", group, f"{verb} {size_label(size)}", "MB/s", "higher"))
    out += [
        Figure("latency.p50_ms", "latency", "publish latency p50", "ms", "lower"),
        Figure("latency.p99_ms", "latency", "publish latency p99", "ms", "lower",
               target=Target("added_at_most", 1.0, "added <= 1 ms")),
        Figure("latency.p999_ms", "latency", "publish latency p99.9", "ms", "lower"),
        Figure("connect.median_ms", "connect", "connect to first metadata, median", "ms", "lower"),
        Figure("connect.max_ms", "connect", "connect to first metadata, slowest", "ms", "lower"),
        Figure("masking.records_per_s", "masking", "produce JSON 1 KiB, masking every record", "records/s",
               "higher", target=Target("ratio_at_least", 0.5, "masked/direct >= 0.5")),
        Figure("masking.mb_per_s", "masking", "produce JSON 1 KiB, masking every record", "MB/s", "higher"),
    ]
    for group in ("produce", "consume"):
        for size in SIZES:
            out.append(Figure(f"cpu.{group}.{size}", group, f"appliance CPU, {group} {size_label(size)}",
                              "CPU s/MB", "lower", arms=("proxied",)))
    out.append(Figure("cpu.masking", "masking", "appliance CPU, masked produce", "CPU s/MB", "lower",
                      arms=("proxied",)))
    return tuple(out)


FIGURES: tuple[Figure, ...] = _figures()
BY_KEY = {f.key: f for f in FIGURES}


def figures_of(groups) -> tuple[Figure, ...]:
    """The figures of the selected groups, in catalogue order."""
    wanted = set(groups)
    return tuple(f for f in FIGURES if f.group in wanted)


def parse_only(text: str | None) -> tuple[str, ...]:
    """`--only produce,latency` → ("produce", "latency") in catalogue order; None → every group."""
    if text is None:
        return GROUPS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise ValueError(f"--only takes a comma-separated list of {', '.join(GROUPS)}; got {text!r}")
    return tuple(g for g in GROUPS if g in names)
